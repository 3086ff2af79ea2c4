"""What every job that follows a backend task shares, as plain Python: the step loop, reaching the
backend and "Start locally", and the registry of the jobs followed (one render and one tracking
per scene).

A :class:`BackendJob` is advanced by :meth:`BackendJob.step` (a timer calls it every ~0.5 s;
``wait=True`` operators call it in a loop); every HTTP call has a short timeout, so a step never
blocks Blender for long. :class:`~.render_job.RenderJob` and :class:`~.track_job.TrackJob` are
its kinds; this module never imports bpy.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

from .backend_client import FOREIGN, BackendClient, BackendError
from ..backend.formats.ports import busy_port_message, free_port, port_is_free

POLL_INTERVAL = 0.5
START_TIMEOUT = 120.0
SLOW_ANSWER_GRACE = 10.0  # seconds of failed polls tolerated while rendering (a busy backend)

#: (job kind, host key: the scene's name) -> the job followed there: one render and one tracking per scene
_ACTIVE: dict[tuple[str, str], BackendJob] = {}


def local_settings(backend: dict[str, Any]) -> dict[str, Any] | None:
    """The preferences' backend settings when the add-on starts the backend itself ("Start
    locally"), else None (it connects to a URL)."""
    return backend if backend["mode"] == "LOCAL" else None


class BackendProcess(Protocol):
    """The "Start locally" backend process (:mod:`.local_backend`)."""

    def running(self) -> Any: ...
    def start(self, python_preference: str, port: int, device: str, token_file: str) -> Any: ...
    def exit_code(self) -> int | None: ...
    def last_log_line(self) -> str: ...
    def log_path(self) -> str: ...
    def answers_on(self, port: int) -> bool: ...


class BackendJob:
    """What a job that follows a backend task shares: the step loop (short calls, a grace for slow
    answers), reaching the backend and "Start locally". Subclasses define ``_connect`` (submit once
    the backend answers), ``_poll``, ``_finish`` and ``cancel``, and their ``kind``."""

    kind = ""

    def __init__(self, host: Any, client: BackendClient, local: dict[str, Any] | None,
                 process: BackendProcess) -> None:
        self.host, self.client, self.process, self.local = host, client, process, local
        self.phase = "connecting"  # connecting -> running -> finished
        self.outcome = ""  # done | failed | cancelled | error
        self.message = self.error = self.advice = ""
        self.started = self.last_ok = time.monotonic()
        self.cancel_asked = 0.0
        self.start_attempted = False
        self.after: BackendJob | None = None   # a cancelled job of this host that winds down first

    def _show(self, **state: Any) -> None:
        for name in ("message", "error", "advice"):
            if name in state:
                setattr(self, name, state[name])
        self.host.show(**state)

    def _connect(self) -> None:
        raise NotImplementedError

    def _poll(self) -> None:
        raise NotImplementedError

    def _finish(self, outcome: str, error: str = "", advice: str = "") -> None:
        raise NotImplementedError

    def cancel(self, error: str = "", advice: str = "") -> None:
        raise NotImplementedError

    def _wind_down(self) -> None:
        """Follow a cancelled task while the backend stops it (``phase`` 'cancelling')."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove this job's temporary files."""

    def _unfollow(self) -> None:
        self.phase = "finished"
        if _ACTIVE.get((self.kind, self.host.key)) is self:
            del _ACTIVE[(self.kind, self.host.key)]

    def _waiting_for_predecessor(self) -> bool:
        """Whether the cancelled job this one follows still winds down (it is advanced here, so a
        resubmission after Cancel starts once the backend stopped the old render, never fails)."""
        if self.after is None:
            return False
        if self.after.step():
            self._show(status="queued", message=f"Waiting for the cancelled {self.kind} to stop")
            return True
        self.after = None
        return False

    def step(self) -> bool:
        """Advance once; True while the job still needs polling."""
        if self.phase == "finished":
            return False
        if not self.host.alive():  # the scene was deleted: stop following the job
            self._unfollow()
            return False
        if self.phase == "connecting" and self._waiting_for_predecessor():
            return True
        try:
            if self.phase == "connecting":
                self._connect()
            if self.phase == "running":
                self._poll()
            elif self.phase == "cancelling":
                self._wind_down()
        except BackendError as exc:
            if (self.phase == "running" and exc.status is None
                    and time.monotonic() - self.last_ok < SLOW_ANSWER_GRACE):
                return True  # a slow answer while the backend works: try again next tick
            self._finish("error", exc.message, exc.advice)
        return self.phase != "finished"

    def _backend_ready(self) -> bool:
        """Whether the backend answers; when it does not and the add-on starts it ("Start locally"),
        start it or wait for it (False), else raise the connection error."""
        try:
            self.client.health()
        except BackendError as exc:
            if (exc.status == FOREIGN and self.local is not None and self.local.get("pick_free_port")
                    and self.process.running() is None):
                self._move_to_free_port()
                return False
            if self.local is None or (exc.status is not None and exc.status != 401):
                raise
            self._wait_for_local_backend()
            return False
        return True

    def _move_to_free_port(self) -> None:
        """"Start locally" with another program on the port: start the backend on a free one."""
        assert self.local is not None
        taken, port = self.local["port"], free_port()
        self.local = {**self.local, "port": port}
        self.client.url = f"http://127.0.0.1:{port}"
        self._wait_for_local_backend()
        self._show(message=f"Starting the local backend on port {port} ({busy_port_message(taken)})")

    def _wait_for_local_backend(self) -> None:
        """"Start locally": not running (refused / no token file yet) or still starting (old token)."""
        assert self.local is not None
        if self.process.running() is None:
            if self.start_attempted and self.process.answers_on(self.local["port"]) and \
                    time.monotonic() - self.started < START_TIMEOUT:
                return  # ours found the port taken: another Blender's backend is starting there; use it
            if self.start_attempted:
                raise BackendError(f"the local backend stopped while starting (exit code "
                                   f"{self.process.exit_code()}): {self.process.last_log_line() or 'no output'}",
                                   f"see its log {self.process.log_path()} (is the port "
                                   f"{self.local['port']} taken by another program?)")
            if self.local.get("pick_free_port") and not os.path.exists(self.local["token_file"]) and \
                    not port_is_free(self.local["port"]):
                self._move_to_free_port()   # no backend of ours wrote a token: another program has the port
                return
            self.process.start(self.local["python"], self.local["port"], self.local["device"],
                               self.local["token_file"])
            self.start_attempted = True
            self._show(status="starting", message="Starting the local backend...", error="", advice="")
            return
        if time.monotonic() - self.started > START_TIMEOUT:
            raise BackendError(f"the local backend did not answer within {START_TIMEOUT:g} s of its start",
                               f"see its log {self.process.log_path()}")

def start(job: BackendJob) -> None:
    """Follow ``job``: the one job of its kind in its host (scene) until it ends; a cancelled one
    still winding down there is followed to its end first."""
    old = _ACTIVE.get((job.kind, job.host.key))
    if old is not None and old.phase == "cancelling":
        job.after = old
    _ACTIVE[(job.kind, job.host.key)] = job


def active_job(key: str, kind: str = "render") -> Any:
    """The job of ``kind`` the scene named ``key`` follows, if any."""
    return _ACTIVE.get((kind, key))


def cancel_all() -> None:
    for job in list(_ACTIVE.values()):
        job.cancel()


def forget_all() -> None:
    """Stop following every job (they keep running on the backend; a render's frames stay in the
    backend's job folder), e.g. when another .blend is opened."""
    for job in list(_ACTIVE.values()):
        job.phase = "finished"
        job.cleanup()
    _ACTIVE.clear()
