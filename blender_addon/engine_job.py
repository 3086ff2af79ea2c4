"""The render engine's side of a job, as plain Python: which frames a chunk submits, waiting for
one frame while Blender asks for them in turn, progress lines, and how a failure ends the render.

Blender calls ``RenderEngine.render`` once per frame; the engine (:mod:`.render_engine`) submits
ONE :class:`~.render_job.RenderJob` for every frame Blender will ask for in this render (the
scene range with its step, or the current frame for F12), exporting the animation over the
context windows those frames need (:func:`~.formats.windows.context_frames`), so a farm chunk
gets the pixels of one full-range render. Each ``render`` call then waits here for its frame.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from ..backend.formats.windows import context_frames
from .backend_client import with_advice
from .backend_job import POLL_INTERVAL
from .render_job import RenderJob, format_eta, frame_path

#: How often a wait checks Esc (``RenderEngine.test_break``) between polls of the backend.
BREAK_INTERVAL = 0.05
#: Blender's command-line render flags (``blender -b shot.blend -a``; ``-f 7``; ``-s 1 -e 6 -a``).
RENDER_FLAGS = ("-a", "--render-anim", "-f", "--render-frame")


class EngineError(RuntimeError):
    """A render that cannot go on: ``message`` names the problem, ``advice`` what to do."""

    def __init__(self, message: str, advice: str = "") -> None:
        super().__init__(message)
        self.message, self.advice = message, advice

    def __str__(self) -> str:
        return f"flamediff: {with_advice(self.message, self.advice)}"


class RenderCancelled(RuntimeError):
    """Esc: the backend job was cancelled; the frames written so far stay."""


def rendered_frames(start: int, end: int, step: int, current: int, animation: bool,
                    listed: Sequence[int] = ()) -> list[int]:
    """The frames Blender asks for in this render: those ``blender -f`` lists (``listed``: Blender
    renders each as a render of its own), the scene range with its step, or the current frame."""
    if current in listed:
        return sorted(set(listed))
    return list(range(start, end + 1, max(1, step))) if animation else [current]


def listed_frames(argv: Sequence[str], start: int, end: int) -> list[int]:
    """The frames of Blender's ``-f`` / ``--render-frame`` arguments: ``7``, ``1,3,5``, ``5..9``,
    ``+2`` (from the start frame), ``-2`` (before the end frame); several ``-f`` add up."""
    own = list(argv[:list(argv).index("--")]) if "--" in argv else list(argv)
    frames: list[int] = []
    for flag, value in zip(own, own[1:]):
        if flag not in ("-f", "--render-frame"):
            continue
        for part in value.split(","):
            try:
                first, _, last = part.partition("..")
                lo = _frame_number(first, start, end)
                frames.extend(range(lo, _frame_number(last, start, end) + 1) if last else [lo])
            except ValueError:
                continue   # Blender reports what it cannot read
    return frames


def _frame_number(text: str, start: int, end: int) -> int:
    text = text.strip()
    if text.startswith("+"):
        return start + int(text[1:])
    if text.startswith("-"):
        return end - int(text[1:])
    return int(text)


def export_range(frames: Sequence[int]) -> tuple[int, int]:
    """The frame range to export for ``frames``: every frame of the context windows holding them."""
    needed = context_frames(frames)
    return needed[0], needed[-1]


def command_line_render(argv: Sequence[str], background: bool) -> bool:
    """Whether this is ``blender -b ... -a`` / ``-f N``: Blender then ignores a render's errors and
    exits 0, so the engine ends the process itself (a farm must see the failure). Blender reads its
    own arguments up to ``--``; later ones belong to scripts."""
    own = list(argv[:list(argv).index("--")]) if "--" in argv else list(argv)
    return background and any(flag in own for flag in RENDER_FLAGS)


class EngineHost:
    """The :class:`~.render_job.RenderHost` of an engine render: state kept here (the engine reports
    it), frames fetched into a temporary folder Blender loads them from, removed with :meth:`close`."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.state: dict[str, Any] = {}
        self.folder = tempfile.mkdtemp(prefix="flamediff-engine-")

    def alive(self) -> bool:
        return True

    def show(self, **state: Any) -> None:
        self.state.update(state)

    def output_folder(self, job_id: str) -> str:
        return self.folder

    def display_path(self, path: str) -> str:
        return path

    def frames_landed(self, folder: str, frames: list[int], latest: str | None) -> None:
        """Nothing to show: each ``render`` call takes its own frame."""

    def status_bar(self, text: str | None) -> None:
        """Blender's render window shows the engine's stats instead."""

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def progress_line(job: RenderJob) -> str:
    """``flamediff: frame 3 of 12, 21%, ETA 0:42`` for the log of a background render."""
    total = len(job.frames)
    current = min(len(job.fetched) + 1, total)
    view = job.view
    return (f"flamediff: frame {current} of {total}, {100 * float(view.get('progress') or 0.0):.0f}%"
            f"{format_eta(view.get('eta_s'))} (job {job.job_id or 'connecting'}, {view.get('status', 'starting')})")


class ChunkRender:
    """One backend job for the frames of one Blender render, followed across its ``render`` calls."""

    def __init__(self, job: RenderJob, host: EngineHost, log: Callable[[str], None] | None = None) -> None:
        self.job, self.host = job, host
        self.log = log if log is not None else (lambda text: print(text, file=sys.stderr, flush=True))
        self._last_line, self._last_logged = "", 0.0

    @property
    def frames(self) -> list[int]:
        return self.job.frames

    @property
    def handed_out(self) -> bool:
        """Whether every frame of the chunk was rendered (Blender took them, or will read them again)."""
        return set(self.frames) <= self.job.fetched

    def wait_for(self, frame: int, should_stop: Callable[[], bool],
                 on_progress: Callable[[float, str], None] = lambda fraction, text: None) -> str:
        """The PNG of ``frame`` once the backend rendered it. Raises :class:`RenderCancelled` when
        ``should_stop`` (Esc) and :class:`EngineError` when the job cannot deliver it."""
        next_poll = 0.0
        while frame not in self.job.fetched:
            if self.job.phase == "finished":
                raise self._failure(frame)
            if should_stop():
                self.job.cancel()
                raise RenderCancelled(f"cancelled: {len(self.job.fetched)} of {len(self.frames)} frames rendered")
            if time.monotonic() >= next_poll:
                self.job.step()
                next_poll = time.monotonic() + POLL_INTERVAL
                self._report(on_progress)
            else:
                time.sleep(BREAK_INTERVAL)
        self._report(on_progress)
        return frame_path(self.job.folder, frame)

    def _report(self, on_progress: Callable[[float, str], None]) -> None:
        line = progress_line(self.job)
        on_progress(float(self.job.view.get("progress") or 0.0), line)
        now = time.monotonic()
        frame_part = line.split(",")[0]
        if frame_part != self._last_line.split(",")[0] or now - self._last_logged > 10.0:
            self.log(line)
            self._last_line, self._last_logged = line, now

    def _failure(self, frame: int) -> EngineError:
        job = self.job
        if job.outcome in ("error", "failed"):
            return EngineError(job.error or "the render failed", job.advice)
        if job.outcome == "cancelled":
            return EngineError("the job was cancelled on the backend", "render again to finish the missing frames")
        return EngineError(f"the backend finished job {job.job_id} without frame {frame}",
                           "render again; if it persists, see the backend's log")

    def close(self) -> None:
        """Stop following the job (cancelling it while it still renders) and remove the fetched frames."""
        if self.job.phase != "finished" and set(self.frames) - self.job.fetched:
            self.job.cancel()
        self.job.cleanup()
        self.host.close()
