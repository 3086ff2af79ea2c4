"""How far a job is: the manifest's progress fields, which polling clients read, and the
:class:`Progress` records behind ``flamediff render``'s progress bar. Progress counts frames
written and the fraction of denoising done, so the bar moves during the first chunk too."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from flamediff.server.jobs import JobFolder


@dataclass
class Progress:
    """What the worker reports while a job runs (also drives the CLI's progress bar)."""

    phase: str
    frames_done: int
    frames_total: int
    progress: float
    eta_s: float | None


class JobProgress:
    """Progress of one pipeline call over the job's missing frames, for the manifest (which
    polling clients read: at most 4 writes a second) and ``on_progress``."""

    def __init__(self, job: JobFolder, on_progress: Callable[[Progress], None] | None) -> None:
        self.job, self.on_progress = job, on_progress
        self.total = job.read()["frames_total"]
        self.already = self.frames_done = len(job.done_frames())
        self.fraction, self.last_write = 0.0, 0.0
        self.started = time.monotonic()

    def denoised(self, fraction: float) -> None:
        """``fraction`` of this call's denoising is done."""
        self.fraction = fraction
        self._report(force=False)

    def wrote(self, frames: int) -> None:
        """``frames`` more frames are on disk (always written to the manifest)."""
        self.frames_done += frames
        self._report(force=True)

    def _report(self, force: bool) -> None:
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.fraction * (1.0 - self.fraction) if self.fraction else None
        progress = min((self.already + (self.total - self.already) * self.fraction) / self.total, 1.0)
        now = time.monotonic()
        if force or now - self.last_write > 0.25:
            self.last_write = now
            self.job.update(phase="rendering", progress=round(progress, 4), frames_done=self.frames_done, eta_s=eta)
        if self.on_progress is not None:
            self.on_progress(Progress("rendering", self.frames_done, self.total, progress, eta))
