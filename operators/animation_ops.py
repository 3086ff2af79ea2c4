"""Export a rig's animation (+ camera) to the flamediff format; key a rig from a file."""

from __future__ import annotations

import warnings

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from .. import animation_io, assets
from ..formats.animation import AnimationFormatError, AnimationWarning, load_animation, save_animation
from ..formats.flame_asset import FlameAssetError
from .common import NO_RIG, RigOperator, target_rig


class FLAMEDIFF_OT_export_animation(RigOperator, bpy.types.Operator, ExportHelper):
    """Write the rig's keyframed FLAME parameters and the camera to a flamediff .npz"""

    bl_idname = "flamediff.export_animation"
    bl_label = "Export FLAME Animation"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    frame_start: IntProperty(name="Start", default=1, description="Default: the scene's start frame")
    frame_end: IntProperty(name="End", default=250, description="Default: the scene's end frame")
    camera: StringProperty(name="Camera", default="", description="Camera object; empty = the scene camera")
    use_camera: BoolProperty(name="Include camera", default=True)
    method: StringProperty(name="Method", default="AUTO", options={"HIDDEN"},
                           description="AUTO, FAST or FULL (benchmarks and tests)")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        self.frame_start, self.frame_end = context.scene.frame_start, context.scene.frame_end
        return ExportHelper.invoke(self, context, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        start = self.frame_start if self.properties.is_property_set("frame_start") else scene.frame_start
        end = self.frame_end if self.properties.is_property_set("frame_end") else scene.frame_end
        rig = target_rig(context, self.rig)
        camera = (bpy.data.objects.get(self.camera) if self.camera else scene.camera) if self.use_camera else None
        try:
            if rig is None:
                raise AnimationFormatError(NO_RIG)
            if self.camera and self.use_camera and (camera is None or camera.type != "CAMERA"):
                raise AnimationFormatError(f"'{self.camera}' is not a camera object")
            animation_io.check_rig_asset(rig, assets.current(context)[1])
            clip, path = animation_io.read_clip(context, rig, start, end, camera, self.method)
            save_animation(self.filepath, clip)
        except (AnimationFormatError, animation_io.ExportError, FlameAssetError, OSError) as exc:
            self.report({"ERROR"}, f"Export failed: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {clip.num_frames} frames of {rig.name} to {self.filepath} ({path})")
        return {"FINISHED"}


class FLAMEDIFF_OT_import_animation(RigOperator, bpy.types.Operator, ImportHelper):
    """Keyframe the rig from a flamediff .npz or a DECA / EMOCA / SMIRK tracker .npz"""

    bl_idname = "flamediff.import_animation"
    bl_label = "Import FLAME Animation"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    fps: FloatProperty(name="Target fps", default=0.0, min=0.0,
                       description="Rescale the file's timing to this rate; 0 = the scene's fps")
    frame_offset: IntProperty(name="Frame offset", default=0, description="Added to every keyed frame")

    def execute(self, context: bpy.types.Context) -> set[str]:
        rig = target_rig(context, self.rig)
        render = context.scene.render
        fps = self.fps or render.fps / render.fps_base
        try:
            if rig is None:
                raise AnimationFormatError(NO_RIG)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AnimationWarning)
                clip = animation_io.fit_clip_to_rig(load_animation(self.filepath), rig)
        except (AnimationFormatError, animation_io.RigMismatchError) as exc:
            self.report({"ERROR"}, f"Import failed, nothing changed: {exc}")
            return {"CANCELLED"}
        for warning in caught:
            self.report({"WARNING"}, str(warning.message))
        frames = animation_io.apply_clip(rig, clip, fps, self.frame_offset)
        self.report({"INFO"}, f"Keyed {rig.name} on {len(frames)} frames ({frames.min():g}..{frames.max():g})")
        return {"FINISHED"}
