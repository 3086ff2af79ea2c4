"""Running one job: render its missing frames into its folder, retrying with smaller batches
when the GPU runs out of memory, and end it as done, cancelled or failed in its manifest.

One pipeline call renders all of a job's missing frames (the reference is encoded once,
temporal models keep their context) and hands frames out as they are decoded; each is written
at once, so a crash loses at most one chunk (or window region). Cancellation is polled in the
pipeline's progress callback, which runs after every denoising step. ``flamediff render`` calls
:func:`render_job` directly; the server calls it through a renderer, in its render process.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from flamediff.devices import empty_cuda_cache, is_out_of_memory, precision_name
from flamediff.formats.provenance import frame_recipe
from flamediff.server.failures import describe_failure
from flamediff.server.jobs import JobFolder
from flamediff.server.progress import JobProgress, Progress

if TYPE_CHECKING:
    from flamediff.formats.animation import AnimationClip
    from flamediff.pipelines.render import RenderSettings
    from flamediff.server.inputs import JobSettings
    from flamediff.server.renderers import InProcessRenderer

log = logging.getLogger("flamediff.server")


def render_job(job: JobFolder, renderer: "InProcessRenderer", should_cancel: Callable[[], bool] = lambda: False,
               on_progress: Callable[[Progress], None] | None = None) -> str:
    """Render the job's missing frames; returns its final status (done|failed|cancelled).

    Never raises for a job's own problems: they end in the manifest as ``failed`` with advice.
    Raises :class:`JobBusy` when another process renders the same folder (two writers would
    waste the GPU on the same frames).
    """
    with job.render_lock():
        return _render_locked(job, renderer, should_cancel, on_progress)


def _render_locked(job: JobFolder, renderer: "InProcessRenderer", should_cancel: Callable[[], bool],
                   on_progress: Callable[[Progress], None] | None) -> str:
    from flamediff.pipelines.render import RenderCancelled

    manifest = job.update(status="running", phase="loading", started=time.time(), error=None, advice=None)
    try:
        if not job.missing_frames():
            return _finish(job, manifest["frames_total"])
        _render_with_retries(job, renderer, should_cancel, on_progress)
        return _finish(job, manifest["frames_total"])
    except RenderCancelled:
        job.update(status="cancelled", phase="cancelled", frames_done=len(job.done_frames()), eta_s=None,
                   finished=time.time(),
                   advice="frames already rendered are kept; submit the same job again to render the rest")
        return "cancelled"
    except Exception as exc:  # any failure ends this job, never the server
        error, advice = describe_failure(exc)
        log.error("job %s failed: %s\n%s", manifest.get("id"), error, traceback.format_exc())
        job.update(status="failed", phase="failed", error=error, advice=advice, eta_s=None,
                   frames_done=len(job.done_frames()), finished=time.time())
        return "failed"


def _render_with_retries(job: JobFolder, renderer: "InProcessRenderer", should_cancel: Callable[[], bool],
                         on_progress: Callable[[Progress], None] | None) -> None:
    """Load the job's pipeline and render its missing frames, halving the batch on each GPU
    out-of-memory error until one frame per batch fails too."""
    from flamediff.pipelines.render import RenderCancelled

    manifest = job.read()
    pipeline = renderer.pipeline(manifest["checkpoint"])
    settings = job.settings()
    steps = pipeline.resolved_steps(settings.steps, settings.preview)
    job.update(phase="rendering", steps=steps, resolution=pipeline.resolution(settings.preview),
               precision=precision_name(pipeline.dtype), guidance=pipeline.resolved_guidance(settings.guidance),
               checkpoint_sha256=weights_sha256(manifest["checkpoint"]))
    clip = _clip_to_render(job, pipeline, pipeline_settings(settings, steps, settings.frames_per_batch))
    reference_pose = _reference_pose(job, pipeline, renderer)
    # bounded by the frames denoised (not those written): the same frames decode in the same batches
    # whichever of them a job writes, so a chunk's frames are the full render's to the last bit
    batch = max(1, min(settings.frames_per_batch, len(clip.frame)))
    while True:
        if should_cancel():
            raise RenderCancelled("cancelled")
        try:
            _render_missing(job, pipeline, settings, pipeline_settings(settings, steps, batch), clip,
                            JobProgress(job, on_progress), should_cancel, reference_pose)
            return
        except Exception as exc:
            if not is_out_of_memory(exc) or batch == 1:
                raise
            batch = _note_out_of_memory(job, batch)


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


#: The job settings (:data:`flamediff.formats.protocol.JOB_SETTINGS`) a render passes to the
#: pipeline: each one's :class:`~flamediff.pipelines.render.RenderSettings` field.
PIPELINE_FIELDS = {"steps": "steps", "guidance": "guidance", "seed": "seed", "shape_from": "shape_from",
                   "preview": "preview", "framing": "framing", "matte": "matte", "frames_per_batch": "frames_per_batch"}
#: The job settings that are no pipeline setting, and what each does instead.
NOT_PIPELINE_SETTINGS = {
    "checkpoint": "chooses the model (the job's manifest names its folder)",
    "frames": "chooses the frames to render (the job folder's missing frames)",
    "reference_shape": "the pipeline call's reference_shape argument",
    "resolution": "checked against the checkpoint's when the job is submitted",
}
#: RenderSettings fields no job sets: the pipeline's own defaults.
PIPELINE_ONLY_FIELDS = ("context_window", "context_overlap")


def pipeline_settings(settings: "JobSettings", steps: int, frames_per_batch: int) -> "RenderSettings":
    """The pipeline's settings for a job: its settings named in :data:`PIPELINE_FIELDS`, with the
    steps resolved for its checkpoint and the batch size in use (smaller after a GPU OOM)."""
    from flamediff.pipelines.render import RenderSettings

    values = {field: getattr(settings, name) for name, field in PIPELINE_FIELDS.items()}
    return RenderSettings(**{**values, "steps": steps, "frames_per_batch": frames_per_batch})


def _clip_to_render(job: JobFolder, pipeline: Any, render_settings: "RenderSettings") -> "AnimationClip":
    """The job's missing frames and, for temporal models, their window neighbours from the whole
    animation (not only the job's frames): a resumed job, or a job of some frames of a longer
    animation (a farm chunk), gets exactly the pixels of one render of the whole animation."""
    from flamediff.formats.animation import load_animation

    animation = load_animation(job.input_path(job.read()["animation"]))
    return animation.select_frames(pipeline.frames_to_render(job.missing_frames(), animation.frame.tolist(),
                                                             render_settings))


def _reference_pose(job: JobFolder, pipeline: Any, renderer: "InProcessRenderer") -> "AnimationClip | None":
    """What a checkpoint with the correspondence control reads of the reference photo: its pose
    and camera, tracked once per job; a job whose reference cannot be tracked renders without it
    and its manifest says so."""
    if not pipeline.model.config.correspondence:
        return None
    from flamediff.tracking.track import track_reference_pose

    manifest = job.read()
    with open(job.input_path(manifest["reference"]), "rb") as handle:
        reference = handle.read()
    pose, note = track_reference_pose(reference, os.path.splitext(manifest["reference"])[1].lstrip("."),
                                      renderer.asset())
    if note:
        log.warning("job %s: %s", manifest["id"], note)
        job.update(notes=job.read().get("notes", []) + [note])
    return pose


def _render_missing(job: JobFolder, pipeline: Any, settings: "JobSettings", render_settings: "RenderSettings",
                    clip: "AnimationClip", progress: JobProgress, should_cancel: Callable[[], bool],
                    reference_pose: "AnimationClip | None" = None) -> None:
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
                                 progress=denoised, return_control=True, reference_pose=reference_pose):
        written = [(n, f, c) for n, f, c in zip(piece.frame_numbers, piece.frames, piece.control_previews)
                   if n in missing]
        for number, frame, control in written:
            job.write_frame(number, frame, control, frame_recipe(manifest, number))
        progress.wrote(len(written))


def _note_out_of_memory(job: JobFolder, batch: int) -> int:
    """Record an out-of-memory retry in the manifest; returns the halved batch size."""
    smaller = max(1, batch // 2)
    empty_cuda_cache()
    note = f"GPU out of memory with {batch} frames per batch: retrying with {smaller}"
    current = job.read()
    log.warning("job %s: %s", current["id"], note)
    job.update(notes=current.get("notes", []) + [note], frames_per_batch_used=smaller,
               oom_retries=current.get("oom_retries", 0) + 1)
    return smaller


def _finish(job: JobFolder, total: int) -> str:
    job.update(status="done", phase="done", progress=1.0, frames_done=total, eta_s=0.0, finished=time.time())
    return "done"
