"""One tracking task from Blender as plain Python: upload a photo or video, poll, fetch the animation.

:class:`TrackJob` follows ``POST /v1/tracks`` like :class:`~.render_job.RenderJob` follows a
render (both are :class:`~.backend_job.BackendJob`: the step loop, short HTTP timeouts and "Start
locally"); when the fit is back, the :class:`TrackHost` puts it on the rig
(:class:`~.track_scene.TrackSceneHost` in Blender), so this module never imports bpy and the
tests drive it with plain Python.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Protocol

from . import local_backend
from .backend_client import BackendClient, BackendError
from ..backend.formats.animation import AnimationClip
from ..backend.formats.trackers import retime
from .backend_job import BackendJob, BackendProcess

STAGES = ("starting", "landmarks", "fit", "overlay")


class RigGone(ValueError):
    """The rig a tracking task was to land on was deleted while it ran."""


class TrackHost(Protocol):
    """Where a tracking task shows itself and lands; ``key`` names it (the scene's name)."""

    key: str

    def alive(self) -> bool:
        """Whether the scene still exists."""

    def show(self, **state: Any) -> None:
        """Record the task's state: status, message, progress, error, advice, task_id."""

    def status_bar(self, text: str | None) -> None:
        """Progress in the status bar; ``None`` clears it."""

    def apply(self, animation: str) -> str:
        """Put the fetched animation file on the rig; what was done. Raises ValueError, having
        changed nothing, when the file does not fit the rig (RigGone when the rig was deleted)."""


def on_scene_frames(clip: AnimationClip, scene_fps: float, first: int) -> tuple[AnimationClip, str]:
    """A task's clip (frames numbered from 0: :class:`TrackJob` uploads with ``first_frame`` 0) on scene
    frames from ``first``, resampled when its fps is not the scene's; and how (``trackers.retime``)."""
    return retime(clip, scene_fps=scene_fps, scene_start=first, frame_offset=first)


def stage_progress(view: dict[str, Any]) -> float:
    """0..1 over the tracker's stages (landmarks, fit, overlay), from the task's view."""
    stage = view.get("stage", "starting")
    index = STAGES.index(stage) - 1 if stage in STAGES else 0
    total = view.get("total") or 0
    within = min(1.0, (view.get("done") or 0) / total) if total else 0.0
    return max(0.0, (index + within) / (len(STAGES) - 1))


class TrackJob(BackendJob):
    """Uploads ``media`` (a photo or a video) and follows the fit until it is on the rig.

    The task numbers the media's frames from 0; the host puts them on scene frames (:func:`on_scene_frames`).
    """

    kind = "track"

    def __init__(self, host: TrackHost, client: BackendClient, media: str,
                 local: dict[str, Any] | None = None, process: BackendProcess = local_backend) -> None:
        super().__init__(host, client, local, process)
        self.media = media
        self.task_id, self.animation = "", ""
        self.view: dict[str, Any] = {}

    def _connect(self) -> None:
        if not self._backend_ready():
            return
        self.view = self.client.submit_track(self.media, 0)
        self.task_id, self.phase = self.view["id"], "running"
        self._show(task_id=self.task_id, status="running", progress=0.0, error="", advice="",
                   message=f"Uploaded {os.path.basename(self.media)} ({self.view.get('kind', '?')}, "
                           f"{self.view.get('frames', '?')} frames)")

    def _poll(self) -> None:
        view = self.view = self.client.track(self.task_id)
        self.last_ok = time.monotonic()
        status = view.get("status", "")
        if status == "running":
            text = (f"flamediff: tracking, {view.get('stage', 'starting')} {view.get('done', 0)}/"
                    f"{view.get('total', 0)} - Esc cancels")
            self._show(status=status, progress=stage_progress(view), message=text)
            self.host.status_bar(text)
        elif status == "done":
            self._land()
        elif status == "cancelled":
            self._finish("cancelled")
        else:
            self._finish("failed", view.get("error") or "the tracking failed",
                         view.get("advice") or "see the backend's log")

    def _land(self) -> None:
        """Fetch the animation and put it on the rig."""
        fd, self.animation = tempfile.mkstemp(prefix="flamediff-track-", suffix=".npz")
        os.close(fd)
        self.client.fetch_track_animation(self.task_id, self.animation)
        try:
            message = self.host.apply(self.animation)
        except RigGone as exc:
            self._finish("error", f"the fit is back but {exc}, nothing changed",
                         "undo the deletion (Ctrl+Z) or add a rig (Add > FLAME Rig), then track again; the backend "
                         "keeps nothing, so the fit runs again")
            return
        except ValueError as exc:
            self._finish("error", f"the tracked animation does not fit the rig, nothing changed: {exc}",
                         "rebuild the rig with enough coefficients (rebuild_rig=True) or use a rig of the "
                         "backend's FLAME asset")
            return
        self._finish("done", message=message)

    def _finish(self, outcome: str, error: str = "", advice: str = "", message: str = "") -> None:
        self.outcome = outcome
        self._unfollow()
        texts = {"done": message, "cancelled": "Tracking cancelled; the rig is unchanged",
                 "failed": "Tracking failed; the rig is unchanged", "error": "Tracking stopped; the rig is unchanged"}
        if self.host.alive():
            self._show(status=outcome, message=texts[outcome], error=error, advice=advice,
                       progress=1.0 if outcome == "done" else 0.0)
        self.cleanup()
        self.host.status_bar(None)

    def cleanup(self) -> None:
        """Remove the fetched animation file (the rig holds its values now)."""
        if self.animation:
            try:
                os.remove(self.animation)
            except OSError:
                pass

    def cancel(self, error: str = "", advice: str = "") -> None:
        """DELETE the task (the rig stays as it was) and stop following it; ``error``/``advice``
        say why when the add-on gave up on it (a timeout)."""
        if self.phase == "running" and self.task_id:
            try:
                self.client.cancel_track(self.task_id)
            except BackendError as exc:
                self._finish("cancelled", f"cancelling on the backend failed: {exc.message}", exc.advice)
                return
        self._finish("cancelled", error, advice)
