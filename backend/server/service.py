"""The job service: checks a request against the checkpoint and the FLAME asset, turns it
into a job folder and queues it. HTTP-free, so ``app.py`` stays a thin adapter and the CLI's
``render`` runs the very same checks."""

from __future__ import annotations

import os
from typing import Any

from backend import __version__
from backend.server import PROTOCOL_VERSION
from backend.server.checkpoints import CheckpointRegistry
from backend.server.inputs import (CheckedInputs, InputError, parse_settings, read_animation,
                                   read_reference_image)
from backend.server.jobs import JobStore, request_hash
from backend.server.worker import ModelCache, Worker

#: Largest file read from a local path (uploads are limited by the HTTP body limit).
MAX_INPUT_BYTES = 256 * 1024 * 1024


def check_request(reference: bytes, animation: bytes, settings_data: dict[str, Any] | None,
                  registry: CheckpointRegistry, cache: ModelCache) -> CheckedInputs:
    """Every check a job needs before it is accepted; raises :class:`InputError`."""
    settings = parse_settings(settings_data)
    _, reference_ext = read_reference_image(reference)
    clip, warnings = read_animation(animation)
    asset = cache.asset()
    checkpoint = registry.resolve(settings.checkpoint, asset.content_hash)
    settings.checkpoint = checkpoint.name
    trained_for = checkpoint.flame_asset.get("hash")
    if trained_for and asset.content_hash != trained_for:
        raise InputError(f"checkpoint {checkpoint.name!r} was trained for FLAME asset "
                         f"{checkpoint.flame_asset.get('name')!r} ({trained_for[:12]}), but this backend uses "
                         f"{asset.name!r} ({asset.content_hash[:12]})",
                         "start the backend with that asset (--flame-asset), or pick a checkpoint trained for yours",
                         409)
    clip_hash = clip.flame_asset.get("hash")
    if clip_hash and trained_for and clip_hash != trained_for:
        raise InputError(f"the animation was exported for FLAME asset {clip.flame_asset.get('name')!r} "
                         f"({clip_hash[:12]}), but checkpoint {checkpoint.name!r} was trained for "
                         f"{checkpoint.flame_asset.get('name')!r} ({trained_for[:12]})",
                         "build the rig with the checkpoint's asset and export again, or pick another checkpoint",
                         409)
    if settings.resolution is not None and checkpoint.resolution and settings.resolution != checkpoint.resolution:
        raise InputError(f"checkpoint {checkpoint.name!r} renders {checkpoint.resolution} px, not "
                         f"{settings.resolution} px", "leave resolution empty, or pick a checkpoint of that size", 422)
    available = [int(f) for f in clip.frame]
    if settings.frames is None:
        frames = available
    else:
        missing = sorted(set(settings.frames) - set(available))
        if missing:
            raise InputError(f"frames {missing[:5]} are not in the animation (it holds {min(available)}.."
                             f"{max(available)}, {len(available)} frames)", "ask for frames the animation has", 422)
        frames = settings.frames
    checkpoint_dict = checkpoint.to_dict()
    digest = request_hash(reference, animation, settings, checkpoint_dict, frames)
    notes = [f"animation: {w}" for w in warnings]
    return CheckedInputs(reference=reference, reference_ext=reference_ext, animation=animation, settings=settings,
                         frames=frames, request_hash=digest, checkpoint=checkpoint_dict, notes=notes)


def read_local(path: str, what: str) -> bytes:
    """A client-named local file (client and server share a disk); the server only copies it."""
    if not isinstance(path, str) or not path:
        raise InputError(f"{what}_path must be a file path", "give an absolute path the server can read", 422)
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        raise InputError(f"{what}_path {path!r} is relative", "give an absolute path: the server's working "
                         "folder is not the client's", 422)
    if not os.path.isfile(path):
        raise InputError(f"{what} file not found: {path}", "check the path; upload the file instead when the "
                         "server runs on another machine", 422)
    if os.path.getsize(path) > MAX_INPUT_BYTES:
        raise InputError(f"{what} file {path} is larger than {MAX_INPUT_BYTES >> 20} MiB", "send a smaller file", 413)
    with open(path, "rb") as handle:
        return handle.read()


def public_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The fields a client polls, without the server's paths."""
    keys = ("id", "status", "phase", "progress", "frames_done", "frames_total", "frames", "eta_s", "error",
            "advice", "settings", "steps", "resolution", "precision", "notes", "created", "updated", "started", "finished", "oom_retries",
            "frames_per_batch_used")
    view = {key: manifest.get(key) for key in keys if key in manifest}
    view["checkpoint"] = {key: manifest.get("checkpoint", {}).get(key) for key in ("name", "source", "flame_asset")}
    return view


class JobService:
    """Submit, inspect, cancel; owns the store, the checkpoints, the model cache and the worker."""

    def __init__(self, store: JobStore, registry: CheckpointRegistry, cache: ModelCache, worker: Worker) -> None:
        self.store, self.registry, self.cache, self.worker = store, registry, cache, worker

    def resume_unfinished(self) -> list[str]:
        """Requeue what a crash or restart interrupted (only missing frames will render)."""
        ids = []
        for folder in self.store.unfinished():
            manifest = folder.requeue()
            self.worker.enqueue(manifest["id"])
            ids.append(manifest["id"])
        return ids

    def submit(self, reference: bytes, animation: bytes,
               settings: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """Returns ``(job view, created)``; an identical job is reused and only missing frames render."""
        checked = check_request(reference, animation, settings, self.registry, self.cache)
        folder, manifest, created = self.store.create_or_reuse(checked)
        if created:
            self.worker.enqueue(manifest["id"])
        elif not self.worker.is_active(manifest["id"]) and (manifest["status"] != "done" or folder.missing_frames()):
            folder.requeue()  # cancelled, failed, or a frame was deleted: render what is missing
            self.worker.enqueue(manifest["id"])
        return public_view(folder.read()), created

    def list_jobs(self) -> list[dict[str, Any]]:
        return [public_view(manifest) for _, manifest in self.store.jobs()]

    def status(self, job_id: str) -> dict[str, Any]:
        return public_view(self.store.get(job_id).read())

    def image_path(self, job_id: str, frame: int, control: bool = False) -> str:
        folder = self.store.get(job_id)
        manifest = folder.read()
        if frame not in manifest["frames"]:
            raise InputError(f"frame {frame} is not part of job {job_id}",
                             f"the job renders frames {manifest['frames'][0]}..{manifest['frames'][-1]}", 404)
        path = folder.control_path(frame) if control else folder.frame_path(frame)
        if not os.path.isfile(path):
            raise InputError(f"frame {frame} of job {job_id} is not rendered yet",
                             f"the job is {manifest['status']}; poll GET /v1/jobs/{job_id} for frames_done", 404)
        return path

    def cancel(self, job_id: str) -> dict[str, Any]:
        folder = self.store.get(job_id)
        outcome = self.worker.cancel(job_id)
        view = public_view(folder.read())
        view["cancel"] = outcome
        return view

    def release(self) -> dict[str, Any]:
        """Free the model and GPU memory now, or right after the running job."""
        released = self.cache.release()
        pending = not released and self.worker.current is not None
        return {"released": released, "pending": pending,
                "detail": "frees GPU memory after the running job" if pending else
                ("model released" if released else "no model was loaded")}

    def health(self) -> dict[str, Any]:
        asset = self.cache.asset()
        return {"protocol_version": PROTOCOL_VERSION, "flamediff_version": __version__,
                "device": self.cache.device, "loaded_model": self.cache.loaded_name,
                "flame_asset": {"name": asset.name, "hash": asset.content_hash},
                "queue_length": self.worker.queue_length, "running_job": self.worker.current}

    def models(self) -> list[dict[str, Any]]:
        asset_hash = self.cache.asset().content_hash
        out = []
        for info in self.registry.list(refresh=True):
            entry = {key: value for key, value in info.to_dict().items() if key != "fingerprint"}
            entry["matches_flame_asset"] = not info.flame_asset.get("hash") or info.flame_asset["hash"] == asset_hash
            out.append(entry)
        return out


def build_service(jobs_dir: str, models_dir: str, device: str = "cpu", flame_asset: str | None = None,
                  shipped_dir: str | None = None, render_in: str = "thread", precision: str = "auto") -> JobService:
    """A service with its store, checkpoint registry, renderer and (not yet started) worker.

    ``render_in="process"`` renders in a child process (what ``serve`` uses, see
    :mod:`backend.server.render_process`); ``"thread"`` renders in the worker thread (tests).
    """
    from backend.server.checkpoints import SHIPPED_DIR
    from backend.server.render_process import ProcessRenderer

    store = JobStore(jobs_dir)
    renderer = ProcessRenderer if render_in == "process" else ModelCache
    cache = renderer(device, flame_asset, precision)
    registry = CheckpointRegistry(models_dir, shipped_dir or SHIPPED_DIR)
    return JobService(store, registry, cache, Worker(store, cache))
