"""Export a rig's animation (+ camera) to the flamediff format; key a rig from a file."""

from __future__ import annotations

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..blender_addon import animation_io, assets, rig as rigmod
from ..backend.formats.animation import AnimationFormatError, save_animation
from ..backend.formats.flame_asset import FlameAssetError
from ..backend.formats.trackers import flame_version_note, load_any, retime
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
    """Keyframe the rig from a flamediff .npz or a face tracker's files (VHAP, GaussianAvatars, SMIRK, DECA,
EMOCA, SPECTRE, metrical-tracker, INSTA, EMOTE, ...): a file, or a folder of per-frame files"""

    bl_idname = "flamediff.import_animation"
    bl_label = "Import FLAME Animation"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz;*.npy;*.pkl;*.pth;*.pt;*.frame;*.txt;*.json", options={"HIDDEN"})
    fps: FloatProperty(name="Target fps", default=0.0, min=0.0,
                       description="The rate to key at; 0 = the scene's fps")
    source_fps: FloatProperty(name="Source fps", default=0.0, min=0.0,
                              description="The file's frame rate when you know it (tracker files carry none); "
                                          "0 = the file's own, else one file frame per scene frame")
    frame_offset: IntProperty(name="Frame offset", default=0,
                              description="Added to every keyed frame (tracker files start at the scene's start)")
    rebuild_rig: BoolProperty(name="Rebuild rig with enough coefficients", default=False,
                              description="When the file has more shape / expression coefficients than the rig, "
                                          "rebuild the rig with enough (its previous keys are replaced)")
    use_camera: BoolProperty(name="Import camera", default=True,
                             description="Make the file's camera (if it carries one) the scene camera")
    use_image_size: BoolProperty(name="Use the tracker's image size", default=False,
                                 description="Set the scene resolution to the file's image size; off, the scene "
                                             "keeps its resolution and the camera frames the file's whole image "
                                             "inside it (aspect kept)")
    set_frame_range: BoolProperty(name="Set the scene range to the clip", default=False,
                                  description="Make the scene's start and end the imported clip's first and last "
                                              "keyed frames (on in the dialog; scripts ask for it)")
    camera_index: IntProperty(name="View", default=-1, min=-1,
                              description="Which view of a multi-view export to import; -1 = the first")
    whole_sequence: BoolProperty(name="Whole sequence", default=True,
                                 description="A numbered per-frame file (00012.frame) imports its whole folder")
    static_offset_key: BoolProperty(name="Static offset as shape key", default=True,
                                    description="VHAP / GaussianAvatars' per-vertex identity offsets as the shape "
                                                "key 'StaticOffset' on the head (Blender only)")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if not self.properties.is_property_set("rebuild_rig"):
            self.rebuild_rig = True  # on in the dialog; scripts must ask for it
        if not self.properties.is_property_set("set_frame_range"):
            self.set_frame_range = True
        return ImportHelper.invoke(self, context, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        rig = target_rig(context, self.rig)
        try:
            if rig is None:
                raise AnimationFormatError(NO_RIG)
            imported = load_any(self.filepath, fps=self.source_fps or None,
                                camera_index=self.camera_index if self.camera_index >= 0 else None,
                                whole_sequence=self.whole_sequence)
            clip, how = retime(imported.clip, scene_fps=self.fps or scene.render.fps / scene.render.fps_base,
                               scene_start=scene.frame_start, frame_offset=self.frame_offset)
            counts, rebuild = animation_io.coefficient_plan(context, rig, clip, self.rebuild_rig)
            clip = animation_io.fit_clip_to_rig(clip, rig, counts)
        except (AnimationFormatError, animation_io.RigMismatchError, FlameAssetError, OSError) as exc:
            self.report({"ERROR"}, f"Import failed, nothing changed: {exc}")
            return {"CANCELLED"}
        lines = imported.report.lines() + [f"timing: {how}"]
        if rebuild is not None:
            rig = animation_io.rebuild_rig(context, rig, *rebuild, *counts)
            lines.append(f"rebuilt rig {rig.name} with {counts[0]} shape and {counts[1]} expression coefficients")
        frames = animation_io.apply_clip(rig, clip)
        if self.static_offset_key and imported.static_offset is not None:
            lines.append(animation_io.add_static_offset(rig, imported.static_offset))
        if self.use_camera and clip.has_camera:
            camera = animation_io.apply_camera(context, rig, clip, self.use_image_size)
            size = (f"resolution set to {clip.image_size[0]}x{clip.image_size[1]}" if self.use_image_size else
                    f"the scene keeps {scene.render.resolution_x}x{scene.render.resolution_y}, framing the file's "
                    f"{clip.image_size[0]}x{clip.image_size[1]} image")
            lines.append(f"camera: keyed {camera.name} as the scene camera ({size})")
        elif self.use_camera:
            lines.append("camera: the file has none; the scene camera is unchanged")
        if self.set_frame_range:
            scene.frame_start, scene.frame_end = int(frames.min()), int(np.ceil(frames.max()))
            lines.append(f"scene range set to the clip: {scene.frame_start}..{scene.frame_end}")
        version = flame_version_note(imported.report, rigmod.rig_identity(rig)["name"])
        for line in lines:
            self.report({"INFO"}, line)
        if version:
            self.report({"WARNING"}, version)
            lines.append(version)
        scene["flamediff_import_report"] = "\n".join(lines)
        self.report({"INFO"}, f"Keyed {rig.name} on {len(frames)} frames ({frames.min():g}..{frames.max():g})")
        return {"FINISHED"}
