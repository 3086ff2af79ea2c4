"""The render worker: one thread owns the GPU (or the CPU) and takes jobs first in, first out.

Why one thread: two jobs sharing one GPU would each get half the speed and twice the risk of
running out of memory; a FIFO keeps latency predictable and the model stays loaded between
jobs. The worker only orders jobs and tracks cancels: a :class:`~flamediff.server.renderers.Renderer`
runs each (:mod:`flamediff.server.job_execution`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from flamediff.server.failures import unsaved_failure
from flamediff.server.jobs import JobStore
from flamediff.server.renderers import Renderer

log = logging.getLogger("flamediff.server")


class Worker:
    """A FIFO of job ids served by one daemon thread."""

    def __init__(self, store: JobStore, renderer: Renderer) -> None:
        self.store, self.renderer = store, renderer
        self._queue: collections.deque[str] = collections.deque()
        self._cancel: set[str] = set()
        self._again: set[str] = set()   # cancelled while rendering, then submitted again: rerun when wound down
        self._cond = threading.Condition()
        self.current: str | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="flamediff-worker", daemon=True)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._stop = True
            if self.current:
                self._cancel.add(self.current)
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self.current else 0)

    def is_active(self, job_id: str) -> bool:
        """Whether ``job_id`` is queued or rendering now."""
        with self._cond:
            return job_id in self._queue or job_id == self.current

    def restarting(self, job_id: str) -> bool:
        """Whether ``job_id`` was submitted again while its cancelled render winds down (it is
        queued again as soon as that render stops)."""
        with self._cond:
            return job_id in self._again

    def enqueue(self, job_id: str) -> bool:
        """Queue ``job_id`` unless it is already queued or running; returns whether it was added.
        A job whose render is winding down after a cancel is queued again once it stops."""
        with self._cond:
            if job_id == self.current and job_id in self._cancel:
                self._again.add(job_id)
                return True
            self._cancel.discard(job_id)
            if job_id in self._queue or job_id == self.current:
                return False
            self._queue.append(job_id)
            self._cond.notify_all()
            return True

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job now, or a running one at its next denoising step. Either is on
        disk before this returns, so a crash right after cannot resume the job."""
        with self._cond:
            if job_id in self._queue:
                folder = self.store.get(job_id)
                folder.update(status="cancelled", phase="cancelled", eta_s=None, finished=time.time(),
                              advice="submit the same job again to render it")
                self._queue.remove(job_id)
                return "cancelled"
            if job_id == self.current:
                self.store.get(job_id).request_cancel()
                self._cancel.add(job_id)
                return "cancelling"
        return "not running"

    def _fail_if_unsaved(self, job_id: str, cause: BaseException | None) -> None:
        """A job the renderer left ``queued``/``running`` on disk could not save its end (a full
        disk): it reads as failed, with the cause, until the server restarts."""
        try:
            folder = self.store.get(job_id)
            with self._cond:
                requeued = job_id in self._queue
            if requeued or folder.read()["status"] not in ("queued", "running"):
                return
        except Exception:  # an unreadable folder reads as failed already
            return
        error, advice = unsaved_failure(folder.path, cause)
        log.error("job %s: %s", job_id, error)
        folder.fail_unsaved(error, advice)

    def _requeue_after_cancel(self, job_id: str) -> None:
        """Under the lock: the wound-down job, submitted again meanwhile, goes first in the queue
        (its manifest says queued before ``restarting`` stops saying so)."""
        try:
            self.store.get(job_id).requeue()
            self._queue.appendleft(job_id)
        except Exception:  # the folder went away: nothing to rerun
            log.exception("job %s could not be queued again", job_id)
        self._again.discard(job_id)
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job_id = self._queue.popleft()
                self.current = job_id
            cause: BaseException | None = None
            try:
                self.store.get(job_id).clear_unsaved()
                self.renderer.run_job(self.store.get(job_id), lambda: job_id in self._cancel)  # noqa: B023 (used now)
            except Exception as exc:  # the store itself failed (disk full, folder deleted): log, keep serving
                log.exception("job %s could not run", job_id)
                cause = exc
            finally:
                self._fail_if_unsaved(job_id, cause)
                with self._cond:
                    self.current = None
                    self._cancel.discard(job_id)
                    if job_id in self._again:
                        self._requeue_after_cancel(job_id)
