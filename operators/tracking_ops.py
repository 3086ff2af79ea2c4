"""Fit the rig to a photo or a video with the backend's tracker (``POST /v1/tracks``)."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from ..blender_addon import backend_job, track_job, track_scene
from ..blender_addon.preferences import backend_settings, make_client
from .common import NO_RIG, CancelsJob, FollowsJob, RigOperator, scene_rendering, target_rig

_ARGUMENT = {"SKIP_SAVE"}
PHOTO_GLOB = "*.png;*.jpg;*.jpeg;*.webp;*.bmp;*.tif;*.tiff"
VIDEO_GLOB = "*.mp4;*.mov;*.mkv;*.avi;*.webm;*.m4v"
TIMEOUT_ADVICE = "raise timeout=, or track a shorter video"


class _TracksIntoRig(RigOperator, FollowsJob, ImportHelper):
    """What both tracking operators share: the file, rebuild_rig, wait/timeout, poll and start."""

    rebuild_rig: BoolProperty(name="Rebuild rig with enough coefficients", default=True, options=_ARGUMENT,
                              description="The fit has 100 shape and 50 expression coefficients: rebuild a rig with "
                                          "fewer to hold them (its previous keys are replaced); off drops the rest")
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE", "HIDDEN"},
                       description="Block until the fit is on the rig (scripts, blender -b); FINISHED only then")
    timeout: FloatProperty(name="Timeout", default=1800.0, min=1.0, options={"SKIP_SAVE", "HIDDEN"},
                           description="With wait: give up (and cancel the task) after this many seconds")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if backend_job.active_job(context.scene.name, "track") is not None:
            cls.poll_message_set("A flamediff tracking task is running in this scene: wait for it, or cancel it "
                                 "(Esc, or Object > FLAME Rig > Cancel Tracking)")
            return False
        if backend_job.active_job(context.scene.name) is not None:   # a fit rewrites the rig and camera it renders
            cls.poll_message_set("A flamediff render of this scene is running: wait for it, or cancel it (Esc, or "
                                 "Render > flamediff > Cancel Render), then track")
            return False
        return super().poll(context)

    def _start(self, context: bpy.types.Context, what: str, **options) -> set[str]:
        """Check the rig and the file, then upload it and follow the fit."""
        scene, path = context.scene, bpy.path.abspath(self.filepath)
        rig = target_rig(context, self.rig)
        if rig is None:
            self.report({"ERROR"}, NO_RIG)
            return {"CANCELLED"}
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"No {what} at '{path}': choose an existing {what} file")
            return {"CANCELLED"}
        rendering = scene_rendering(rig)
        if rendering is not None:
            self.report({"ERROR"}, f"A flamediff render of {rig.name} is running in the scene {rendering}: wait for "
                                   f"it, or cancel it there, then track")
            return {"CANCELLED"}
        backend = backend_settings(context)
        host = track_scene.TrackSceneHost(scene, rig, scene.frame_start, rebuild=self.rebuild_rig, **options)
        scene.flamediff_track.error = scene.flamediff_track.advice = ""
        scene.flamediff_track.status, scene.flamediff_track.message = "connecting", "Connecting..."
        job = track_job.TrackJob(host, make_client(context), path, backend_job.local_settings(backend))
        return self.follow(context, job, f"Tracking {os.path.basename(path)}; poll scene.flamediff_track or use "
                                         f"wait=True", TIMEOUT_ADVICE)


class FLAMEDIFF_OT_match_photo(_TracksIntoRig, bpy.types.Operator):
    """Fit the rig to a photo with the backend's tracker: its identity shape, the head pose (and optionally the
expression) at the current frame and a camera framing the head as in the photo, which becomes the Render
panel's reference image. Esc cancels"""

    bl_idname = "flamediff.match_photo"
    bl_label = "Match Rig to Photo"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default=PHOTO_GLOB, options={"HIDDEN"})
    expression: BoolProperty(name="Expression too", default=False, options=_ARGUMENT,
                             description="Also key the photo's expression, jaw and eyes at the current frame")

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self._start(context, "photo", photo=bpy.path.abspath(self.filepath), expression=self.expression)


class FLAMEDIFF_OT_track_video(_TracksIntoRig, bpy.types.Operator):
    """Track a performance video with the backend's tracker and key the rig from the scene's start frame
(resampled to the scene's fps), with its camera. Esc cancels"""

    bl_idname = "flamediff.track_video"
    bl_label = "Track Video into Rig"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default=VIDEO_GLOB, options={"HIDDEN"})
    use_camera: BoolProperty(name="Import camera", default=True, options=_ARGUMENT,
                             description="Make the tracker's camera the scene camera")

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self._start(context, "video", use_camera=self.use_camera)


class FLAMEDIFF_OT_track_cancel(CancelsJob, bpy.types.Operator):
    """Cancel the scene's flamediff tracking task (the rig stays as it was)"""

    bl_idname = "flamediff.track_cancel"
    bl_label = "Cancel flamediff Tracking"
    bl_options = {"REGISTER"}
    kind, noun = "track", "tracking task"
