"""The render worker: one thread owns the GPU (or the CPU) and takes jobs first in, first out.

Why one thread: two jobs sharing one GPU would each get half the speed and twice the risk of
running out of memory; a FIFO keeps latency predictable and the model stays loaded between
jobs. One pipeline call renders all of a job's missing frames (the reference is encoded once,
temporal models keep their context) and hands frames out as they are decoded; each is written
at once, so a crash loses at most one chunk (or window region). Cancellation is polled in the
pipeline's progress callback, which runs after every denoising step.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import functools
import hashlib
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np

from flamediff.errors import FlamediffError
from flamediff.formats.provenance import frame_recipe
from flamediff.server.jobs import JobFolder, JobStore

if TYPE_CHECKING:
    import torch

    from flamediff.formats.animation import AnimationClip
    from flamediff.formats.flame_asset import FlameAsset
    from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings
    from flamediff.server.inputs import JobSettings

log = logging.getLogger("flamediff.server")


DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when an NVIDIA GPU is usable, else ``mps`` on an Apple GPU, else
    ``cpu``; ``cuda`` or ``mps`` without one is refused with advice."""
    if device == "cpu":
        return device  # no torch import: the HTTP process of 'serve --device cpu' never needs torch
    if device not in DEVICES:
        raise FlamediffError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    import torch

    mps = torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FlamediffError("--device cuda was asked for but torch sees no CUDA GPU; run 'flamediff doctor', "
                             "or use --device cpu")
    if device == "mps" and not mps:
        raise FlamediffError("--device mps was asked for but torch sees no Apple GPU (macOS 12.3+ on Apple silicon "
                             "or an AMD GPU, and a torch build with MPS); use --device cpu")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def precision_dtype(precision: str) -> torch.dtype | None:
    """``--precision`` -> the pipeline's ``dtype`` (None = its default: bf16 on CUDA, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise FlamediffError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return None
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def precision_name(dtype: object) -> str:
    """A pipeline's ``dtype`` as ``--precision`` names it (what the job view reports)."""
    return {"torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


@runtime_checkable
class Renderer(Protocol):
    """What the :class:`Worker` and :class:`~flamediff.server.service.JobService` need from a renderer:
    :class:`InProcessRenderer` (``flamediff render``, tests) or
    :class:`~flamediff.server.render_process.ChildProcessRenderer` (``flamediff serve``)."""

    device: str
    loaded_name: str | None

    def asset(self) -> "FlameAsset":
        """The FLAME asset checkpoints and animations must match."""

    def start(self) -> None:
        """Get ready before the first job (the server calls it while it starts serving)."""

    def run_job(self, job: JobFolder, should_cancel: Callable[[], bool]) -> str:
        """Render the job's missing frames; returns its final status (done|failed|cancelled|busy)."""

    def release(self) -> bool:
        """Free the model and its memory; returns whether one was loaded."""


class InProcessRenderer:
    """Renders in this process, keeping the last loaded pipeline (model + FLAME) so consecutive
    jobs skip the load."""

    def __init__(self, device: str = "cpu", flame_asset: str | None = None, precision: str = "auto") -> None:
        self.device, self.flame_asset, self.precision = device, flame_asset, precision
        precision_dtype(precision)  # refuse a bad value now, not at the first job
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._pipeline: FlameDiffPipeline | None = None
        self.loaded_name: str | None = None

    def asset(self) -> "FlameAsset":
        """The FLAME asset checkpoints must match (loaded once per process)."""
        from flamediff.assets import load_asset

        return load_asset(self.flame_asset)

    def start(self) -> None:
        """Nothing to start: the model loads at the first job, in the worker thread."""

    def pipeline(self, checkpoint: dict[str, Any]) -> FlameDiffPipeline:
        """The pipeline for ``checkpoint`` (a :class:`CheckpointInfo` dict), loading it if needed."""
        key = (checkpoint["path"], checkpoint.get("fingerprint", ""))
        with self._lock:
            if self._pipeline is None or self._key != key:
                self._drop()
                from flamediff.flame.model import FlameModel
                from flamediff.models.flamediff_model import FlameDiffModel
                from flamediff.pipelines.render import FlameDiffPipeline

                asset = self.asset()
                model = FlameDiffModel.from_pretrained(checkpoint["path"], asset=asset, device=self.device)
                self._pipeline = FlameDiffPipeline(model, FlameModel(asset).to(self.device),
                                                   dtype=precision_dtype(self.precision))
                self._key, self.loaded_name = key, checkpoint.get("name")
            return self._pipeline

    def _drop(self) -> None:
        self._pipeline, self._key, self.loaded_name = None, None, None
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run_job(self, job: JobFolder, should_cancel: Callable[[], bool]) -> str:
        """Render ``job`` in this process (the worker thread)."""
        return render_job(job, self, should_cancel)

    def release(self) -> bool:
        """Free the model and the CUDA cache; returns whether a model was loaded (if none was,
        there is nothing to free, and torch is not imported just to say so)."""
        with self._lock:
            had = self._pipeline is not None
            if had:
                self._drop()
            return had


@dataclass
class Progress:
    """What the worker reports while a job runs (also drives the CLI's progress bar)."""

    phase: str
    frames_done: int
    frames_total: int
    progress: float
    eta_s: float | None


def render_job(job: JobFolder, renderer: InProcessRenderer, should_cancel: Callable[[], bool] = lambda: False,
               on_progress: Callable[[Progress], None] | None = None) -> str:
    """Render the job's missing frames; returns its final status (done|failed|cancelled).

    Never raises for a job's own problems: they end in the manifest as ``failed`` with advice.
    Raises :class:`JobBusy` when another process renders the same folder (two writers would
    waste the GPU on the same frames).
    """
    with job.render_lock():
        return _render_locked(job, renderer, should_cancel, on_progress)


def _render_locked(job: JobFolder, renderer: InProcessRenderer, should_cancel: Callable[[], bool],
                   on_progress: Callable[[Progress], None] | None) -> str:
    from flamediff.pipelines.render import RenderCancelled

    manifest = job.update(status="running", phase="loading", started=time.time(), error=None, advice=None)
    try:
        missing = job.missing_frames()
        if not missing:
            return _finish(job, manifest["frames_total"])
        pipeline = renderer.pipeline(manifest["checkpoint"])
        settings = job.settings()
        steps = pipeline.resolved_steps(settings.steps, settings.preview)
        job.update(phase="rendering", steps=steps, resolution=pipeline.resolution(settings.preview),
                   precision=precision_name(pipeline.dtype), guidance=pipeline.resolved_guidance(settings.guidance),
                   checkpoint_sha256=weights_sha256(manifest["checkpoint"]))
        clip = _clip_to_render(job, pipeline, pipeline_settings(settings, steps, settings.frames_per_batch))
        # bounded by the frames denoised (not those written): the same frames decode in the same batches
        # whichever of them a job writes, so a chunk's frames are the full render's to the last bit
        batch = max(1, min(settings.frames_per_batch, len(clip.frame)))
        while True:
            if should_cancel():
                raise RenderCancelled("cancelled")
            try:
                _render_missing(job, pipeline, settings, pipeline_settings(settings, steps, batch), clip,
                                _JobProgress(job, on_progress), should_cancel)
                return _finish(job, manifest["frames_total"])
            except Exception as exc:
                if not is_out_of_memory(exc) or batch == 1:
                    raise
                batch = _note_out_of_memory(job, batch)
    except RenderCancelled:
        done = len(job.done_frames())
        job.update(status="cancelled", phase="cancelled", frames_done=done, eta_s=None, finished=time.time(),
                   advice="frames already rendered are kept; submit the same job again to render the rest")
        return "cancelled"
    except Exception as exc:  # any failure ends this job, never the server
        error, advice = describe_failure(exc)
        log.error("job %s failed: %s\n%s", manifest.get("id"), error, traceback.format_exc())
        job.update(status="failed", phase="failed", error=error, advice=advice, eta_s=None,
                   frames_done=len(job.done_frames()), finished=time.time())
        return "failed"


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, fingerprint: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(checkpoint: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's weights file (a frame's provenance), read once per weights version."""
    from flamediff.server.checkpoints import WEIGHTS_NAME

    return _file_sha256(os.path.join(checkpoint["path"], WEIGHTS_NAME), checkpoint.get("fingerprint", ""))


def pipeline_settings(settings: "JobSettings", steps: int, frames_per_batch: int) -> "RenderSettings":
    """The pipeline's settings for a job: every job setting the pipeline shares by name, with the
    steps resolved for its checkpoint and the batch size in use (smaller after a GPU OOM)."""
    from flamediff.pipelines.render import RenderSettings

    shared = {field.name for field in dataclasses.fields(RenderSettings)} & set(type(settings).model_fields)
    values = {name: getattr(settings, name) for name in shared}
    return RenderSettings(**{**values, "steps": steps, "frames_per_batch": frames_per_batch})


def _clip_to_render(job: JobFolder, pipeline: Any, render_settings: "RenderSettings") -> "AnimationClip":
    """The job's missing frames and, for temporal models, their window neighbours from the whole
    animation (not only the job's frames): a resumed job, or a job of some frames of a longer
    animation (a farm chunk), gets exactly the pixels of one render of the whole animation."""
    from flamediff.formats.animation import load_animation

    animation = load_animation(job.input_path(job.read()["animation"]))
    return animation.select_frames(pipeline.frames_to_render(job.missing_frames(), animation.frame.tolist(),
                                                             render_settings))


def _render_missing(job: JobFolder, pipeline: Any, settings: "JobSettings", render_settings: "RenderSettings",
                    clip: "AnimationClip", progress: "_JobProgress", should_cancel: Callable[[], bool]) -> None:
    """One pipeline call over ``clip`` (one ReferenceNet pass, unbroken temporal context) with the
    job's typed settings, writing each missing frame as it is handed out."""
    from flamediff.server.inputs import read_reference_image

    manifest = job.read()
    with open(job.input_path(manifest["reference"]), "rb") as handle:
        reference = read_reference_image(handle.read()).pixels
    missing = set(job.missing_frames())
    reference_shape = np.asarray(settings.reference_shape) if settings.reference_shape else None

    def denoised(_phase: str, done: int, total: int) -> bool:
        progress.denoised(done / total)
        return not should_cancel()

    for piece in pipeline.stream(reference, clip, render_settings, reference_shape=reference_shape,
                                 progress=denoised, return_control=True):
        written = [(n, f, c) for n, f, c in zip(piece.frame_numbers, piece.frames, piece.control_previews)
                   if n in missing]
        for number, frame, control in written:
            job.write_frame(number, frame, control, frame_recipe(manifest, number))
        progress.wrote(len(written))


class _JobProgress:
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


def _note_out_of_memory(job: JobFolder, batch: int) -> int:
    """Record an out-of-memory retry in the manifest; returns the halved batch size."""
    smaller = max(1, batch // 2)
    _empty_cuda_cache()
    note = f"GPU out of memory with {batch} frames per batch: retrying with {smaller}"
    current = job.read()
    log.warning("job %s: %s", current["id"], note)
    job.update(notes=current.get("notes", []) + [note], frames_per_batch_used=smaller,
               oom_retries=current.get("oom_retries", 0) + 1)
    return smaller


def _finish(job: JobFolder, total: int) -> str:
    job.update(status="done", phase="done", progress=1.0, frames_done=total, eta_s=0.0, finished=time.time())
    return "done"


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """A message naming the problem, and advice, for a job that failed."""
    keep = "frames already rendered are kept; submit the same job again to render only the missing ones"
    if is_out_of_memory(exc):
        return ("GPU out of memory even with 1 frame per batch",
                f"use a smaller checkpoint or resolution, free GPU memory (POST /v1/release, other programs); {keep}")
    if isinstance(exc, FlamediffError):
        return str(exc), keep
    return f"{type(exc).__name__}: {exc}", f"an unexpected error (the server log has the traceback); {keep}"


def unsaved_failure(path: str, cause: BaseException | None) -> tuple[str, str]:
    """Error and advice for a job whose status could not be written to ``path``'s disk."""
    import shutil

    keep = "frames already rendered are kept and can be fetched; submit the same job again to render the rest"
    full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    try:
        full = full or shutil.disk_usage(path).free < 1 << 20
    except OSError:
        pass
    if full:
        return "the server's disk is full: the job's frames and status could not be written", (
            f"free disk space on the server (its jobs folder); {keep}")
    detail = f" ({cause.strerror})" if isinstance(cause, OSError) and cause.strerror else ""
    return f"the job's files could not be written{detail}", f"see the server's log; {keep}"


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
