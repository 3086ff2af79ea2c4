"""The job service: checks a request against the checkpoint and the FLAME asset, turns it
into a job folder and queues it. HTTP-free, so ``app.py`` stays a thin adapter and the CLI's
``render`` runs the very same checks."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from flamediff import __version__
from flamediff.formats.protocol import PROTOCOL_VERSION
from flamediff.server.checkpoints import CheckpointInfo, CheckpointRegistry
from flamediff.server.failures import unsaved_failure
from flamediff.server.inputs import (CheckedInputs, InputError, InputLimits, convert_tracker_upload, parse_settings,
                                   read_animation, read_reference_image)
from flamediff.server.jobs import JobFolder, JobStore, render_hash, request_hash
from flamediff.server.security import AllowedRoots
from flamediff.server.renderers import InProcessRenderer, Renderer
from flamediff.server.worker import Worker

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from flamediff.formats.flame_asset import FlameAsset

#: Largest file read from a local path (uploads are limited by the HTTP body limit).
MAX_INPUT_BYTES = 256 * 1024 * 1024


def check_request(reference: bytes, animation: bytes, settings_data: dict[str, Any] | None,
                  registry: CheckpointRegistry, renderer: Renderer, limits: InputLimits = InputLimits()) -> CheckedInputs:
    """Every check a job needs before it is accepted; raises :class:`InputError`."""
    settings = parse_settings(settings_data, limits.max_frames_per_job)
    decoded = read_reference_image(reference)
    reference_ext = decoded.extension
    converted = convert_tracker_upload(animation, limits.animation, limits.max_folder_frames)
    tracker_notes: list[str] = []
    if converted is not None:   # the job stores (and its worker reads) the converted flamediff file
        animation, tracker_notes = converted
    clip, warnings = read_animation(animation, limits)
    warnings = tracker_notes + warnings
    asset = renderer.asset()
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
        if len(frames) > limits.max_frames_per_job:
            raise InputError(f"the animation has {len(frames)} frames, more than {limits.max_frames_per_job} per job",
                             "render it in parts (settings.frames), or raise serve's --max-frames-per-job", 413)
    else:
        missing = sorted(set(settings.frames) - set(available))
        if missing:
            raise InputError(f"frames {missing[:5]} are not in the animation (it holds {min(available)}.."
                             f"{max(available)}, {len(available)} frames)", "ask for frames the animation has", 422)
        frames = settings.frames
    fitted = fit_reference_shape(reference, reference_ext, asset) if (
        settings.shape_from == "reference" and settings.reference_shape is None) else None
    if fitted is not None:
        settings.reference_shape = fitted   # part of the job's identity, like a shape the client sends
    checkpoint_dict = checkpoint.to_dict()
    digest = request_hash(reference, animation, settings, checkpoint_dict, frames)
    notes = ([f"animation: {w}" for w in warnings] + [f"reference: {note}" for note in decoded.notes]
             + reference_notes(decoded.pixels, checkpoint))
    if fitted is not None:
        notes.append("reference: the identity shape was fitted to the reference photo (as flamediff track does)")
    return CheckedInputs(reference=reference, reference_ext=reference_ext, animation=animation, settings=settings,
                         frames=frames, request_hash=digest, checkpoint=checkpoint_dict, notes=notes,
                         render_hash=render_hash(reference, animation, settings, checkpoint_dict))


#: A reference whose long side is more than this times its short side loses much of itself to
#: the centre-square crop; one under MIN_REFERENCE_SIDE pixels is upsampled into mush.
MAX_REFERENCE_ASPECT = 1.3
MIN_REFERENCE_SIDE = 64
#: A reference looks like a procedural checkpoint's training data when its texture
#: (:func:`reference_texture`) is under this: flamediff's smooth-shaded procedural renders measure
#: below it, photos above (docs/TROUBLESHOOTING.md gives the ranges tests/test_reference_domain.py measures).
PROCEDURAL_TEXTURE_LIMIT = 0.006
DOMAIN_NOTES = {"procedural": "checkpoint {name!r} was trained only on flamediff's procedural heads: a photo of a real "
                              "person is outside what it learned, and the frames will look like a procedural head; "
                              "train on real footage (flamediff dataset import) for real faces"}


def fit_reference_shape(reference: bytes, extension: str, asset: "FlameAsset") -> list[float]:
    """``shape_from='reference'`` without ``reference_shape``: the FLAME shape of the face in the
    reference photo, fitted by the tracker (MediaPipe landmarks + optimisation; the ``tracking``
    extra). The fit is deterministic, so the same request gives the same job."""
    from flamediff.tracking.landmarks import TrackingError
    from flamediff.tracking.track import track_photo

    try:
        fit = track_photo(reference, extension, asset)
    except TrackingError as exc:
        raise InputError(f"shape_from 'reference' without reference_shape fits the reference photo's shape, "
                         f"but: {exc}",
                         "send reference_shape (the reference person's FLAME shape coefficients, e.g. from "
                         "flamediff track), or a reference photo with one clear, near-frontal face", 422) from None
    return [float(v) for v in fit.shape]


def reference_texture(pixels: "NDArray[np.uint8]", resolution: int = 128) -> float:
    """The median absolute Laplacian of the reference's grey centre square at ``resolution`` px
    (what the model sees): near 0 for smooth-shaded renders, larger for a photo's skin, hair and
    sensor noise; the out-of-domain test of procedural checkpoints."""
    from PIL import Image

    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(np.ascontiguousarray(pixels[top:top + side, left:left + side]))
    grey = np.asarray(square.resize((resolution, resolution), Image.Resampling.BILINEAR), np.float64).mean(axis=2) / 255
    laplacian = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    return float(np.median(np.abs(laplacian)))


def reference_notes(pixels: "NDArray[np.uint8]", checkpoint: CheckpointInfo) -> list[str]:
    """Warnings (not errors) about a reference for ``checkpoint``: each only when it applies."""
    height, width = pixels.shape[:2]
    notes = []
    if max(height, width) > MAX_REFERENCE_ASPECT * min(height, width):
        side = min(height, width)
        notes.append(f"reference: {width}x{height} is far from square; the model sees only its centre "
                     f"{side}x{side} square: crop the photo around the face for better frames")
    if min(height, width) < MIN_REFERENCE_SIDE:
        notes.append(f"reference: only {min(height, width)} px on its short side; the model upsamples it to "
                     f"{checkpoint.resolution} px and loses detail: use a larger photo")
    if checkpoint.training_domain == "procedural" and reference_texture(pixels) > PROCEDURAL_TEXTURE_LIMIT:
        notes.append("reference: " + DOMAIN_NOTES["procedural"].format(name=checkpoint.name))
    return notes


def read_local(path: Any, what: str, roots: AllowedRoots) -> bytes:
    """A client-named local file (client and server share a disk), only under ``roots``; the
    server only copies it. Outside them the answer is the same whether or not the file exists."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise InputError(f"{what}_path must be a file path", "give an absolute path the server can read", 422)
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        raise InputError(f"{what}_path {path[:200]!r} is relative", "give an absolute path: the server's working "
                         "folder is not the client's", 422)
    if not roots.contains(path):
        raise InputError(f"{what}_path is outside the folders this server reads", roots.refusal(what), 403)
    real = os.path.realpath(path)  # opened resolved, so a symlink swapped in later cannot leave the roots
    if not os.path.isfile(real):
        raise InputError(f"{what} file not found: {path}", "check the path; upload the file instead when the "
                         "server runs on another machine", 422)
    try:
        with open(real, "rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)  # sizes of special files (/proc) are not to be trusted
    except OSError as exc:
        raise InputError(f"cannot read the {what} file {path} ({exc.strerror or exc.__class__.__name__})",
                         "check its permissions, or upload the file", 422) from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{what} file {path} is larger than {MAX_INPUT_BYTES >> 20} MiB", "send a smaller file", 413)
    return data


#: What a job view adds for the frames' recipes (:func:`~flamediff.formats.provenance.frame_recipe`).
PROVENANCE_KEYS = ("guidance", "checkpoint_sha256", "reference_sha256", "animation_sha256", "flamediff_version")


def public_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The fields a client polls, without the server's paths."""
    keys = ("id", "status", "phase", "progress", "frames_done", "frames_total", "frames", "eta_s", "error",
            "advice", "settings", "steps", "resolution", "precision", "notes", "created", "updated", "started", "finished", "oom_retries",
            "frames_per_batch_used", *PROVENANCE_KEYS)
    view = {key: manifest.get(key) for key in keys if key in manifest}
    view["checkpoint"] = {key: manifest.get("checkpoint", {}).get(key) for key in ("name", "source", "flame_asset")}
    return view


class JobService:
    """Submit, inspect, cancel; owns the store, the checkpoints, the renderer and the worker."""

    def __init__(self, store: JobStore, registry: CheckpointRegistry, renderer: Renderer, worker: Worker,
                 limits: InputLimits = InputLimits(), roots: AllowedRoots | None = None) -> None:
        self.store, self.registry, self.renderer, self.worker = store, registry, renderer, worker
        self.limits = limits
        self.roots = roots if roots is not None else AllowedRoots()

    def read_local(self, path: Any, what: str) -> bytes:
        """A file a client names by path, under the allowed roots only."""
        return read_local(path, what, self.roots)

    def resume_unfinished(self) -> list[str]:
        """Requeue what a crash or restart interrupted (only missing frames will render); a job
        whose cancel was acknowledged stays cancelled."""
        ids = []
        for folder in self.store.unfinished():
            try:
                if folder.cancel_requested():
                    folder.update(status="cancelled", phase="cancelled", eta_s=None,
                                  advice="submit the same job again to render the rest")
                    continue
                manifest = folder.requeue()
            except OSError as exc:  # a full disk fails that job, never the server's start
                folder.fail_unsaved(*unsaved_failure(folder.path, exc))
                continue
            self.worker.enqueue(manifest["id"])
            ids.append(manifest["id"])
        return ids

    def submit(self, reference: bytes, animation: bytes,
               settings: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """Returns ``(job view, created)``; an identical job is reused and only missing frames render."""
        checked = check_request(reference, animation, settings, self.registry, self.renderer, self.limits)
        folder, manifest, created = self.store.create_or_reuse(checked)
        if created:
            self.worker.enqueue(manifest["id"])
        elif folder.cancel_requested() and self.worker.is_active(manifest["id"]):
            self.worker.enqueue(manifest["id"])   # cancelled but still winding down: runs again once it stops
        elif not self.worker.is_active(manifest["id"]) and (manifest["status"] != "done" or folder.missing_frames()):
            folder.requeue()  # cancelled, failed, or a frame was deleted: render what is missing
            self.worker.enqueue(manifest["id"])
        return self._view(folder), created

    def _view(self, folder: JobFolder) -> dict[str, Any]:
        """What a client sees; a job submitted again while its cancelled render winds down is
        queued (whatever the winding-down render writes meanwhile), never 'cancelled'."""
        restarting = self.worker.restarting(os.path.basename(folder.path))  # first: once False, the manifest is queued
        view = public_view(folder.read_or_failed())
        if restarting:
            view.update(status="queued", phase="waiting for the cancelled render to stop", error=None,
                        advice=None, eta_s=None)
        return view

    def list_jobs(self) -> list[dict[str, Any]]:
        return [public_view(manifest) for _, manifest in self.store.jobs()]

    def status(self, job_id: str) -> dict[str, Any]:
        return self._view(self.store.get(job_id))

    def image_path(self, job_id: str, frame: int, control: bool = False) -> str:
        folder = self.store.get(job_id)
        manifest = folder.read_or_failed()
        if frame not in manifest["frames"]:
            span = f"frames {manifest['frames'][0]}..{manifest['frames'][-1]}" if manifest["frames"] else "no frames"
            raise InputError(f"frame {frame} is not part of job {job_id}", f"the job renders {span}", 404)
        path = folder.control_path(frame) if control else folder.frame_path(frame)
        if not os.path.isfile(path):
            raise InputError(f"frame {frame} of job {job_id} is not rendered yet",
                             f"the job is {manifest['status']}; poll GET /v1/jobs/{job_id} for frames_done", 404)
        return path

    def cancel(self, job_id: str) -> dict[str, Any]:
        folder = self.store.get(job_id)
        outcome = self.worker.cancel(job_id)
        view = public_view(folder.read_or_failed())
        view["cancel"] = outcome
        return view

    def release(self) -> dict[str, Any]:
        """Free the model and GPU memory now, or right after the running job."""
        released = self.renderer.release()
        pending = not released and self.worker.current is not None
        return {"released": released, "pending": pending,
                "detail": "frees GPU memory after the running job" if pending else
                ("model released" if released else "no model was loaded")}

    def health(self) -> dict[str, Any]:
        asset = self.renderer.asset()
        return {"protocol_version": PROTOCOL_VERSION, "flamediff_version": __version__,
                "device": self.renderer.device, "loaded_model": self.renderer.loaded_name,
                "flame_asset": {"name": asset.name, "hash": asset.content_hash},
                "queue_length": self.worker.queue_length, "running_job": self.worker.current}

    def models(self, show_paths: bool = True) -> list[dict[str, Any]]:
        """The checkpoints; server paths only when ``show_paths`` (a client on this machine)."""
        asset_hash = self.renderer.asset().content_hash
        hidden = {"fingerprint"} | (set() if show_paths else {"path"})
        out = []
        for info in self.registry.list(refresh=True):
            entry = {key: value for key, value in info.to_dict().items() if key not in hidden}
            entry["matches_flame_asset"] = not info.flame_asset.get("hash") or info.flame_asset["hash"] == asset_hash
            if info.training_domain in DOMAIN_NOTES:
                entry["domain_note"] = DOMAIN_NOTES[info.training_domain].format(name=info.name)
            out.append(entry)
        return out


def build_service(jobs_dir: str, models_dir: str, device: str = "cpu", flame_asset: str | None = None,
                  shipped_dir: str | None = None, render_in: str = "thread", precision: str = "auto",
                  limits: InputLimits = InputLimits(), allow_paths: Iterable[str] = ()) -> JobService:
    """A service with its store, checkpoint registry, renderer and (not yet started) worker.
    Clients may name files (and checkpoint folders) by path only under ``allow_paths``.

    ``render_in="process"`` renders in a child process (what ``serve`` uses, see
    :mod:`flamediff.server.render_process`); ``"thread"`` renders in the worker thread (tests).
    """
    from flamediff.assets import SHIPPED_DIR
    from flamediff.server.render_process import ChildProcessRenderer

    store = JobStore(jobs_dir)
    kind = ChildProcessRenderer if render_in == "process" else InProcessRenderer
    renderer: Renderer = kind(device, flame_asset, precision)
    roots = AllowedRoots(allow_paths)
    registry = CheckpointRegistry(models_dir, shipped_dir or SHIPPED_DIR, roots=roots)
    return JobService(store, registry, renderer, Worker(store, renderer), limits, roots)
