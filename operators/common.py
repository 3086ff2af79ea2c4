"""What the flamediff operators share: finding the rig they work on, and following or cancelling
the scene's backend job (:mod:`~..blender_addon.backend_job`)."""

from __future__ import annotations

import time

import bpy
from bpy.props import StringProperty

from ..blender_addon import backend_job, render_scene
from ..blender_addon import rig as rigmod
from ..blender_addon.backend_client import with_advice


def target_rig(context: bpy.types.Context, name: str) -> bpy.types.Object | None:
    """The rig named ``name`` (or owning that object), else the rig of the active object."""
    if name:
        return rigmod.find_rig(bpy.data.objects.get(name))
    return rigmod.find_rig(context.active_object)


NO_RIG = "Select a flamediff rig (or its head mesh), or pass rig=NAME; add one with Add > FLAME Rig"


def has_rig(context: bpy.types.Context) -> bool:
    """Poll helper: scripts may name the rig, so any rig in the file enables the operators."""
    return rigmod.find_rig(context.active_object) is not None or any(
        obj.get("flamediff_rig") for obj in context.scene.objects)


def scene_rendering(rig: bpy.types.Object) -> str | None:
    """The scene with a flamediff render running in which ``rig`` is (a rig linked into several
    scenes is one rig: a fit from another scene would rewrite what that render shows), if any."""
    return next((scene.name for scene in bpy.data.scenes
                 if backend_job.active_job(scene.name) is not None and rig.name in scene.objects), None)


class RigOperator:
    """Mixin of the operators that act on one rig: the ``rig`` argument and the poll."""

    rig: StringProperty(name="Rig", default="", description="Rig object name; empty = the active rig")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if has_rig(context):
            return True
        cls.poll_message_set("No flamediff rig in this scene: add one with Add > FLAME Rig")
        return False


class CancelsJob:
    """Mixin of the operators that cancel the scene's running job of ``kind`` (``noun`` in messages)."""

    kind = ""
    noun = ""

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if backend_job.active_job(context.scene.name, cls.kind) is not None:
            return True
        cls.poll_message_set(f"No flamediff {cls.noun} is running in this scene")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        backend_job.active_job(context.scene.name, self.kind).cancel()
        self.report({"INFO"}, f"flamediff {self.noun} cancelled")
        return {"FINISHED"}


class FollowsJob:
    """Mixin of the operators that run a backend job (``wait`` and ``timeout`` arguments): without
    blocking (a timer polls the job, the modal part only listens for Esc and reports the outcome),
    or to its end with ``wait=True`` (scripts, ``blender -b``)."""

    _job = None
    _timer = None

    def follow(self, context: bpy.types.Context, job: backend_job.BackendJob, started: str,
               timeout_advice: str) -> set[str]:
        """Start following ``job``; ``started``: what a background run reports at once."""
        backend_job.start(job)
        if self.wait:
            return self._wait(job, timeout_advice)
        if not job.step():  # first contact at once: a down backend is reported now
            return self._outcome(job)
        render_scene.follow_in_background(job)  # a bpy.app.timers poll: runs even if this modal is dropped
        if context.window is not None and not bpy.app.background:
            self._job = job
            self._timer = context.window_manager.event_timer_add(backend_job.POLL_INTERVAL, window=context.window)
            context.window_manager.modal_handler_add(self)
            return {"RUNNING_MODAL"}
        self.report({"INFO"}, started)
        return {"FINISHED"}

    def _wait(self, job: backend_job.BackendJob, timeout_advice: str) -> set[str]:
        deadline = time.monotonic() + self.timeout
        while job.step():
            if time.monotonic() > deadline:
                job.cancel(f"the {job.kind} did not finish within {self.timeout:g} s", timeout_advice)
                break
            time.sleep(backend_job.POLL_INTERVAL)
        return self._outcome(job)

    def _outcome(self, job: backend_job.BackendJob) -> set[str]:
        notes = getattr(job, "notes", [])
        if notes:   # e.g. a reference outside the checkpoint's training domain: said, not refused
            self.report({"WARNING"}, "; ".join(notes))
        if job.outcome == "done":
            self.report({"INFO"}, job.message)
            return {"FINISHED"}
        if job.outcome == "cancelled" and not job.error:   # the user's own cancel: said, not an error
            self.report({"INFO"}, job.message)
            return {"CANCELLED"}
        self.report({"ERROR"}, with_advice(job.error or job.message, job.advice))
        return {"CANCELLED"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        job = self._job
        if event.type == "ESC" and event.value == "PRESS" and job.phase != "finished":
            job.cancel()
        if job.phase != "finished":
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._outcome(job)
