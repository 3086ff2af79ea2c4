"""The persistent job store: one folder per job, a manifest written atomically, frames
written under a temp name and renamed.

A frame counts as rendered exactly when its final ``frame_%04d.png`` exists; since that name
only ever appears through ``os.replace`` of a complete file, a crash (even SIGKILL) leaves
either a finished frame or none, and resuming renders only the missing ones. The job id is
the request hash's prefix, so an identical re-submission lands in the same folder.

Layout of a job folder::

    manifest.json             status, progress, settings, error + advice (atomic writes)
    inputs/reference.<ext>    the reference image as uploaded
    inputs/animation.npz      the animation file as uploaded
    frame_%04d.png            rendered frames, by Blender frame number
    control/frame_%04d.png    previews of the splatted control feature map
    .cancel                   written (synced) before a cancel is acknowledged: a restart keeps it

Folders are 0700 and files 0600 (see :mod:`flamediff.server.files`). A manifest that cannot be
parsed makes its job read as failed, and an identical re-submission starts that folder over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import weakref
from typing import Any, Iterator

import numpy as np
from numpy.typing import NDArray

from flamediff import __version__
from flamediff.errors import FlamediffError
from flamediff.formats.protocol import frame_file
from flamediff.server.files import LockBusy, exclusive_lock, make_private_dir, write_atomic
from flamediff.server.inputs import CheckedInputs, InputError, JobSettings

MANIFEST = "manifest.json"
STATUSES = ("queued", "running", "done", "failed", "cancelled")
UNFINISHED = ("queued", "running")
JOB_ID = re.compile(r"[0-9a-f]{16}")  # always fullmatch: '$' would let a trailing newline through
CANCEL_MARKER = ".cancel"
#: Keys every manifest has; one without them is treated as corrupt.
MANIFEST_KEYS = ("id", "status", "frames", "frames_total", "settings", "checkpoint", "request_hash")


def request_hash(reference: bytes, animation: bytes, settings: JobSettings, checkpoint: dict[str, Any],
                 frames: list[int]) -> str:
    """SHA-256 over everything that decides the pixels: inputs, settings, checkpoint, frames."""
    return _digest(reference, animation, {"settings": settings.hashed(), "frames": frames,
                                          "checkpoint": _checkpoint_identity(checkpoint)})


def render_hash(reference: bytes, animation: bytes, settings: JobSettings, checkpoint: dict[str, Any]) -> str:
    """:func:`request_hash` without the frames: two jobs with the same render hash give a frame
    they share the same pixels, so one folder can hold both (a subset re-rendered, a range extended)."""
    identity = {key: value for key, value in settings.hashed().items() if key != "frames"}
    return _digest(reference, animation, {"settings": identity, "checkpoint": _checkpoint_identity(checkpoint)})


def _checkpoint_identity(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {key: checkpoint.get(key) for key in ("path", "fingerprint", "flame_asset")}


def _digest(reference: bytes, animation: bytes, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for part in (reference, animation):
        digest.update(hashlib.sha256(part).digest())
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()


def encode_png(image: NDArray[np.uint8], text: dict[str, str] | None = None) -> bytes:
    """PNG bytes of ``image``, with ``text`` as its text chunks (a frame's recipe)."""
    import io

    from PIL import Image, PngImagePlugin

    chunks = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        chunks.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1, pnginfo=chunks)
    return buffer.getvalue()


class JobBusy(FlamediffError):
    """Another process is rendering this job folder right now."""


class CorruptManifest(FlamediffError):
    """A manifest that is not the JSON object the store wrote (a disk fault, a hand edit)."""

    def __init__(self, message: str, advice: str = "submit the same job again: it starts over in this folder") -> None:
        super().__init__(message)
        self.advice = advice


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The manifest fields the server reads, and the test each value must pass (a hand edit or an
#: old version's manifest of valid JSON but other types reads as a failed job, never a 500).
MANIFEST_TYPES: dict[str, Any] = {
    "id": lambda v: isinstance(v, str) and JOB_ID.fullmatch(v) is not None,
    "status": lambda v: v in STATUSES,
    "frames": lambda v: isinstance(v, list) and all(_is_int(f) for f in v),
    "frames_total": _is_int,
    "checkpoint": lambda v: isinstance(v, dict),
    "request_hash": lambda v: isinstance(v, str),
    "frames_done": lambda v: v is None or _is_int(v),
    "progress": lambda v: v is None or _is_number(v),
    "created": lambda v: v is None or _is_number(v),
    "notes": lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
    "error": lambda v: v is None or isinstance(v, str),
    "advice": lambda v: v is None or isinstance(v, str),
}


class JobFolder:
    """One job's folder; all manifest updates go through one lock (worker + HTTP threads)."""

    def __init__(self, path: str, expected_id: str | None = None,
                 failures: dict[str, tuple[str, str]] | None = None) -> None:
        self.path = os.path.abspath(path)
        self.expected_id = expected_id  # a store's folders are named by their job id
        self._failures = failures if failures is not None else {}
        self._lock = threading.RLock()

    # -- paths -----------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, MANIFEST)

    def frame_path(self, frame: int) -> str:
        return os.path.join(self.path, frame_file(frame))

    def control_path(self, frame: int) -> str:
        return os.path.join(self.path, "control", frame_file(frame))

    def input_path(self, name: str) -> str:
        return os.path.join(self.path, "inputs", name)

    # -- manifest --------------------------------------------------------------------------------

    def exists(self) -> bool:
        return os.path.isfile(self.manifest_path)

    def read(self) -> dict[str, Any]:
        """The manifest; raises :class:`CorruptManifest` when it cannot be parsed or its settings
        are not valid :class:`JobSettings` (a hand edit, or a version that cannot read them)."""
        try:
            with open(self.manifest_path, "rb") as handle:
                manifest = json.loads(handle.read())
        except (ValueError, RecursionError) as exc:
            raise CorruptManifest(f"the manifest of job {os.path.basename(self.path)} is corrupt ({exc})") from None
        name = os.path.basename(self.path)
        if not isinstance(manifest, dict) or any(key not in manifest for key in MANIFEST_KEYS):
            raise CorruptManifest(f"the manifest of job {name} lacks its fields")
        wrong = [key for key, valid in MANIFEST_TYPES.items() if key in manifest and not valid(manifest[key])]
        if wrong:
            raise CorruptManifest(f"the manifest of job {name} holds values of the wrong type ({', '.join(wrong)})")
        if self.expected_id is not None and manifest["id"] != self.expected_id:
            raise CorruptManifest(f"the manifest in folder {name} is of job {manifest['id']}",
                                  f"the folder was renamed or copied: rename it back to {manifest['id']}, or submit "
                                  "the job again (it starts over in this folder)")
        self._settings(manifest)
        return manifest

    def settings(self) -> JobSettings:
        """The job's settings, read back as the type they were stored from."""
        return self._settings(self.read())

    def _settings(self, manifest: dict[str, Any]) -> JobSettings:
        try:
            return JobSettings.from_manifest(manifest["settings"])
        except ValueError as exc:
            raise CorruptManifest(f"the manifest of job {os.path.basename(self.path)} holds settings this "
                                  f"flamediff cannot read ({exc})") from None

    def read_or_failed(self) -> dict[str, Any]:
        """The manifest, or for a corrupt one a failed job saying how to start it over; a job whose
        failure could not be written (a full disk) reads as failed from :meth:`fail_unsaved`."""
        try:
            manifest = self.read()
        except CorruptManifest as exc:
            return {"id": os.path.basename(self.path), "status": "failed", "phase": "failed", "progress": 0.0,
                    "frames": [], "frames_total": 0, "frames_done": 0, "eta_s": None, "error": str(exc),
                    "advice": exc.advice, "notes": []}
        unsaved = self._failures.get(os.path.basename(self.path))
        if unsaved is not None and manifest["status"] in UNFINISHED:
            manifest = {**manifest, "status": "failed", "phase": "failed", "eta_s": None, "error": unsaved[0],
                        "advice": unsaved[1]}
        return manifest

    def fail_unsaved(self, error: str, advice: str) -> None:
        """Mark the job failed in this server's memory when its manifest cannot be written."""
        self._failures[os.path.basename(self.path)] = (error, advice)

    def clear_unsaved(self) -> None:
        self._failures.pop(os.path.basename(self.path), None)

    def update(self, **fields: Any) -> dict[str, Any]:
        """Read-modify-write the manifest atomically; returns the new manifest."""
        with self._lock:
            manifest = self.read()
            manifest.update(fields, updated=time.time())
            write_atomic(self.manifest_path, json.dumps(manifest, indent=2).encode(), sync=True)
            return manifest

    @contextlib.contextmanager
    def render_lock(self) -> Iterator[None]:
        """An exclusive lock on the folder while rendering; the system drops it when the holder
        dies (even by SIGKILL), so a crashed render never blocks its resumption."""
        try:
            with exclusive_lock(os.path.join(self.path, ".render.lock")):
                yield
        except LockBusy:
            raise JobBusy(f"{self.path} is being rendered by another process; wait for it, or stop it "
                          "(its frames are kept) and run again") from None

    # -- cancellation ----------------------------------------------------------------------------

    def request_cancel(self) -> None:
        """Persist a cancel (synced) so a crash right after acknowledging it cannot resume the job."""
        write_atomic(os.path.join(self.path, CANCEL_MARKER), b"", sync=True)

    def cancel_requested(self) -> bool:
        return os.path.exists(os.path.join(self.path, CANCEL_MARKER))

    # -- frames ----------------------------------------------------------------------------------

    def done_frames(self) -> list[int]:
        wanted = self.read()["frames"]
        return [frame for frame in wanted if os.path.isfile(self.frame_path(frame))]

    def missing_frames(self) -> list[int]:
        wanted = self.read()["frames"]
        return [frame for frame in wanted if not os.path.isfile(self.frame_path(frame))]

    def write_frame(self, frame: int, image: NDArray[np.uint8], control: NDArray[np.uint8] | None = None,
                    recipe: dict[str, str] | None = None) -> None:
        """Control preview first, then the frame (with its ``recipe`` as PNG text chunks): a frame
        that exists has its preview."""
        if control is not None:
            make_private_dir(os.path.dirname(self.control_path(frame)))
            write_atomic(self.control_path(frame), encode_png(control))
        write_atomic(self.frame_path(frame), encode_png(image, recipe))

    def clean_temporaries(self) -> None:
        """Remove temp files a killed writer left behind."""
        for folder in (self.path, os.path.join(self.path, "control"), os.path.join(self.path, "inputs")):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if name.startswith(".") and ".tmp-" in name:
                    try:
                        os.remove(os.path.join(folder, name))
                    except OSError:
                        pass

    # -- creation --------------------------------------------------------------------------------

    def create_or_reuse(self, checked: CheckedInputs) -> tuple[dict[str, Any], bool]:
        """Write a new job (inputs, then the manifest last), or reuse this folder's job when it
        holds the same request. Returns ``(manifest, created)``. A different request in an
        existing folder is refused rather than mixed."""
        with self._lock:
            if self.exists():
                try:
                    manifest = self.read()
                except CorruptManifest:
                    self._start_over()
                else:
                    if manifest.get("request_hash") == checked.request_hash:
                        return manifest, False
                    return self._extend(manifest, checked), False
            make_private_dir(self.path)
            make_private_dir(self.input_path(""))
            reference_name = f"reference.{checked.reference_ext}"
            write_atomic(self.input_path(reference_name), checked.reference, sync=True)
            write_atomic(self.input_path("animation.npz"), checked.animation, sync=True)
            now = time.time()
            manifest = {
                "id": checked.request_hash[:16], "status": "queued", "phase": "queued", "progress": 0.0,
                "frames": checked.frames, "frames_total": len(checked.frames), "frames_done": 0,
                "eta_s": None, "error": None, "advice": None,
                "settings": checked.settings.to_dict(), "checkpoint": checked.checkpoint,
                "request_hash": checked.request_hash, "render_hash": checked.render_hash,
                "reference": reference_name, "animation": "animation.npz",
                "reference_sha256": hashlib.sha256(checked.reference).hexdigest(),
                "animation_sha256": hashlib.sha256(checked.animation).hexdigest(), "flamediff_version": __version__,
                "notes": list(checked.notes), "created": now, "updated": now, "started": None, "finished": None,
            }
            write_atomic(self.manifest_path, json.dumps(manifest, indent=2).encode(), sync=True)
            return manifest, True

    def _extend(self, manifest: dict[str, Any], checked: CheckedInputs) -> dict[str, Any]:
        """The same render with other frames: the folder's job grows to the union of both frame
        lists (frames already on disk are kept and not rendered again). Anything else that
        differs is another job, refused rather than mixed."""
        if manifest.get("render_hash") != checked.render_hash:
            raise InputError(f"{self.path} already holds a different job (other inputs or settings)",
                             "use another output folder, or delete this one to start over", 409)
        if manifest["status"] == "running":
            raise InputError(f"{self.path} is being rendered right now",
                             "wait for that render to finish (or cancel it), then ask for these frames again", 409)
        frames = sorted(set(manifest["frames"]) | set(checked.frames))
        return self.update(frames=frames, frames_total=len(frames))

    def _start_over(self) -> None:
        """Remove what a job with a corrupt manifest left: its frames cannot be trusted."""
        os.remove(self.manifest_path)
        for name in os.listdir(self.path):
            target = os.path.join(self.path, name)
            if name in ("control", "inputs"):
                shutil.rmtree(target, ignore_errors=True)
            elif name.startswith("frame_") or name == CANCEL_MARKER:
                os.remove(target)

    def requeue(self) -> dict[str, Any]:
        """Mark the job queued again (resume after a restart, a cancel, a failure or a deleted frame)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.path, CANCEL_MARKER))
        done = len(self.done_frames())
        manifest = self.read()
        total = manifest["frames_total"]
        return self.update(status="queued", phase="queued", error=None, advice=None, eta_s=None,
                           frames_done=done, progress=done / total if total else 1.0)


class JobStore:
    """All jobs under one root folder, addressed by id."""

    def __init__(self, root: str) -> None:
        self.root = make_private_dir(os.path.abspath(root))
        # One JobFolder (and so one manifest lock) per job while anyone uses it; weak, so ids
        # merely queried are not kept forever.
        self._folders: weakref.WeakValueDictionary[str, JobFolder] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.unsaved_failures: dict[str, tuple[str, str]] = {}  # job id -> (error, advice), see fail_unsaved

    def folder(self, job_id: str) -> JobFolder:
        """The folder of ``job_id`` (which may not exist yet); ids are checked so no request
        can address a path outside the store."""
        if not JOB_ID.fullmatch(job_id or ""):
            raise InputError(f"{job_id[:40]!r} is not a job id", "job ids are 16 hex digits, as POST /v1/jobs returns",
                             404)
        with self._lock:
            folder = self._folders.get(job_id)
            if folder is None:
                folder = self._folders[job_id] = JobFolder(os.path.join(self.root, job_id), job_id,
                                                           self.unsaved_failures)
            return folder

    def get(self, job_id: str) -> JobFolder:
        folder = self.folder(job_id)
        if not folder.exists():
            raise InputError(f"no job {job_id}", "submit it with POST /v1/jobs", 404)
        return folder

    def create_or_reuse(self, checked: CheckedInputs) -> tuple[JobFolder, dict[str, Any], bool]:
        folder = self.folder(checked.request_hash[:16])
        manifest, created = folder.create_or_reuse(checked)
        return folder, manifest, created

    def jobs(self) -> Iterator[tuple[JobFolder, dict[str, Any]]]:
        """Every job with a manifest (a corrupt one as failed), oldest first."""
        found = []
        for name in os.listdir(self.root):
            if JOB_ID.fullmatch(name):
                folder = self.folder(name)
                try:
                    found.append((folder, folder.read_or_failed()))
                except OSError:
                    continue  # a folder whose manifest was never written: an interrupted submit
        yield from sorted(found, key=lambda item: item[1].get("created") or 0)

    def unfinished(self) -> list[JobFolder]:
        """Jobs a crash or restart interrupted, oldest first, with their temp files removed."""
        interrupted = []
        for folder, manifest in self.jobs():
            if manifest.get("status") in UNFINISHED:
                folder.clean_temporaries()
                interrupted.append(folder)
        return interrupted
