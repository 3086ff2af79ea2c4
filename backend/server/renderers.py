"""Who renders a job, and the model kept loaded between jobs.

:class:`Renderer` is what the worker and the service ask of a renderer;
:class:`InProcessRenderer` renders in this process and keeps the last loaded pipeline (model +
FLAME), so consecutive jobs on one checkpoint skip seconds of loading. ``flamediff serve`` runs
one inside its render child process (:mod:`flamediff.server.render_process`).
"""

from __future__ import annotations

import gc
import threading
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from flamediff.devices import empty_cuda_cache, precision_dtype
from flamediff.server.job_execution import render_job
from flamediff.server.jobs import JobFolder

if TYPE_CHECKING:
    from flamediff.formats.flame_asset import FlameAsset
    from flamediff.pipelines.render import FlameDiffPipeline


@runtime_checkable
class Renderer(Protocol):
    """What the :class:`~flamediff.server.worker.Worker` and :class:`~flamediff.server.service.JobService`
    need from a renderer: :class:`InProcessRenderer` (``flamediff render``, tests) or
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
                self._pipeline = self._load(checkpoint["path"])
                self._key, self.loaded_name = key, checkpoint.get("name")
            return self._pipeline

    def _load(self, folder: str) -> FlameDiffPipeline:
        from flamediff.flame.model import FlameModel
        from flamediff.models.flamediff_model import FlameDiffModel
        from flamediff.pipelines.render import FlameDiffPipeline

        asset = self.asset()
        model = FlameDiffModel.from_pretrained(folder, asset=asset, device=self.device)
        return FlameDiffPipeline(model, FlameModel(asset).to(self.device), dtype=precision_dtype(self.precision))

    def _drop(self) -> None:
        self._pipeline, self._key, self.loaded_name = None, None, None
        gc.collect()
        empty_cuda_cache()

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
