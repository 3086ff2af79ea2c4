"""The demo scene: a rig keyed from an animation file, its camera, one blocking render, a .blend.

Run by ``flamediff demo`` inside the ``bpy`` module (or ``blender -b --python-expr``) through the
installed add-on, so the demo exercises exactly what an artist's clicks do.
"""

from __future__ import annotations

import os

import bpy

from .animation_io import apply_camera
from ..backend.formats.animation import AnimationClip, load_animation


def match_timeline(scene: bpy.types.Scene, clip: AnimationClip) -> None:
    """The scene's frame range and rate become the clip's, so its frames key one to one."""
    scene.frame_start, scene.frame_end = int(clip.frame.min()), int(clip.frame.max())
    scene.render.fps, scene.render.fps_base = int(round(clip.fps)), 1.0


def build_and_render(animation_path: str, reference_image: str, blend_path: str, steps: int = 0,
                     guidance: float = 0.0, seed: int = 0, checkpoint: str = "", timeout: float = 1800.0) -> dict:
    """Key a new rig from ``animation_path``, render it with the backend, save ``blend_path``
    (``steps`` and ``guidance`` 0: the checkpoint's defaults)."""
    scene = bpy.context.scene
    clip = load_animation(animation_path)
    if not clip.has_camera:
        raise ValueError(f"{animation_path} has no camera")
    match_timeline(scene, clip)
    bpy.ops.flamediff.add_rig(name="FLAME")
    rig = bpy.context.view_layer.objects.active
    result = bpy.ops.flamediff.import_animation(filepath=animation_path, frame_offset=0)
    if "FINISHED" not in result:
        raise RuntimeError(f"import_animation returned {result}")
    apply_camera(bpy.context, rig, clip)
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
    editor sees of a head-framed render composited over other work (the picture in docs/BACKEND.md, Framing)."""
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
