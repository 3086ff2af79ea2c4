"""One render from Blender as plain Python: submit, poll, fetch frames, settings.json.

:class:`RenderJob` is the render kind of :class:`~.backend_job.BackendJob` (the step loop, short
HTTP timeouts, "Start locally"), so a step never blocks Blender for long, even with the backend
down or busy. What the job shows (the scene's render state, the VSE strip, the status bar) goes
through a :class:`RenderHost` (:class:`~.render_scene.SceneHost` in Blender), so this module never
imports bpy and the tests drive it with plain Python.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Protocol

from . import local_backend
from .backend_client import BackendClient, BackendError
from .backend_job import BackendJob, BackendProcess
from ..backend.formats.protocol import frame_file

FINAL = ("done", "failed", "cancelled")
CANCEL_WAIT = 30.0  # seconds a cancelled render is followed while the backend winds it down


class RenderHost(Protocol):
    """Where a job shows itself; ``key`` names it (one job per key: the scene's name)."""

    key: str

    def alive(self) -> bool:
        """Whether the scene still exists (a deleted one stops the job being followed)."""

    def show(self, **state: Any) -> None:
        """Record the job's state: status, message, progress, frames_done, error, advice, ..."""

    def output_folder(self, job_id: str) -> str:
        """The absolute folder the job's frames are fetched into."""

    def display_path(self, path: str) -> str:
        """``path`` as the user should read it (``//``-relative when the .blend is saved)."""

    def frames_landed(self, folder: str, frames: list[int], latest: str | None) -> None:
        """Frames are in ``folder`` (show the strip of ``frames``); ``latest``: the newest file."""

    def status_bar(self, text: str | None) -> None:
        """Progress in the status bar; ``None`` clears it."""


def frame_path(folder: str, frame: int) -> str:
    return os.path.join(folder, frame_file(frame))


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = int(round(seconds))
    return f", ETA {whole // 60}:{whole % 60:02d}"


class RenderJob(BackendJob):
    """Submits one job and follows it until done / failed / cancelled / error.

    ``local``: the backend preferences when the add-on starts the backend itself ("Start
    locally"); ``animation``: the exported temp file, removed when the job ends.
    """

    kind = "render"

    def __init__(self, host: RenderHost, client: BackendClient, reference: str, animation: str,
                 settings: dict[str, Any], frames: list[int], local: dict[str, Any] | None = None,
                 process: BackendProcess = local_backend) -> None:
        super().__init__(host, client, local, process)
        self.reference, self.animation, self.settings, self.frames = reference, animation, settings, frames
        self.job_id, self.folder = "", ""
        self.fetched: set[int] = set()
        self.view: dict[str, Any] = {}
        self.notes: list[str] = []   # the backend's warnings about this job's inputs

    def _finish(self, outcome: str, error: str = "", advice: str = "") -> None:
        self.outcome = outcome
        self._unfollow()
        done = len(self.fetched)
        texts = {"done": f"Rendered {done} frames into {self.host.display_path(self.folder)}",
                 "cancelled": f"Cancelled; {max(done, self.view.get('frames_done') or 0)} of {len(self.frames)} "
                              f"frames kept",
                 "failed": f"Failed after {done} of {len(self.frames)} frames",
                 "error": "Render stopped"}
        if self.host.alive():
            self._show(status=outcome, message=texts[outcome], error=error, advice=advice)
        self.cleanup()
        self.host.status_bar(None)

    def cleanup(self) -> None:
        """Remove the exported animation (the backend has its own copy)."""
        try:
            os.remove(self.animation)
        except OSError:
            pass

    def _connect(self) -> None:
        if not self._backend_ready():
            return
        view = self.client.submit(self.reference, self.animation, self.settings)
        self.job_id = view["id"]
        self.folder = self.host.output_folder(self.job_id)
        os.makedirs(self.folder, exist_ok=True)
        self.fetched = {f for f in self.frames if os.path.exists(frame_path(self.folder, f))}
        self.view, self.phase, self.last_ok = view, "running", time.monotonic()
        self.notes = [str(note) for note in view.get("notes") or []]
        self._write_settings()
        self._show(job_id=self.job_id, output_dir=self.host.display_path(self.folder),
                   status=view.get("status", "queued"), frames_total=len(self.frames), frames_done=len(self.fetched),
                   progress=0.0, error="", advice="", message=f"Submitted job {self.job_id}",
                   notes="\n".join(self.notes))
        if self.fetched:
            self.host.frames_landed(self.folder, self.frames, None)

    def _write_settings(self) -> None:
        record = {"job_id": self.job_id, "backend": self.client.url, "frames": self.frames,
                  "requested_settings": self.settings, "settings": self.view.get("settings", {}),
                  "steps": self.view.get("steps"),  # the steps used (settings.steps 0: the checkpoint's)
                  "seed": self.view.get("settings", {}).get("seed", self.settings.get("seed")),
                  "checkpoint": self.view.get("checkpoint"), "reference_image": self.reference,
                  "status": self.view.get("status"), "error": self.view.get("error"),
                  "notes": self.view.get("notes"),
                  "rerender": "bpy.ops.flamediff.render(reference_image=..., steps=..., guidance=..., seed=...) "
                              "with the scene frame range set to the frames wanted"}
        tmp = os.path.join(self.folder, "settings.json.part")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, default=str)
        os.replace(tmp, os.path.join(self.folder, "settings.json"))

    def _fetch_new(self, all_: bool) -> None:
        landed = None
        for frame in self.frames:
            if frame in self.fetched:
                continue
            try:
                self.client.fetch_frame(self.job_id, frame, frame_path(self.folder, frame))
            except BackendError as exc:
                if exc.status == 404 and not all_:
                    break  # frames render in order: the rest are not there yet
                if exc.status == 404:
                    continue
                raise
            self.fetched.add(frame)
            landed = frame
        if landed is not None:
            self.host.frames_landed(self.folder, self.frames, frame_path(self.folder, landed))

    def _poll(self) -> None:
        view = self.client.job(self.job_id)
        self.view, self.last_ok = view, time.monotonic()
        status = view.get("status", "")
        if view.get("frames_done", 0) > len(self.fetched) or status in FINAL:
            self._fetch_new(all_=status in FINAL)
        total = len(self.frames)
        current = min(len(self.fetched) + 1, total)
        text = (f"flamediff: frame {current} of {total} ({100 * view.get('progress', 0.0):.0f}%"
                f"{format_eta(view.get('eta_s'))}) - Esc cancels")
        self._show(status=status, progress=float(view.get("progress", 0.0)), frames_done=len(self.fetched),
                   message=text if status in ("queued", "running") else status)
        if status in ("queued", "running"):
            self.host.status_bar(text)
            return
        self._write_settings()
        if status in ("done", "cancelled"):
            self._finish(status)
        else:
            self._finish("failed", view.get("error") or "the job failed", view.get("advice") or "see the backend's log")

    def cancel(self, error: str = "", advice: str = "") -> None:
        """DELETE the job (rendered frames are kept); ``error``/``advice`` say why when the add-on
        gave up on it (a timeout). A render that winds down (the backend finishes its denoising
        step and writes what it has) is followed to its end, for at most :data:`CANCEL_WAIT`
        seconds, so the frames it keeps land and are counted as the backend counts them."""
        if self.phase == "running" and self.job_id:
            try:
                answer = self.client.cancel(self.job_id)
            except BackendError as exc:
                self._finish("cancelled", f"cancelling on the backend failed: {exc.message}", exc.advice)
                return
            if answer.get("cancel") == "cancelling" and not error:
                self.phase, self.cancel_asked = "cancelling", time.monotonic()
                self._show(status="cancelling", message="Cancelling: the backend finishes the frames in progress")
                return
            self.view = answer
        self._cancelled(error, advice)

    def _cancelled(self, error: str = "", advice: str = "") -> None:
        try:
            if self.job_id:
                self._fetch_new(all_=True)
                self._write_settings()
        except BackendError:
            pass
        self._finish("cancelled", error, advice)

    def _wind_down(self) -> None:
        """Poll a cancelled render until the backend says it stopped (or CANCEL_WAIT passed)."""
        try:
            self.view = self.client.job(self.job_id)
        except BackendError:
            pass
        if self.view.get("status") in FINAL or time.monotonic() - self.cancel_asked > CANCEL_WAIT:
            self._cancelled()
