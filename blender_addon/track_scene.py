"""A tracking task in Blender: the scene's tracking state and how a fit lands on the rig.

The task itself is :class:`~.track_job.TrackJob` (plain Python); :class:`TrackSceneHost` shows it in
``scene.flamediff_track`` and, when the fit is back, puts it on the rig: for a photo the identity
shape, the head pose (and optionally the expression) at the current frame, the camera and the Render
panel's reference image; for a video every channel keyed from the scene's start frame, as
``flamediff.import_animation`` keys a file.
"""

from __future__ import annotations

import os
from dataclasses import replace

import bpy
import numpy as np
from bpy.props import FloatProperty, StringProperty

from . import animation_io, rig as rigmod
from ..backend.formats.animation import AnimationClip, AnimationFormatError, load_animation
from ..backend.formats.flame_asset import FlameAssetError
from .render_scene import ScenePropsHost
from .track_job import RigGone, on_scene_frames

HEAD_POSE = ("global_pose", "neck_pose", "translation")
EXPRESSION = ("expression", "jaw_pose", "left_eye_pose", "right_eye_pose")


class FlamediffTrackProps(bpy.types.PropertyGroup):
    """``scene.flamediff_track``: the scene's tracking task (written by the add-on)."""

    task_id: StringProperty(name="Task", default="")
    status: StringProperty(name="Status", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty(name="Progress", default="")
    error: StringProperty(name="Error", default="")
    advice: StringProperty(name="Advice", default="")
    report: StringProperty(name="Report", default="", description="What the last fit changed, one line each")


def _cut_to_rig(clip: AnimationClip, counts: tuple[int, int]) -> tuple[AnimationClip, list[str]]:
    """Drop coefficients the rig has no shape keys for, and say so."""
    lines = [f"dropped {name} coefficients {count + 1}..{values.shape[1]} (the rig has {count}; "
             f"rebuild_rig=True keeps them)" for name, count, values in
             (("shape", counts[0], clip.shape), ("expression", counts[1], clip.expression))
             if values.shape[1] > count and np.abs(values[:, count:]).max() > 0]
    return replace(clip, shape=clip.shape[:, :counts[0]], expression=clip.expression[:, :counts[1]]), lines


class TrackSceneHost(ScenePropsHost):
    """The :class:`~.track_job.TrackHost` of a scene and a rig. ``photo``: match the rig to it (else
    key a video from ``start``); ``expression``: a photo's expression too; ``rebuild``: rebuild the
    rig when the fit has more coefficients; ``use_camera``: a video's camera becomes the scene's."""

    props = "flamediff_track"

    def __init__(self, scene: bpy.types.Scene, rig: bpy.types.Object, start: int, photo: str = "",
                 expression: bool = False, rebuild: bool = True, use_camera: bool = True) -> None:
        super().__init__(scene)
        self.rig_name, self.start, self.photo = rig.name, start, photo
        self.expression, self.rebuild, self.use_camera = expression, rebuild, use_camera

    def apply(self, animation: str) -> str:
        scene = self.scene
        rig = rigmod.find_rig(bpy.data.objects.get(self.rig_name))
        if rig is None:
            raise RigGone(f"the rig {self.rig_name} was deleted while tracking")
        with bpy.context.temp_override(scene=scene):
            clip, lines, rig = self._fit_to_rig(bpy.context, rig, animation)
            lines += self._match_photo(bpy.context, rig, clip) if self.photo else self._key_video(bpy.context, rig, clip)
        scene.flamediff_track.report = "\n".join(lines)
        return lines[-1]

    def _fit_to_rig(self, context: bpy.types.Context, rig: bpy.types.Object,
                    animation: str) -> tuple[AnimationClip, list[str], bpy.types.Object]:
        """The file on scene frames, checked against the rig (rebuilt when asked and needed)."""
        scene = context.scene
        first = scene.frame_current if self.photo else self.start
        try:
            clip, how = on_scene_frames(load_animation(animation), scene.render.fps / scene.render.fps_base, first)
            counts, rebuild = animation_io.coefficient_plan(context, rig, clip, self.rebuild)
            clip, lines = _cut_to_rig(clip, counts)
            clip = animation_io.fit_clip_to_rig(clip, rig, counts)
        except (AnimationFormatError, animation_io.RigMismatchError, FlameAssetError, OSError) as exc:
            raise ValueError(str(exc)) from None
        lines.append(f"timing: {how}")
        if rebuild is not None:
            rig = animation_io.rebuild_rig(context, rig, *rebuild, *counts)
            lines.append(f"rebuilt rig {rig.name} with {counts[0]} shape and {counts[1]} expression coefficients")
        return clip, lines, rig

    def _match_photo(self, context: bpy.types.Context, rig: bpy.types.Object, clip: AnimationClip) -> list[str]:
        frame = int(clip.frame[0])
        animation_io.set_identity(rig, clip.shape[0])
        animation_io.apply_clip(rig, clip, HEAD_POSE + (EXPRESSION if self.expression else ()))
        camera = animation_io.apply_camera(context, rig, clip, use_image_size=True)   # the photo's own framing
        context.scene.flamediff_render.reference_image = self.photo
        keyed = "head pose and expression" if self.expression else "head pose"
        return [f"identity shape: {clip.shape.shape[1]} coefficients, on every frame",
                f"{keyed} keyed at frame {frame}",
                f"camera: {camera.name} frames the head as in the photo ({clip.image_size[0]}x{clip.image_size[1]})",
                f"Matched {rig.name} to {os.path.basename(self.photo)}; it is the Render panel's reference image"]

    def _key_video(self, context: bpy.types.Context, rig: bpy.types.Object, clip: AnimationClip) -> list[str]:
        frames = animation_io.apply_clip(rig, clip)
        lines = []
        if self.use_camera:
            lines.append(f"camera: keyed {animation_io.apply_camera(context, rig, clip).name} as the scene camera")
        return lines + [f"Keyed {rig.name} on {len(frames)} frames ({frames.min():g}..{frames.max():g})"]


classes = (FlamediffTrackProps,)
