"""The demo scene: a rig keyed from an animation file, its camera, one blocking render, a .blend.

Run by ``flamediff demo`` inside the ``bpy`` module (or ``blender -b --python-expr``) through the
installed add-on, so the demo exercises exactly what an artist's clicks do.
"""

from __future__ import annotations

import os

import bpy
import numpy as np
from mathutils import Matrix

from .formats.animation import load_animation
from .formats.conventions import BlenderCameraIntrinsics, opencv_to_blender_camera


def add_camera_from_clip(scene: bpy.types.Scene, animation_path: str) -> bpy.types.Object:
    """A scene camera reproducing the file's first OpenCV camera (intrinsics and pose)."""
    clip = load_animation(animation_path)
    if not clip.has_camera:
        raise ValueError(f"{animation_path} has no camera")
    width, height = clip.image_size
    settings = BlenderCameraIntrinsics.from_opencv(clip.K[0], width, height)
    data = bpy.data.cameras.new("flamediff demo camera")
    data.lens, data.sensor_width, data.sensor_height = settings.lens_mm, settings.sensor_width_mm, settings.sensor_height_mm
    data.sensor_fit, data.shift_x, data.shift_y = settings.sensor_fit, settings.shift_x, settings.shift_y
    camera = bpy.data.objects.new("flamediff demo camera", data)
    scene.collection.objects.link(camera)
    matrix = opencv_to_blender_camera(clip.R[0], clip.t[0])
    camera.matrix_world = Matrix([list(row) for row in np.asarray(matrix)])  # a plain nested list reads as columns
    scene.camera = camera
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.pixel_aspect_x, render.pixel_aspect_y = settings.pixel_aspect_x, settings.pixel_aspect_y
    scene.frame_start, scene.frame_end = int(clip.frame.min()), int(clip.frame.max())
    render.fps, render.fps_base = int(round(clip.fps)), 1.0
    return camera


def build_and_render(animation_path: str, reference_image: str, blend_path: str, steps: int = 0,
                     guidance: float = 0.0, seed: int = 0, checkpoint: str = "", timeout: float = 1800.0) -> dict:
    """Key a new rig from ``animation_path``, render it with the backend, save ``blend_path``
    (``steps`` and ``guidance`` 0: the checkpoint's defaults)."""
    scene = bpy.context.scene
    add_camera_from_clip(scene, animation_path)
    bpy.ops.flamediff.add_rig(name="FLAME")
    result = bpy.ops.flamediff.import_animation(filepath=animation_path, frame_offset=0)
    if "FINISHED" not in result:
        raise RuntimeError(f"import_animation returned {result}")
    bpy.ops.wm.save_as_mainfile(filepath=blend_path)  # frames then land in //flamediff/ beside it
    outcome = bpy.ops.flamediff.render(reference_image=reference_image, steps=steps, guidance=guidance, seed=seed,
                                       checkpoint=checkpoint, wait=True, timeout=timeout)
    state = scene.flamediff_render
    composite = ""
    if state.status == "done":
        composite = render_composite(scene, os.path.join(os.path.dirname(blend_path), "vse_composite.png"),
                                     (scene.frame_start + scene.frame_end) // 2)
    bpy.ops.wm.save_mainfile()
    return {"outcome": sorted(outcome), "status": state.status, "error": state.error, "advice": state.advice,
            "output_dir": bpy.path.abspath(state.output_dir), "job_id": state.job_id,
            "frames": [scene.frame_start, scene.frame_end], "composite": composite}


def render_composite(scene: bpy.types.Scene, path: str, frame: int) -> str:
    """Put a colour backdrop under the flamediff strip and render the sequencer at ``frame``: what an
    editor sees of a head-framed render composited over other work (the README's picture)."""
    strips = scene.sequence_editor.strips
    ours = strips["flamediff"]
    ours.channel = 2
    backdrop = strips.new_effect("backdrop", "COLOR", 1, scene.frame_start,
                                 length=scene.frame_end - scene.frame_start + 1)
    backdrop.color = (0.16, 0.22, 0.30)
    scene.render.use_sequencer = True
    scene.view_settings.view_transform = "Standard"   # the frames' own colours
    scene.render.filepath = path
    scene.frame_set(frame)
    bpy.ops.render.render(write_still=True)
    return path
