"""Render through the flamediff backend; start / stop / test the backend."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from ..blender_addon import assets, backend_job, diagnosis, local_backend, render_inputs, render_job, render_scene
from ..blender_addon.backend_client import BackendError, with_advice
from ..blender_addon.preferences import backend_settings, make_client, unsaved_output_root
from ..blender_addon.render_scene import BLEND_RELATIVE, setting_property
from .common import NO_RIG, CancelsJob, FollowsJob, RigOperator, target_rig

_ARGUMENT = {"SKIP_SAVE", "HIDDEN"}
_PATH_ARGUMENT = _ARGUMENT | BLEND_RELATIVE
_PANEL = "Default: the Render panel's"


def _refuse(operator: bpy.types.Operator, host: render_scene.SceneHost, message: str, advice: str = "") -> set[str]:
    host.show(**render_inputs.refused_state(message, advice))
    operator.report({"ERROR"}, with_advice(message, advice))
    return {"CANCELLED"}


class FLAMEDIFF_OT_render(RigOperator, FollowsJob, bpy.types.Operator):
    """Render the rig's animation over the scene frame range with the flamediff backend; frames land as a
    VSE image strip. Esc cancels"""

    bl_idname = "flamediff.render"
    bl_label = "Render with flamediff"
    bl_options = {"REGISTER", "UNDO"}  # Ctrl+Z removes the strip (the frames stay on disk)

    # unset arguments fall back to the Render panel (scene.flamediff_render) and the scene frame range;
    # SKIP_SAVE so a script's values are not remembered for the next button press; HIDDEN so there is no
    # "Adjust Last Operation" panel, where every change would submit another render
    rig: StringProperty(name="Rig", default="", options=_ARGUMENT, description="Rig object name; empty = the active rig")
    reference_image: StringProperty(name="Reference image", subtype="FILE_PATH", default="", options=_PATH_ARGUMENT,
                                    description="Default: the Render panel's reference image")
    steps: setting_property("steps", _PANEL, options=_ARGUMENT)
    guidance: setting_property("guidance", _PANEL, options=_ARGUMENT)
    seed: setting_property("seed", _PANEL, options=_ARGUMENT)
    checkpoint: setting_property("checkpoint", options=_ARGUMENT,
                                 description="Default: the Render panel's, else the backend's default model")
    preview: setting_property("preview", f"Its own job and folder. {_PANEL}", options=_ARGUMENT)
    framing: setting_property("framing", _PANEL, options=_ARGUMENT)
    matte: setting_property("matte", _PANEL, options=_ARGUMENT)
    shape_from: setting_property("shape_from", "Default: the rig's Identity shape setting", options=_ARGUMENT)
    reference_shape: StringProperty(name="Reference shape", subtype="FILE_PATH", default="", options=_PATH_ARGUMENT,
                                    description=".npy of the reference person's FLAME shape coefficients. "
                                                "Default: the rig's")
    frame_start: IntProperty(name="Start", default=1, options=_ARGUMENT,
                             description="Default: the scene's start frame")
    frame_end: IntProperty(name="End", default=250, options=_ARGUMENT, description="Default: the scene's end frame")
    wait: BoolProperty(name="Wait", default=False, options=_ARGUMENT,
                       description="Block until the render ends (scripts, blender -b); FINISHED only when done")
    timeout: FloatProperty(name="Timeout", default=3600.0, min=1.0, options=_ARGUMENT,
                           description="With wait: give up (and cancel the job) after this many seconds")

    def _value(self, defaults, name: str):
        return getattr(self, name) if self.properties.is_property_set(name) else getattr(defaults, name)

    def _build_job(self, context: bpy.types.Context) -> render_job.RenderJob | set[str]:
        """Gather the scene's values; :mod:`~..blender_addon.render_inputs` decides the job."""
        scene = context.scene
        host = render_scene.SceneHost(scene, unsaved_output_root(context))
        start, end = self._value(scene, "frame_start"), self._value(scene, "frame_end")
        rig = target_rig(context, self.rig)
        if rig is None:
            return _refuse(self, host, NO_RIG)
        try:
            inputs = render_scene.job_inputs(context, rig, start, end, self._value)
        except render_inputs.JobInputError as exc:
            return _refuse(self, host, exc.message, exc.advice)
        host.show(**render_inputs.starting_state(inputs.frames))
        return render_inputs.render_job(host, make_client(context), inputs, backend_settings(context))

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        job = backend_job.active_job(context.scene.name)
        if job is not None and job.phase != "cancelling":   # a new render waits for a cancelled one to stop
            cls.poll_message_set("A flamediff render is already running in this scene: wait for it, or cancel it "
                                 "(Esc, or Render > flamediff > Cancel Render)")
            return False
        if backend_job.active_job(context.scene.name, "track") is not None:
            cls.poll_message_set("A flamediff tracking task will change this scene's rig and camera: wait for it, or "
                                 "cancel it (Esc, or Object > FLAME Rig > Cancel Tracking), then render")
            return False
        return super().poll(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = self._build_job(context)
        if isinstance(job, set):
            return job
        return self.follow(context, job, f"Rendering {len(job.frames)} frames; poll scene.flamediff_render or use "
                                         f"wait=True", "raise timeout=, or use fewer frames / steps")


class FLAMEDIFF_OT_render_cancel(CancelsJob, bpy.types.Operator):
    """Cancel the scene's flamediff render (frames already rendered are kept)"""

    bl_idname = "flamediff.render_cancel"
    bl_label = "Cancel flamediff Render"
    bl_options = {"REGISTER"}
    kind, noun = "render", "render"


class FLAMEDIFF_OT_test_connection(bpy.types.Operator):
    """Contact the backend and say, in plain words, what was found: the backend Python ("Start locally"),
    whether the backend runs, its version, device and models"""

    bl_idname = "flamediff.test_connection"
    bl_label = "Test flamediff Connection"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        level, text = diagnosis.diagnose(make_client(context, timeout=3.0), backend_settings(context),
                                         lambda: assets.current(context)[1])
        self.report({level}, text)
        return {"CANCELLED"} if level == "ERROR" else {"FINISHED"}


def _local_mode(cls, context: bpy.types.Context) -> bool:
    """Poll helper: the backend operators need "Start locally"."""
    if backend_settings(context)["mode"] == "LOCAL":
        return True
    cls.poll_message_set("The flamediff preferences connect to a URL: choose 'Start locally' to start a backend "
                         "from Blender")
    return False


class FLAMEDIFF_OT_backend_start(bpy.types.Operator):
    """Start the local backend (python -m flamediff serve) with the preferences' python, port and device"""

    bl_idname = "flamediff.backend_start"
    bl_label = "Start flamediff Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not _local_mode(cls, context):
            return False
        process = local_backend.running()
        if process is not None:
            cls.poll_message_set(f"The local backend is already running (pid {process.pid})")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = backend_settings(context)
        try:
            process = local_backend.start(settings["python"], settings["port"], settings["device"],
                                          settings["token_file"])
        except (BackendError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        choice = local_backend.started_python()
        self.report({"INFO"}, f"Backend starting (pid {process.pid}) on port {settings['port']} with {choice.path} "
                              f"({choice.origin}); log {local_backend.log_path()}")
        return {"FINISHED"}


class FLAMEDIFF_OT_backend_stop(bpy.types.Operator):
    """Stop the backend this Blender started"""

    bl_idname = "flamediff.backend_stop"
    bl_label = "Stop flamediff Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if local_backend.running() is not None:
            return True
        cls.poll_message_set("No backend started by this Blender is running")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        stopped = local_backend.stop()
        self.report({"INFO"}, "Backend stopped" if stopped else "No backend started by this Blender is running")
        return {"FINISHED"}


class FLAMEDIFF_OT_copy_setup_command(bpy.types.Operator):
    """Copy the command that creates the backend's Python environment (for a terminal; see docs/ADDON.md)"""

    bl_idname = "flamediff.copy_setup_command"
    bl_label = "Copy Set-up Command"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        command = local_backend.install_command()
        context.window_manager.clipboard = command
        self.report({"INFO"}, f"Copied: {command}")
        return {"FINISHED"}
