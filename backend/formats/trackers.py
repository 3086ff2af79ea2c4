"""Face-tracker output -> :class:`AnimationClip`, for the add-on, ``flamediff convert`` and ``render``.

Public FLAME trackers each write their own layout (key names, packed or 6D rotations, one file
per frame, cameras in side files). This module recognises a tool from what its files hold, maps
what FLAME can represent and reports, by name, what it mapped and what it dropped. It is numpy +
stdlib only because it also runs inside Blender: torch-pickled files (``.pth``, ``.frame``) and
``.pkl`` files are read by a restricted unpickler that builds tensors from the archive's raw
storages itself and refuses every global that is not a tensor, array, dict, list or number, so
nothing in a file is ever executed.

Layouts (learnt from each tool's writer code) are summarised in :data:`TOOLS` and the README.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .animation import (
    MAX_EXPRESSION,
    MAX_SHAPE,
    POSE_FIELDS,
    AnimationClip,
    AnimationFormatError,
    AnimationTooLarge,
    AnimationWarning,
    ReadLimits,
    clip_from_arrays,
    declared_npz_bytes,
    load_animation,
    read_npz,
)
from .conventions import axis_angle_to_quaternion, intrinsics_from_fov, look_at_opencv, quaternion_to_axis_angle
from .rotations import (
    RotationError,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotation_6d_to_matrix,
)

#: Largest file (or archive entry) read, so a hostile upload cannot exhaust memory.
MAX_FILE_BYTES = 2 << 30
#: What one tracker ``.npz`` may declare (checked from each member's header before decompressing):
#: DECA's codedict holds ``images`` [T, 3, 224, 224], VHAP's ``dynamic_offset`` [T, V, 3].
TRACKER_LIMITS = ReadLimits(max_bytes=MAX_FILE_BYTES, max_members=256, max_rank=4)
#: Pickle opcodes one file may hold (a parameter dict of arrays needs a few hundred); counted
#: before anything is built, so a file of 1e8 tiny objects costs a scan, not gigabytes.
MAX_PICKLE_OPS = 200_000
#: Values a pickle may expand to once shared references are followed (a "billion laughs" list
#: of lists of the same list is small on disk and huge when walked).
MAX_PICKLE_VALUES = 100_000
#: Longest member name (and folder name) an upload's file may carry, as most file systems allow.
MAX_MEMBER_NAME = 255
#: Distance of the pinhole camera that stands in for a weak-perspective (orthographic) camera: a
#: portrait distance (the default camera's), with the focal length that keeps the framing of the
#: face's plane exactly (a 10 m camera would need a 1,300 mm lens for the same framing).
WEAK_PERSPECTIVE_DISTANCE = 0.65
#: The crop DECA, EMOCA and SMIRK run on; their weak-perspective ``cam`` maps to it.
WEAK_PERSPECTIVE_IMAGE = 224
#: ``flamediff render``'s camera for files without one (the demo's portrait framing).
DEFAULT_CAMERA: dict[str, Any] = {"eye": (0.0, 0.0, 0.65), "target": (0.0, -0.005, 0.0), "fov_y_degrees": 26.0,
                                  "size": 512}

#: tool id -> (name, FLAME version its files imply, layout, what is imported, what is dropped)
TOOLS: dict[str, tuple[str, str | None, str, str, str]] = {
    "vhap": ("VHAP tracker", "FLAME 2023", "tracked_flame_params_<epoch>.npz",
             "rotation, translation, neck, jaw, eyes_pose, shape, expr; timestep_id as frame numbers; "
             "focal_length + image_size as the monocular camera",
             "static_offset, dynamic_offset, tex, tex_extra, lights"),
    "vhap-export": ("VHAP export (GaussianAvatars / NeRSemble layout)", "FLAME 2023",
                    "transforms.json + flame_param/00000.npz ...",
                    "as VHAP, one file per timestep; the camera of one view from transforms.json",
                    "static_offset, dynamic_offset, the other views, images and masks"),
    "gaussian-avatars": ("GaussianAvatars", "FLAME 2023", "flame_param.npz (beside point_cloud.ply)",
                         "rotation, translation, neck, jaw, eyes_pose, shape, expr",
                         "static_offset, dynamic_offset"),
    "smirk": ("SMIRK", "FLAME 2020", "the encoder's output dict (.npz / .pkl / .pth, one or per frame)",
              "pose_params, jaw_params, expression_params, shape_params, eye/neck_pose_params; cam as camera",
              "eyelid_params"),
    "deca": ("DECA / SPECTRE codedict", "FLAME 2020", "codedict (.npz / .pkl / .pth)",
             "shape, exp, pose (global + jaw); cam as camera", "tex, light, detail, images"),
    "emoca": ("EMOCA codedict", "FLAME 2020", "codedict (.npz / .pkl / .pth)",
              "shapecode, expcode, posecode (global + jaw); cam as camera", "texcode, lightcode, detailcode"),
    "emoca-codes": ("EMOCA --save_codes", "FLAME 2020", "<frame>/shape.npy, exp.npy, pose.npy ...",
                    "shape, exp, pose (global + jaw)", "tex, detail (no camera is saved)"),
    "metrical-tracker": ("metrical-tracker / FlashAvatar", "FLAME 2020", "checkpoint/00000.frame ... (torch)",
                         "flame exp, shape, jaw (6D), eyes (6D); the opencv camera (K, R, t, img_size)",
                         "tex, sh, eyelids, the pytorch3d camera (same camera)"),
    "insta": ("INSTA", "FLAME 2020", "flame/exp/00000.txt ...", "expression only (the files hold nothing else)",
              "-"),
    "emote": ("EMOTE", "FLAME 2020", "flame_<name>.pkl", "shape, expression, jaw_pose, global_pose (25 fps)", "-"),
    "smplx": ("smplx FLAME layer keywords", None, "betas, expression, global_orient, neck_pose, jaw_pose, "
              "leye_pose, reye_pose, transl", "all", "-"),
    "flame": ("FLAME native (TF_FLAME, chumpy model)", None, "pose [15], betas [400] (300 shape + 100 expression), "
              "trans", "all", "-"),
}
SUPPORTED = ", ".join(dict.fromkeys(name for name, *_ in TOOLS.values()))
OWN_FILE = "flamediff animation file"
_EXTENSIONS = (".npz", ".npy", ".pkl", ".pickle", ".pth", ".pt", ".frame", ".tar", ".txt")
_EMOCA_CODES = ("shape.npy", "exp.npy", "pose.npy", "tex.npy", "detail.npy")
#: EMOCA's video demo: ``<frame %06d>_<detection %03d>`` per detected face.
_EMOCA_DETECTION = re.compile(r"^(\d+)_(\d{3})$")


class TrackerFormatError(AnimationFormatError):
    """A tracker file or folder that cannot be imported; the message names the problem and the fix."""


class TrackerTooLarge(TrackerFormatError):
    """A tracker file or folder past a read limit (bytes, frames, objects)."""


@dataclass
class TrackerReport:
    """What an import recognised, mapped and dropped: shown by the operator and ``convert``."""

    tool: str
    flame_version: str | None
    layout: str
    num_frames: int = 0
    mapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fps_in_file: bool = False
    camera: str | None = None

    def lines(self) -> list[str]:
        """The report as short lines for a terminal or Blender's info area."""
        version = f" ({self.flame_version})" if self.flame_version else ""
        out = [f"{self.tool}{version}: {self.layout}, {self.num_frames} frames",
               "mapped: " + ("; ".join(self.mapped) or "-"),
               "dropped: " + ("; ".join(self.dropped) or "nothing")]
        out.append(f"camera: {self.camera}" if self.camera else "camera: none in the file")
        out += self.notes
        return out


@dataclass
class TrackerImport:
    """A clip read through this layer and the report of how."""

    clip: AnimationClip
    report: TrackerReport
    #: ``[V, 3]`` per-vertex identity offsets (VHAP, GaussianAvatars) in FLAME space: no field of the
    #: animation file holds them; the add-on can add them to the rig as a shape key.
    static_offset: np.ndarray | None = None


class ReadBudget:
    """Bytes a read may still allocate, charged with each array's declared size before it is
    built (npz headers, torch storages and strides, pickled arrays), and the frames it may hold."""

    def __init__(self, limits: ReadLimits) -> None:
        self.limits, self.left = limits, limits.max_bytes

    def frames(self, count: int, what: str) -> None:
        """Refuse ``count`` frames past the limit, before any of them is read."""
        if count > self.limits.max_frames:
            raise TrackerTooLarge(f"{what} holds {count} frames, more than the limit of {self.limits.max_frames}: "
                                  "send a shorter clip")

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise TrackerTooLarge(f"{what} declares {nbytes} bytes, past the limit of {self.limits.max_bytes} "
                                     "bytes for one tracker upload; send a shorter clip or only its parameter files")
        self.left -= nbytes


_BUDGET: contextvars.ContextVar[ReadBudget | None] = contextvars.ContextVar("tracker_read_budget", default=None)


def _budget() -> ReadBudget:
    """The budget of the read under way (the unpickler's globals are plain functions, so the
    budget travels in a context variable rather than through every call)."""
    return _BUDGET.get() or ReadBudget(TRACKER_LIMITS)


@contextlib.contextmanager
def read_budget(limits: ReadLimits) -> Iterator[ReadBudget]:
    """One budget for everything read inside the block (a whole folder shares it)."""
    if _BUDGET.get() is not None:  # a nested read_tracker (a folder's newest file) keeps the outer budget
        yield _budget()
        return
    budget = ReadBudget(limits)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


_OUTSIDE = ("a file name in the upload points outside it (an absolute path, a drive or '..'): an upload may only "
            "name its own files, by paths relative to its folder")


def member_parts(name: str) -> tuple[str, ...]:
    """The parts of a file name inside an upload or a tracker folder (relative, normalised,
    inside it), or an error; the one check every reader of an upload's names uses. The message
    never depends on what the name points at, so a refusal tells nothing about the disk."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise TrackerFormatError("a file name in the upload is empty or not text: name files relative to the "
                                 "upload's folder")
    unix = name.replace("\\", "/")
    parts = [part for part in unix.split("/") if part not in ("", ".")]
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix) or ".." in parts or not parts:
        raise TrackerFormatError(_OUTSIDE)
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_MEMBER_NAME for part in parts):
        raise TrackerFormatError(f"the upload holds a file name longer than {MAX_MEMBER_NAME} bytes: shorten "
                                 "the names")
    return tuple(parts)


def member_path(root: str, name: str) -> str:
    """``root`` joined with the checked ``name`` (see :func:`member_parts`), never outside ``root``
    even through a link."""
    path = os.path.join(root, *member_parts(name))
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        raise TrackerFormatError(_OUTSIDE)
    return path


# ============================================================================ safe unpickling

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of torch's legacy (pre-1.6) format
_STORAGE_DTYPES = {"DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
                   "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1"}


class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: only its dtype is needed."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A torch storage read from the archive: a flat array (bfloat16 kept as raw uint16)."""

    def __init__(self, data: np.ndarray, bfloat16: bool) -> None:
        self.data, self.bfloat16 = data, bfloat16


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` without torch: a bounds-checked strided copy."""
    if not isinstance(storage, _Storage):
        raise TrackerFormatError("a tensor in the file has no storage record: it is corrupt")
    try:
        offset, size, stride = int(offset), tuple(int(v) for v in size), tuple(int(v) for v in stride)
    except (TypeError, ValueError):
        raise TrackerFormatError("a tensor in the file has a malformed size or stride: it is corrupt") from None
    data = storage.data
    if offset < 0 or len(size) != len(stride) or min(size + stride, default=0) < 0:
        raise TrackerFormatError("a tensor in the file has a negative size, stride or offset: it is corrupt")
    _budget().charge(math.prod(size) * data.itemsize, f"a tensor of size {list(size)[:8]}")
    if 0 in size:
        out = np.zeros(size, data.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= data.size:
            raise TrackerFormatError("a tensor reaches past the end of its storage: the file is truncated or corrupt")
        view = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                               strides=[s * data.itemsize for s in stride], writeable=False)
        out = np.array(view)
    if storage.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its data here."""
    return data


class _ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` builds; ``__setstate__`` fills in the data."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise TrackerFormatError("a pickled numpy array has a malformed state: the file is corrupt")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise TrackerFormatError("the file holds a numpy array of Python objects; only numeric arrays are read")
        if isinstance(raw, str):  # Python 2 pickles
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise TrackerFormatError("a pickled numpy array has no raw data: the file is corrupt")
        try:
            shape = tuple(int(v) for v in shape)
            count = int(np.prod(shape, dtype=np.int64))
        except (TypeError, ValueError):
            raise TrackerFormatError("a pickled numpy array has a malformed shape: the file is corrupt") from None
        _budget().charge(len(raw), "a pickled numpy array")
        if min(shape, default=0) < 0 or len(raw) != count * dtype.itemsize:
            raise TrackerFormatError("a pickled numpy array's data does not match its shape: the file is truncated "
                                     "or corrupt")
        self.array = np.frombuffer(bytes(raw), dtype).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(cls: Any, *_ignored: Any) -> _ArrayStub:
    if cls is not np.ndarray:
        raise TrackerFormatError("the file asks to rebuild an ndarray subclass; only plain arrays are read")
    return _ArrayStub()


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, str):
        raise TrackerFormatError("a pickled numpy dtype is malformed: the file is corrupt")
    dtype = np.dtype(spec, align=bool(align), copy=True)  # a copy: its __setstate__ must not touch numpy's own
    if dtype.hasobject:
        raise TrackerFormatError("the file holds a numpy array of Python objects; only numeric arrays are read")
    return dtype


def _scalar(dtype: Any, raw: Any = b"") -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, str)):
        raise TrackerFormatError("a pickled numpy scalar is malformed or not numeric")
    raw = raw.encode("latin1") if isinstance(raw, str) else raw
    if len(raw) != dtype.itemsize:
        raise TrackerFormatError("a pickled numpy scalar is truncated")
    return np.frombuffer(raw, dtype)[0].item()


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TrackerFormatError("the file asks for a text codec other than latin1")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("_codecs", "encode"): _latin1,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch.storage", name): _StorageType(name) for name in ("UntypedStorage",)},
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals in :data:`_ALLOWED`; torch storages come from ``storages``."""

    def __init__(self, handle: Any, source: str, storages: Callable[[Any], _Storage] | None) -> None:
        super().__init__(handle, encoding="latin1")
        self.source, self.storages = source, storages

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise TrackerFormatError(
                f"{self.source} asks to load '{module}.{name}', which is neither a tensor, an array, a dict, a list "
                "nor a number; flamediff never runs code from a file: save the parameters as plain arrays "
                "(np.savez) and import that")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None:
            raise TrackerFormatError(f"{self.source} refers to external storage; only self-contained pickles are read")
        return self.storages(pid)


def _plain(value: Any, depth: int = 0, seen: list[int] | None = None) -> Any:
    """Array stubs to arrays, tuples to lists, checking that only data types remain, at most
    :data:`MAX_PICKLE_VALUES` values (shared references count each time they are reached)."""
    seen = [0] if seen is None else seen
    seen[0] += 1
    if seen[0] > MAX_PICKLE_VALUES:
        raise TrackerTooLarge(f"the file expands to more than {MAX_PICKLE_VALUES} values (lists of lists?); "
                                 "only parameter dicts of arrays are read: save them with np.savez")
    if depth > 32:
        raise TrackerFormatError("the file nests containers more than 32 deep; only parameter dicts are read")
    if isinstance(value, _ArrayStub):
        if value.array is None:
            raise TrackerFormatError("a pickled numpy array has no data: the file is corrupt")
        return value.array
    if isinstance(value, dict):
        return {str(key): _plain(item, depth + 1, seen) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, depth + 1, seen) for item in value]
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.ndarray, np.generic)):
        return value
    raise TrackerFormatError(f"the file holds a {type(value).__name__}; only tensors, arrays, dicts, lists and "
                             "numbers are read")


def _read_within(handle: Any, limit: int) -> bytes:
    """At most ``limit`` bytes of ``handle``, read in chunks (``read(limit)`` would allocate ``limit``)."""
    chunks, size = [], 0
    while size < limit:
        chunk = handle.read(min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _count_ops(data: bytes, source: str) -> None:
    """Refuse a pickle of more than :data:`MAX_PICKLE_OPS` opcodes before unpickling anything."""
    for count, _ in enumerate(pickletools.genops(data), 1):
        if count > MAX_PICKLE_OPS:
            raise TrackerTooLarge(f"{source} holds more than {MAX_PICKLE_OPS} pickled objects; only parameter "
                                     "dicts of arrays are read: save them with np.savez")


def _unpickle(handle: Any, source: str, storages: Callable[[Any], _Storage] | None = None) -> Any:
    try:
        data = _read_within(handle, _budget().left + 1)
        _budget().charge(len(data), source)
        _count_ops(data, source)
        return _plain(_SafeUnpickler(io.BytesIO(data), source, storages).load())
    except TrackerFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, RecursionError, zipfile.BadZipFile) as exc:
        raise TrackerFormatError(f"{source} is truncated or not a valid pickle ({exc.__class__.__name__}: "
                                 f"{str(exc)[:120]}); save it again") from None


def _load_torch_zip(archive: zipfile.ZipFile, source: str) -> Any:
    """``torch.save``'s zip format: ``<name>/data.pkl`` + raw storages in ``<name>/data/<key>``."""
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise TrackerFormatError(f"{source} is a zip but not a torch.save archive (no single <name>/data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    big = "big" in _read_entry(archive, prefix + "byteorder", source, optional=True).decode("ascii", "replace")
    cache: dict[str, _Storage] = {}

    def storage(pid: Any) -> _Storage:
        if not (isinstance(pid, (tuple, list)) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise TrackerFormatError(f"{source} holds a persistent record other than a tensor storage")
        kind, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in cache:
            dtype = kind.dtype.newbyteorder(">") if big and kind.dtype.itemsize > 1 else kind.dtype
            if not isinstance(numel, int) or numel < 0:
                raise TrackerFormatError(f"{source}: tensor storage {key} has a malformed size: the file is corrupt")
            _budget().charge(numel * dtype.itemsize, f"{source}: tensor storage {key}")
            raw = _read_entry(archive, f"{prefix}data/{key}", source, limit=numel * dtype.itemsize)
            if len(raw) < numel * dtype.itemsize:
                raise TrackerFormatError(f"{source}: tensor storage {key} is shorter than it claims: the file is "
                                         "truncated or corrupt")
            data = np.frombuffer(raw[: numel * dtype.itemsize], dtype).astype(dtype.newbyteorder("="))
            cache[key] = _Storage(data, kind.name == "BFloat16Storage")
        return cache[key]

    with archive.open(pickles[0]) as handle:
        return _unpickle(handle, source, storage)


def _read_entry(archive: zipfile.ZipFile, name: str, source: str, optional: bool = False,
                limit: int = 1 << 20) -> bytes:
    """One member's bytes, at most ``limit`` of them (a storage's declared size; small files 1 MiB)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        if optional:
            return b""
        raise TrackerFormatError(f"{source} lacks '{name}': the archive is truncated or corrupt") from None
    if info.file_size > limit:
        raise TrackerFormatError(f"{source}: '{name}' is {info.file_size} bytes, more than it declares ({limit})")
    try:
        with archive.open(info) as handle:
            return _read_within(handle, limit)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise TrackerFormatError(f"{source}: '{name}' is truncated or corrupt ({exc}); save the file again") from None


def _load_plain_pickle(path: str) -> Any:
    """A plain pickle, read safely; torch's legacy (pre-1.6) files start with a magic number."""
    source = os.path.basename(path)
    with open(path, "rb") as handle:
        value = _unpickle(handle, source)
    if value == _TORCH_MAGIC:
        raise TrackerFormatError(f"{source} was written by torch before 1.6 (legacy format): load and torch.save "
                                 "it again with a current torch, or save the parameters with np.savez")
    return value


# ============================================================================ raw files -> flat dicts

def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``{"flame.exp": array, ...}``; numeric lists become arrays."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    name = prefix[:-1] or "value"
    if isinstance(value, list):
        try:
            value = np.asarray(value)
        except ValueError:  # ragged
            return {name: value}
        if value.dtype.kind not in "biuf":
            return {name: value.tolist()}
    return {name: value}


def _read_npy(path: str) -> dict[str, Any]:
    stem = os.path.splitext(os.path.basename(path))[0]
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(handle)
        if dtype.hasobject:  # np.save of a dict: a pickle after the header
            return _flatten(_unpickle(handle, os.path.basename(path)))
    _budget().charge(math.prod(shape) * dtype.itemsize, os.path.basename(path))
    return {stem: np.load(path, allow_pickle=False)}


def read_file_arrays(path: str) -> dict[str, Any]:
    """One file's contents as a flat ``{key: array | number | str}``, whatever its format."""
    name = os.path.basename(path)
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise TrackerFormatError(f"{name} is larger than {MAX_FILE_BYTES >> 30} GiB; flamediff does not read it")
    if name.lower().endswith(".mat"):
        raise TrackerFormatError(f"{name} is a MATLAB file (DECA's --saveMat holds meshes and landmarks, not FLAME "
                                 "codes): save DECA's codedict with np.savez and import that")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
        if head.startswith(b"PK"):  # a zip: torch.save's archive or an .npz
            with zipfile.ZipFile(path) as archive:
                if any(n.endswith("data.pkl") for n in archive.namelist()):
                    return _flatten(_load_torch_zip(archive, name))
            budget = _budget()
            arrays = read_npz(path, replace(TRACKER_LIMITS, max_bytes=budget.left), text=True)
            budget.charge(sum(v.nbytes for v in arrays.values()), name)
            return arrays
        if head.startswith(b"\x93NUMPY"):
            return _read_npy(path)
        if head[:1] == b"\x80":
            return _flatten(_load_plain_pickle(path))
        if name.lower().endswith(".txt"):
            _budget().charge(4 * os.path.getsize(path), name)  # a float64 per two characters at most
            values = np.loadtxt(path, dtype=np.float64, ndmin=1)
            return {os.path.splitext(name)[0]: values.reshape(-1)}
    except TrackerFormatError:
        raise
    except AnimationFormatError as exc:  # read_npz names the member and the limit
        kind = TrackerTooLarge if isinstance(exc, AnimationTooLarge) else TrackerFormatError
        raise kind(f"{name}: {exc}") from None
    except ValueError:  # its text may quote the file's content: never echo it
        raise TrackerFormatError(f"{name} is not a readable {os.path.splitext(name)[1] or 'tracker'} file of numbers; "
                                 "save it again") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise TrackerFormatError(f"{name} is truncated or not a readable {os.path.splitext(name)[1] or 'tracker'} "
                                 f"file ({detail}); save it again") from None
    raise TrackerFormatError(f"{name} is not a readable tracker file: it is none of .npz, .npy, pickle, torch.save "
                             f"or .txt; supported trackers: {SUPPORTED}")


# ============================================================================ mapping one tool's arrays

_FRAME_NUMBER = re.compile(r"\d+")


def frame_number(name: str) -> int | None:
    """The first run of digits of a file or folder name (``00012.frame`` -> 12, ``000003_000`` -> 3)."""
    match = _FRAME_NUMBER.search(os.path.splitext(os.path.basename(name))[0])
    return int(match.group()) if match else None


def _shape_text(value: Any) -> str:
    return str(list(np.shape(value))) if isinstance(value, np.ndarray) else type(value).__name__


class _Mapper:
    """Takes arrays out of a tool's dict with width and NaN checks, noting what went where."""

    def __init__(self, arrays: dict[str, Any], frames: int) -> None:
        self.arrays, self.frames = arrays, frames
        self.values: dict[str, np.ndarray] = {}
        self.mapped: list[str] = []
        self.used: set[str] = set()

    def get(self, key: str, widths: tuple[int, ...], static: bool = False) -> np.ndarray | None:
        """``key`` as ``[T, width]`` (a single vector is repeated when ``static``); None if absent."""
        if key not in self.arrays:
            return None
        value = self.arrays[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise TrackerFormatError(f"'{key}' must be numeric, got {_shape_text(value)}")
        value = value.astype(np.float64)
        if value.ndim == 3 and value.shape[1] == 1:
            value = value[:, 0]  # [T, 1, N] from stacked [1, N] rows
        if value.ndim == 1 and (static or self.frames == 1):
            value = np.repeat(value[None], self.frames, axis=0)
        if value.ndim != 2 or value.shape[1] not in widths:
            expected = " or ".join(f"[T, {w}]" for w in widths)
            raise TrackerFormatError(f"'{key}' must be {expected}, got {list(value.shape)}")
        if value.shape[0] != self.frames:
            raise TrackerFormatError(f"'{key}' has {value.shape[0]} frames but the file has {self.frames}: every "
                                     "per-frame array needs the same number of rows")
        if not np.isfinite(value).all():
            row, col = np.argwhere(~np.isfinite(value))[0]
            raise TrackerFormatError(f"'{key}' holds NaN or Inf (frame {row}, index {col}): the tracker failed on that "
                                     "frame; re-track it or cut it out")
        self.used.add(key)
        return value

    def put(self, key: str, target: str, value: np.ndarray | None, how: str = "") -> None:
        if value is not None:
            self.values[target] = value
            self.mapped.append(f"{key} {list(value.shape)} -> {target}{how}")


def _split(m: _Mapper, key: str, targets: tuple[str, ...]) -> None:
    """A packed ``[T, 3 k]`` axis-angle array (DECA's pose, VHAP's eyes) into ``k`` joints."""
    value = m.get(key, (3 * len(targets),))
    if value is not None:
        for i, target in enumerate(targets):
            m.values[target] = value[:, 3 * i: 3 * i + 3]
        m.mapped.append(f"{key} {list(value.shape)} -> {' + '.join(targets)}")


def _map_vhap(m: _Mapper) -> None:
    """VHAP / GaussianAvatars: axis-angle joints named after FLAME's, eyes packed left then right."""
    m.put("rotation", "global_pose", m.get("rotation", (3,)))
    m.put("neck_pose", "neck_pose", m.get("neck_pose", (3,)))
    m.put("jaw_pose", "jaw_pose", m.get("jaw_pose", (3,)))
    _split(m, "eyes_pose", ("left_eye_pose", "right_eye_pose"))
    m.put("translation", "translation", m.get("translation", (3,)))
    m.put("shape", "shape", m.get("shape", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expr", "expression", m.get("expr", tuple(range(1, MAX_EXPRESSION + 1))))


def _map_smirk(m: _Mapper) -> None:
    m.put("pose_params", "global_pose", m.get("pose_params", (3,)))
    m.put("jaw_params", "jaw_pose", m.get("jaw_params", (3,)))
    m.put("neck_pose_params", "neck_pose", m.get("neck_pose_params", (3,)))
    _split(m, "eye_pose_params", ("left_eye_pose", "right_eye_pose"))
    m.put("shape_params", "shape", m.get("shape_params", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expression_params", "expression", m.get("expression_params", tuple(range(1, MAX_EXPRESSION + 1))))


def _map_deca(m: _Mapper, names: dict[str, str]) -> None:
    """DECA / EMOCA / SPECTRE: ``pose`` is [global, jaw] axis-angle; ``names`` maps shape/exp/pose keys."""
    _split(m, names["pose"], ("global_pose", "jaw_pose"))
    m.put(names["shape"], "shape", m.get(names["shape"], tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put(names["exp"], "expression", m.get(names["exp"], tuple(range(1, MAX_EXPRESSION + 1))))


def _map_metrical(m: _Mapper) -> None:
    """metrical-tracker ``.frame``: jaw and eyes as pytorch3d 6D; the head pose lives in the camera."""
    m.put("flame.exp", "expression", m.get("flame.exp", tuple(range(1, MAX_EXPRESSION + 1))))
    m.put("flame.shape", "shape", m.get("flame.shape", tuple(range(1, MAX_SHAPE + 1)), static=True))
    jaw = m.get("flame.jaw", (6,))
    if jaw is not None:
        m.values["jaw_pose"] = matrix_to_axis_angle(rotation_6d_to_matrix(jaw, "flame.jaw"), "flame.jaw")
        m.mapped.append(f"flame.jaw {list(jaw.shape)} -> jaw_pose (6D -> axis-angle)")
    eyes = m.get("flame.eyes", (12,))
    if eyes is not None:
        for target, part in (("left_eye_pose", eyes[:, :6]), ("right_eye_pose", eyes[:, 6:])):
            m.values[target] = matrix_to_axis_angle(rotation_6d_to_matrix(part, "flame.eyes"), "flame.eyes")
        m.mapped.append(f"flame.eyes {list(eyes.shape)} -> left_eye_pose + right_eye_pose (6D -> axis-angle)")


def _map_smplx(m: _Mapper) -> None:
    for key, target in (("global_orient", "global_pose"), ("neck_pose", "neck_pose"), ("jaw_pose", "jaw_pose"),
                        ("leye_pose", "left_eye_pose"), ("reye_pose", "right_eye_pose"), ("transl", "translation")):
        m.put(key, target, m.get(key, (3,)))
    m.put("betas", "shape", m.get("betas", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expression", "expression", m.get("expression", tuple(range(1, MAX_EXPRESSION + 1))))


def _map_flame_native(m: _Mapper) -> None:
    """FLAME's own layout: ``pose`` [15] = 5 joints, ``betas`` [400] = 300 shape + 100 expression."""
    _split(m, "pose", POSE_FIELDS)
    betas = m.get("betas", tuple(range(1, MAX_SHAPE + MAX_EXPRESSION + 1)), static=True)
    if betas is not None:
        m.values["shape"] = betas[:, :MAX_SHAPE]
        if betas.shape[1] > MAX_SHAPE:
            m.values["expression"] = betas[:, MAX_SHAPE:]
        m.mapped.append(f"betas {list(betas.shape)} -> shape" + (" + expression" if betas.shape[1] > MAX_SHAPE else ""))
    for key in ("trans", "transl", "translation"):
        m.put(key, "translation", m.get(key, (3,)))
    if "expression" in m.arrays and "expression" not in m.values:
        m.put("expression", "expression", m.get("expression", tuple(range(1, MAX_EXPRESSION + 1))))
    if "shape" in m.arrays and "shape" not in m.values:   # TF_FLAME's fits: shape [T, 300] beside pose
        m.put("shape", "shape", m.get("shape", tuple(range(1, MAX_SHAPE + 1)), static=True))


def _map_emote(m: _Mapper) -> None:
    m.put("global_pose", "global_pose", m.get("global_pose", (3,)))
    m.put("jaw_pose", "jaw_pose", m.get("jaw_pose", (3,)))
    m.put("shape", "shape", m.get("shape", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expression", "expression", m.get("expression", tuple(range(1, MAX_EXPRESSION + 1))))


@dataclass(frozen=True)
class _Tool:
    """How to recognise one tool's dict and map it."""

    id: str
    recognise: Callable[[set[str], dict[str, Any]], bool]
    mapper: Callable[[_Mapper], None]
    frame_keys: tuple[str, ...]
    dropped_why: dict[str, str] = field(default_factory=dict)
    camera: str | None = None  # "weak", "metrical", "vhap"
    fps: float | None = None


_OFFSETS = "per-vertex offsets: no rig equivalent"
_STATIC = "per-vertex identity offsets: not in the animation file; the add-on adds them as an optional shape key"
_DECA_DROPPED = {"tex": "albedo", "texcode": "albedo", "light": "lighting", "lightcode": "lighting",
                 "detail": "displacement detail", "detailcode": "displacement detail", "images": "input crops"}
_TRACKERS: tuple[_Tool, ...] = (
    _Tool("metrical-tracker", lambda k, a: "flame.exp" in k, _map_metrical, ("flame.exp", "flame.jaw"),
          {"flame.tex": "albedo", "flame.sh": "lighting", "flame.eyelids": "metrical-tracker's eyelid blendshapes "
           "(not FLAME)", "camera.R": "pytorch3d copy of the opencv camera", "camera.t": "pytorch3d copy of the opencv "
           "camera", "camera.fl": "pytorch3d copy of the opencv camera", "camera.pp": "pytorch3d copy of the opencv "
           "camera", "global_step": "optimiser state", "mesh": "mesh"}, camera="metrical"),
    _Tool("vhap", lambda k, a: {"rotation", "eyes_pose", "expr"} <= k
          and bool(k & {"timestep_id", "n_processed_frames"}),
          _map_vhap, ("expr", "rotation"),
          {"static_offset": _STATIC, "dynamic_offset": _OFFSETS, "tex": "albedo", "tex_extra": "albedo",
           "lights": "lighting", "n_processed_frames": "tracker state",
           "image_size": "tracker state (without focal_length: a calibrated capture's cameras are in its dataset)"},
          camera="vhap"),
    _Tool("gaussian-avatars", lambda k, a: {"rotation", "eyes_pose", "expr"} <= k, _map_vhap, ("expr", "rotation"),
          {"static_offset": _STATIC, "dynamic_offset": _OFFSETS}),
    _Tool("smirk", lambda k, a: bool(k & {"expression_params", "jaw_params", "eyelid_params", "pose_params"}),
          _map_smirk, ("expression_params", "jaw_params", "pose_params"),
          {"eyelid_params": "SMIRK's eyelid blendshapes (not FLAME)"}, camera="weak"),
    _Tool("emoca", lambda k, a: bool(k & {"expcode", "posecode", "shapecode"}),
          lambda m: _map_deca(m, {"shape": "shapecode", "exp": "expcode", "pose": "posecode"}),
          ("expcode", "posecode"), _DECA_DROPPED, camera="weak"),
    _Tool("emote", lambda k, a: {"expression", "jaw_pose", "global_pose"} <= k and k <= {"expression", "jaw_pose",
          "global_pose", "shape"}, _map_emote, ("expression", "jaw_pose"), fps=25.0),
    _Tool("flame", lambda k, a: "pose" in k and np.shape(a["pose"])[-1:] == (15,), _map_flame_native, ("pose",)),
    _Tool("deca", lambda k, a: "pose" in k and "exp" in k, lambda m: _map_deca(m, {"shape": "shape", "exp": "exp",
          "pose": "pose"}), ("exp", "pose"), _DECA_DROPPED, camera="weak"),
    _Tool("smplx", lambda k, a: bool(k & {"global_orient", "leye_pose", "reye_pose"}) or {"betas", "expression"} <= k,
          _map_smplx, ("expression", "global_orient", "jaw_pose")),
    _Tool("flame", lambda k, a: "betas" in k and np.shape(a["betas"])[-1:] == (MAX_SHAPE + MAX_EXPRESSION,),
          _map_flame_native, ("betas",)),
)


def _frame_count(arrays: dict[str, Any], keys: Iterable[str]) -> int:
    for key in keys:
        value = arrays.get(key)
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            return 1 if value.ndim == 1 else int(value.shape[0])
    raise TrackerFormatError(f"found none of the per-frame arrays {list(keys)}")


def _weak_perspective_camera(cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DECA's ``[s, tx, ty]`` (pixel = (s (x + t)) * S/2 + S/2, y flipped) as a pinhole camera far away
    on +Z looking at the face, so it projects the same to within the head's depth / distance."""
    if (cam[:, 0] <= 0).any():
        raise TrackerFormatError("'cam' has a non-positive scale: not a weak-perspective [s, tx, ty] camera")
    size, distance = WEAK_PERSPECTIVE_IMAGE, WEAK_PERSPECTIVE_DISTANCE
    frames = cam.shape[0]
    K = np.zeros((frames, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = cam[:, 0] * size / 2.0 * distance
    K[:, 0, 2] = K[:, 1, 2] = size / 2.0
    K[:, 2, 2] = 1.0
    R = np.repeat(np.diag([1.0, -1.0, -1.0])[None], frames, axis=0)
    t = np.stack([cam[:, 1], -cam[:, 2], np.full(frames, distance)], axis=1)
    return K, R, t


def _vhap_monocular_camera(arrays: dict[str, Any], frames: int) -> dict[str, Any]:
    """VHAP's uncalibrated (monocular) camera, as its tracker sets it: world-to-camera ``[I | (0, 0, -1)]``
    in OpenGL axes, focal length ``focal_length * max(h, w)`` px, principal point at the image centre;
    ``image_size`` is ``(h, w)``."""
    focal = np.asarray(arrays["focal_length"], np.float64).reshape(-1)
    size = np.asarray(arrays["image_size"]).reshape(-1)
    if focal.size != 1 or not np.isfinite(focal).all() or focal[0] <= 0 or size.size != 2 or (size <= 0).any():
        raise TrackerFormatError("'focal_length' must be one positive number and 'image_size' [h, w] positive "
                                 f"integers, got {focal.tolist()} and {size.tolist()}")
    height, width = (int(v) for v in size)
    f = float(focal[0]) * max(height, width)
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    flip = np.diag([1.0, -1.0, -1.0])  # OpenGL camera axes -> OpenCV
    return {"K": np.repeat(K[None], frames, 0), "R": np.repeat(flip[None], frames, 0),
            "t": np.repeat((flip @ [0.0, 0.0, -1.0])[None], frames, 0), "image_size": (width, height)}


def _map_tool(tool: _Tool, arrays: dict[str, Any], report: TrackerReport) -> dict[str, Any]:
    """Clip fields (and camera) from one recognised dict; fills the report's mapped/dropped."""
    try:
        return _map_tool_arrays(tool, arrays, report)
    except RotationError as exc:  # a file's rotations are the tracker file's fault
        raise TrackerFormatError(str(exc)) from None


def _map_tool_arrays(tool: _Tool, arrays: dict[str, Any], report: TrackerReport) -> dict[str, Any]:
    frames = _frame_count(arrays, tool.frame_keys)
    mapper = _Mapper(arrays, frames)
    tool.mapper(mapper)
    fields: dict[str, Any] = dict(mapper.values)
    cam = mapper.get("cam", (3,)) if tool.camera == "weak" else None
    if cam is not None:
        K, R, t = _weak_perspective_camera(cam)
        fields.update(K=K, R=R, t=t, image_size=(WEAK_PERSPECTIVE_IMAGE, WEAK_PERSPECTIVE_IMAGE))
        mapper.mapped.append(f"cam {list(cam.shape)} -> camera")
        report.camera = (f"weak-perspective cam [s, tx, ty] on the {WEAK_PERSPECTIVE_IMAGE} px crop, as a pinhole "
                         f"camera {WEAK_PERSPECTIVE_DISTANCE:g} m away")
    if tool.camera == "vhap" and {"focal_length", "image_size"} <= set(arrays):
        fields.update(_vhap_monocular_camera(arrays, frames))
        mapper.used |= {"focal_length", "image_size"}
        width, height = fields["image_size"]
        mapper.mapped.append(f"focal_length x max(h, w) + image_size [{height}, {width}] -> camera")
        report.camera = (f"VHAP's monocular camera (1 m in front of the origin, principal point at the centre), "
                         f"{width} x {height} px")
    if tool.camera == "metrical" and {"opencv.K", "opencv.R", "opencv.t", "img_size"} <= set(arrays):
        K = np.asarray(arrays["opencv.K"], np.float64).reshape(frames, 3, 3)
        R = np.asarray(arrays["opencv.R"], np.float64).reshape(frames, 3, 3)
        t = np.asarray(arrays["opencv.t"], np.float64).reshape(frames, 3)
        size = np.asarray(arrays["img_size"]).reshape(frames, 2)
        if not (np.isfinite(K).all() and np.isfinite(R).all() and np.isfinite(t).all()):
            raise TrackerFormatError("the opencv camera holds NaN or Inf: re-track those frames")
        if (size != size[0]).any():
            raise TrackerFormatError("img_size changes between frames; one clip needs one image size")
        matrix_to_axis_angle(R, "opencv.R")  # refuses non-rotations
        height, width = (int(v) for v in size[0])
        fields.update(K=K, R=R, t=t, image_size=(width, height))
        mapper.used |= {"opencv.K", "opencv.R", "opencv.t", "img_size"}
        mapper.mapped.append(f"opencv K, R, t + img_size [{height}, {width}] -> camera")
        report.camera = f"metrical-tracker's OpenCV camera, {width} x {height} px (the head pose is in the camera)"
    for key in ("frame_id", "timestep_id"):
        if key in arrays:
            mapper.used.add(key)
            numbers = [frame_number(str(v)) for v in np.asarray(arrays[key]).reshape(-1)]
            if len(numbers) == frames and None not in numbers and len(set(numbers)) == frames:
                fields["frame"] = np.asarray(numbers, dtype=np.int64)
                mapper.mapped.append(f"{key} -> frame numbers")
    offset = arrays.get("static_offset")
    if isinstance(offset, np.ndarray) and offset.dtype.kind == "f" and offset.shape[-1:] == (3,) and offset.size:
        offset = offset.reshape(-1, *offset.shape[-2:])[0].astype(np.float64)  # one copy per frame file
        if np.isfinite(offset).all():
            fields["static_offset"] = offset
    report.mapped += mapper.mapped
    for key in sorted(set(arrays) - mapper.used):
        why = tool.dropped_why.get(key) or tool.dropped_why.get(key.split(".")[0]) or "not a FLAME parameter"
        report.dropped.append(f"{key} {_shape_text(arrays[key])} ({why})")
    return fields


def _recognise(arrays: dict[str, Any]) -> _Tool | None:
    keys = set(arrays)
    for tool in _TRACKERS:
        if tool.recognise(keys, arrays):
            return tool
    return None


def _describe(arrays: dict[str, Any]) -> str:
    items = [f"{key} {_shape_text(value)}" for key, value in list(arrays.items())[:12]]
    more = f" and {len(arrays) - 12} more" if len(arrays) > 12 else ""
    return ", ".join(items) + more


def _unrecognised(source: str, arrays: dict[str, Any]) -> TrackerFormatError:
    looks = ""
    if len(arrays) == 1:
        (key, value), = arrays.items()
        if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] % 3 == 0 and value.shape[1] >= 3000:
            looks = (f" It looks like per-vertex animation ({value.shape[0]} frames of {value.shape[1] // 3} vertices, "
                     "e.g. FaceFormer / VOCA output), which has no FLAME parameters to key;")
    return TrackerFormatError(f"{source} holds {_describe(arrays)}, which is no tracker layout flamediff knows.{looks} "
                              f"Supported: {SUPPORTED}, or a .npz with flamediff's key names (see the README)")


def _clip_from_fields(fields: dict[str, Any], frames: int, fps: float, extra: dict[str, Any]) -> AnimationClip:
    values: dict[str, Any] = {name: fields.get(name, np.zeros((frames, 3))) for name in (*POSE_FIELDS, "translation")}
    return AnimationClip(frame=np.asarray(fields.get("frame", np.arange(frames)), np.int64),
                         shape=fields.get("shape", np.zeros((frames, 0))),
                         expression=fields.get("expression", np.zeros((frames, 0))),
                         fps=fps, image_size=fields.get("image_size"), extra=extra, K=fields.get("K"),
                         R=fields.get("R"), t=fields.get("t"), **values)


def _generic(source: str, arrays: dict[str, Any], layout: str) -> TrackerImport:
    """Hand-stacked arrays with flamediff's names or common aliases (the animation module's tolerant path)."""
    numeric = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AnimationWarning)
            clip = clip_from_arrays(numeric)
    except AnimationFormatError:
        raise _unrecognised(source, arrays) from None
    report = TrackerReport("hand-stacked arrays (flamediff names or aliases)", None, layout, clip.num_frames,
                           fps_in_file="fps" in arrays)
    report.notes += [str(w.message) for w in caught]
    report.mapped.append("by name (see notes)")
    return TrackerImport(replace(clip, extra={**clip.extra, "fps_in_file": "fps" in arrays}), report)


def _import_arrays(source: str, arrays: dict[str, Any], layout: str, fps: float | None) -> TrackerImport:
    tool = _recognise(arrays)
    if tool is None:
        return _generic(source, arrays, layout)
    name, version = TOOLS[tool.id][:2]
    report = TrackerReport(name, version, layout)
    fields = _map_tool(tool, arrays, report)
    frames = _frame_count(arrays, tool.frame_keys)
    return _finish(fields, frames, report, fps, tool.fps)


def _finish(fields: dict[str, Any], frames: int, report: TrackerReport, fps: float | None,
            tool_fps: float | None) -> TrackerImport:
    rate = fps or tool_fps
    report.fps_in_file = tool_fps is not None
    report.num_frames = frames
    if tool_fps is not None:
        report.notes.append(f"{report.tool} animates at {tool_fps:g} fps")
    elif fps is None:
        report.notes.append("the files carry no frame rate: one file frame per scene frame unless you set "
                            "the source fps")
    extra = {"source_tool": report.tool, "fps_in_file": rate is not None,
             "flame_version": report.flame_version, "dropped": [d.split(" ")[0] for d in report.dropped]}
    clip = _clip_from_fields(fields, frames, float(rate or 25.0), extra)
    return TrackerImport(clip, report, fields.get("static_offset"))


# ============================================================================ folders of per-frame files

def _stack(per_file: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-frame dicts -> one dict with a leading frame axis; files must agree on keys and shapes."""
    first_name, first = per_file[0]
    out: dict[str, list[Any]] = {key: [] for key in first}
    for name, arrays in per_file:
        if set(arrays) != set(first):
            missing, extra = sorted(set(first) - set(arrays)), sorted(set(arrays) - set(first))
            raise TrackerFormatError(f"{name} does not hold the same arrays as {first_name} (missing {missing}, "
                                     f"extra {extra}): the folder mixes layouts or a file is damaged")
        for key, value in arrays.items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                row = value if value.ndim >= 2 and value.shape[0] == 1 else value[None]
                reference = out[key][0] if out[key] else row
                if row.shape != reference.shape:
                    raise TrackerFormatError(
                        f"{name} has '{key}' of shape {list(value.shape)} but {first_name} has "
                        f"{list(np.asarray(first[key]).shape)}: a per-frame folder needs one frame of the same size "
                        "per file")
                out[key].append(row)
            else:
                out[key].append(value)
    return {key: np.concatenate(values) if isinstance(values[0], np.ndarray) else values
            for key, values in out.items()}


def _numbered(folder: str, entries: list[str]) -> list[tuple[int, str]]:
    """``(frame number, name)`` sorted by number, within the frame limit; refuses repeated
    numbers (several faces per frame)."""
    numbered = sorted((n, e) for e in entries if (n := frame_number(e)) is not None)
    _budget().frames(len(numbered), os.path.basename(folder) or "the folder")
    repeated = sorted(n for n, count in Counter(n for n, _ in numbered).items() if count > 1)
    if repeated:
        names = [e for n, e in numbered if n == repeated[0]]
        raise TrackerFormatError(f"{folder} holds several files for frame {repeated[0]} ({names}): several faces "
                                 "per frame? keep one face's files in a folder of their own")
    return numbered


def _declared_bytes(path: str) -> int:
    """What reading ``path`` allocates at least: the sizes an ``.npz`` or ``.npy`` declares in its
    headers (read without decompressing), else the file's own size; a folder's files are priced
    together before any of them is read."""
    if os.path.isdir(path):
        return sum(_declared_bytes(os.path.join(path, name)) for name in os.listdir(path) if name.endswith(".npy"))
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head.startswith(b"\x93NUMPY"):
                handle.seek(0)
                version = np.lib.format.read_magic(handle)
                shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)(handle)
                return math.prod(shape) * dtype.itemsize
        if head.startswith(b"PK") and not _is_torch_zip(path):
            budget = _budget()
            return declared_npz_bytes(path, replace(TRACKER_LIMITS, max_bytes=budget.left + 1), text=True)
    except AnimationFormatError as exc:
        kind = TrackerTooLarge if isinstance(exc, AnimationTooLarge) else TrackerFormatError
        raise kind(f"{os.path.basename(path)}: {exc}") from None
    except (ValueError, EOFError, zipfile.BadZipFile):
        pass  # read_file_arrays names what is wrong with it
    return os.path.getsize(path)


def _is_torch_zip(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("data.pkl") for n in archive.namelist())


def _price(paths: list[str], what: str) -> None:
    """Charge the declared bytes of ``paths`` before reading them (a folder of frames that each
    declare a large array is refused from its headers, not after decompressing them)."""
    budget, total = _budget(), 0
    for path in paths:
        total += _declared_bytes(path)
        if total > budget.left:
            budget.charge(total, what)  # refuses: each file is charged again as it is read


def _read_frames(folder: str, names: list[tuple[int, str]], read: Callable[[str], dict[str, Any]],
                 fps: float | None, layout: str) -> TrackerImport:
    _price([os.path.join(folder, name) for _, name in names], f"the {len(names)} frames of the folder")
    per_file = [(name, read(os.path.join(folder, name))) for _, name in names]
    arrays = _stack(per_file)
    result = _import_arrays(os.path.basename(folder.rstrip(os.sep)) or folder, arrays, layout, fps)
    if not any(m.endswith("-> frame numbers") for m in result.report.mapped):
        result.clip.frame = np.asarray([n for n, _ in names], np.int64)
        result.report.mapped.append("file names -> frame numbers")
    return result


def _emoca_face(folders: list[str], wanted: int | None = None) -> tuple[list[str], str | None]:
    """EMOCA's video demo names each detection ``<frame>_<detection index>`` (``000012_001``): the
    folders of face ``wanted`` (default the first), and a note naming the faces left out (None
    when there is one face)."""
    faces: dict[int, list[str]] = {}
    for name in folders:
        match = _EMOCA_DETECTION.match(name)
        faces.setdefault(int(match.group(2)) if match else 0, []).append(name)
    if len(faces) < 2:
        return folders, None
    chosen = wanted if wanted in faces else min(faces)
    others = "; ".join(f"face {face:03d} ({len(names)} frames, e.g. {sorted(names)[0]})"
                       for face, names in sorted(faces.items()) if face != chosen)
    return faces[chosen], (f"EMOCA saved several faces per frame: imported face {chosen:03d} ({len(faces[chosen])} "
                           f"frames), left out {others}; EMOCA numbers detections per frame, not per person: to "
                           "import another face, import one of its files (e.g. <frame>_001/exp.npy)")


def _read_emoca_codes(folder: str) -> dict[str, Any]:
    """One EMOCA ``--save_codes`` folder: ``shape.npy``, ``exp.npy``, ``pose.npy`` (+ tex, detail)."""
    out: dict[str, Any] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".npy"):
            out.update(read_file_arrays(os.path.join(folder, name)))
    return out


def transforms_views(path: str) -> dict[int, list[dict[str, Any]]]:
    """The frames of a VHAP export's ``transforms.json`` by ``camera_index``, each view ordered by timestep."""
    _budget().charge(16 * os.path.getsize(path), "transforms.json")  # parsed JSON takes ~16 bytes a character
    try:
        with open(path, encoding="utf-8") as handle:
            frames = json.load(handle)["frames"]
        views: dict[int, list[dict[str, Any]]] = {}
        for row in frames:
            views.setdefault(int(row.get("camera_index", 0)), []).append(row)
        return {view: sorted(rows, key=lambda r: int(r["timestep_index"])) for view, rows in sorted(views.items())}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrackerFormatError(f"{path} is not a readable transforms.json ({exc.__class__.__name__}: {exc}); "
                                 "export it again with VHAP") from None


def _transforms_camera(path: str, camera_index: int | None) -> tuple[list[dict[str, Any]], str]:
    """The frames of one view of a VHAP export's ``transforms.json``, ordered by timestep."""
    views = transforms_views(path)
    chosen = next(iter(views), 0) if camera_index is None or camera_index < 0 else camera_index
    if chosen not in views:
        raise TrackerFormatError(f"transforms.json has no camera_index {chosen}; it has {list(views)}")
    note = f"camera_index {chosen} of {list(views)}" + (" (the other views are dropped)" if len(views) > 1 else "")
    return views[chosen], note


def _opengl_c2w_to_opencv(matrix: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    c2w = np.asarray(matrix, np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise TrackerFormatError(f"{name}: transform_matrix must be a finite 4x4 matrix")
    w2c = np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0]))  # OpenGL camera axes -> OpenCV
    return w2c[:3, :3], w2c[:3, 3]


def _read_vhap_export(root: str, fps: float | None, camera_index: int | None) -> TrackerImport:
    """VHAP's NeRF-style export (GaussianAvatars' input, NeRSemble's published layout)."""
    rows, note = _transforms_camera(os.path.join(root, "transforms.json"), camera_index)
    _budget().frames(len(rows), "transforms.json")
    per_file, K, R, t, sizes, numbers = [], [], [], [], set(), []
    for row in rows:
        name = row.get("flame_param_path")
        if not name:
            raise TrackerFormatError("transforms.json frames lack 'flame_param_path': export with VHAP's "
                                     "--mode param (or pass the flame_param folder)")
        path = member_path(root, name)
        if not os.path.isfile(path):
            raise TrackerFormatError(f"transforms.json names {name}, which is missing: the export is incomplete")
        per_file.append((name, path))
        rotation, translation = _opengl_c2w_to_opencv(row.get("transform_matrix"), name)
        try:  # VHAP renders with y up and flips rows, so its principal row from the top is h - cy
            K.append([[row["fl_x"], 0.0, row["cx"]], [0.0, row["fl_y"], row["h"] - row["cy"]], [0.0, 0.0, 1.0]])
            sizes.add((int(row["w"]), int(row["h"])))
        except (KeyError, TypeError, ValueError):
            raise TrackerFormatError(f"transforms.json frame {name} lacks fl_x, fl_y, cx, cy, w or h") from None
        R.append(rotation)
        t.append(translation)
        numbers.append(int(row["timestep_index"]))
    if not per_file:
        raise TrackerFormatError("transforms.json lists no frames")
    if len(sizes) != 1:
        raise TrackerFormatError(f"the chosen view changes image size between frames ({sorted(sizes)})")
    _price([path for _, path in per_file], f"the {len(per_file)} frames transforms.json names")
    arrays = _stack([(name, read_file_arrays(path)) for name, path in per_file])
    tool = next(t for t in _TRACKERS if t.id == "gaussian-avatars")
    report = TrackerReport(TOOLS["vhap-export"][0], TOOLS["vhap-export"][1],
                           f"transforms.json + {len(per_file)} per-frame files")
    fields = _map_tool(tool, arrays, report)
    fields.update(K=np.asarray(K, np.float64), R=np.stack(R), t=np.stack(t), image_size=sizes.pop(),
                  frame=np.asarray(numbers, np.int64))
    report.mapped.append("transforms.json transform_matrix (OpenGL camera-to-world), fl_x, fl_y, cx, h - cy -> camera")
    report.mapped.append("timestep_index -> frame numbers")
    report.camera = f"transforms.json, {note}"
    return _finish(fields, len(per_file), report, fps, None)


def _folder_layout(folder: str) -> tuple[str, str]:
    """``(kind, folder)`` of what a folder holds; kinds: vhap-export, emoca-codes, files."""
    entries = os.listdir(folder)
    if "transforms.json" in entries:
        return "vhap-export", folder
    for child in ("flame_param", "checkpoint", os.path.join("flame", "exp")):
        if os.path.isdir(os.path.join(folder, child)):
            if child == "flame_param" and os.path.isfile(os.path.join(folder, "transforms.json")):
                return "vhap-export", folder
            return "files", os.path.join(folder, child)
    if any(os.path.isfile(os.path.join(folder, e, "exp.npy")) for e in entries):
        return "emoca-codes", folder
    return "files", folder


def _read_folder(folder: str, fps: float | None, camera_index: int | None, face: int | None = None) -> TrackerImport:
    kind, folder = _folder_layout(folder)
    if kind == "vhap-export":
        return _read_vhap_export(folder, fps, camera_index)
    entries = sorted(os.listdir(folder))
    if kind == "emoca-codes":
        faces, note = _emoca_face([e for e in entries if os.path.isfile(os.path.join(folder, e, "exp.npy"))], face)
        names = _numbered(folder, faces)
        result = _relabel(_read_frames(folder, names, _read_emoca_codes, fps, f"{len(names)} --save_codes folders"),
                          "emoca-codes")
        result.report.notes += [note] if note else []
        return result
    tracked = sorted((e for e in entries if e.startswith("tracked_flame_params") and e.endswith(".npz")),
                     key=lambda e: frame_number(e.replace("tracked_flame_params", "")) or -1)
    if tracked:
        return _read_tracker(os.path.join(folder, tracked[-1]), fps, None, True)
    files = [e for e in entries if e.lower().endswith(_EXTENSIONS) and os.path.isfile(os.path.join(folder, e))]
    names = _numbered(folder, files)
    if not names:
        raise TrackerFormatError(f"{folder} holds no numbered tracker files (.npz, .npy, .pkl, .pth, .frame, .txt); "
                                 f"supported: {SUPPORTED}")
    extensions = sorted({os.path.splitext(n)[1].lower() for _, n in names})
    if len(extensions) > 1:
        raise TrackerFormatError(f"{folder} mixes {extensions}: keep one tracker's per-frame files in a folder")
    if extensions == [".txt"]:  # INSTA's flame/exp: one expression vector per file
        def read(path: str) -> dict[str, Any]:
            return {"flame.exp": read_file_arrays(path).popitem()[1]}
        result = _relabel(_read_frames(folder, names, read, fps, f"{len(names)} per-frame .txt files"), "insta")
        result.report.mapped = [m.replace("flame.exp", "exp .txt") for m in result.report.mapped]
        result.report.notes.append("INSTA's folders hold expression only: pose, jaw, eyes and shape stay at rest")
        return result
    result = _read_frames(folder, names, read_file_arrays, fps, f"{len(names)} per-frame {extensions[0]} files")
    if os.path.basename(folder) == "flame_param" and result.report.tool == TOOLS["gaussian-avatars"][0]:
        result = _relabel(result, "vhap-export")
        result.report.notes.append("no transforms.json beside the folder: no camera")
    return result


def _relabel(result: TrackerImport, tool_id: str) -> TrackerImport:
    """Name the tool a folder's layout revealed (its files' keys alone look like another tool's)."""
    name, version = TOOLS[tool_id][:2]
    result.report.tool, result.report.flame_version = name, version
    result.clip.extra.update(source_tool=name, flame_version=version)
    return result


def _sequence_folder(path: str) -> str | None:
    """The folder to read when ``path`` is one frame of a per-frame layout, else None."""
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if name == "transforms.json":
        return parent
    if name in _EMOCA_CODES and os.path.isfile(os.path.join(parent, "exp.npy")):  # EMOCA <frame>/exp.npy
        return os.path.dirname(parent)
    if frame_number(name) is None or name.startswith("tracked_flame_params"):
        return None
    extension = os.path.splitext(name)[1].lower()
    siblings = [e for e in os.listdir(parent) if e.lower().endswith(extension) and frame_number(e) is not None]
    if len(siblings) < 2:
        return None
    grandparent = os.path.dirname(parent)
    if os.path.basename(parent) == "flame_param" and os.path.isfile(os.path.join(grandparent, "transforms.json")):
        return grandparent
    return parent


# ============================================================================ entry points

def read_tracker(path: str | os.PathLike, *, fps: float | None = None, camera_index: int | None = None,
                 whole_sequence: bool = True, limits: ReadLimits = TRACKER_LIMITS) -> TrackerImport:
    """A tracker file or folder as a clip plus its report.

    ``fps``: the source frame rate when the user knows it (tracker files carry none).
    ``camera_index``: which view of a multi-view export to import (default: the first).
    ``whole_sequence``: a numbered per-frame file (``00012.frame``) imports its whole folder.
    ``limits``: what the whole read may allocate (``max_bytes``, checked against declared sizes
    before allocating) and how many frames it may hold (the server passes its own).
    """
    with read_budget(limits):
        return _read_tracker(os.fspath(path), fps, camera_index, whole_sequence)


def _read_tracker(path: str, fps: float | None, camera_index: int | None, whole_sequence: bool) -> TrackerImport:
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise TrackerFormatError(f"source fps must be a positive number, got {fps!r}")
    if os.path.isdir(path):
        return _read_folder(path, fps, camera_index)
    if not os.path.isfile(path):
        raise TrackerFormatError(f"animation file not found: {path}")
    folder = _sequence_folder(path) if whole_sequence else None
    if folder is not None:  # a file of one EMOCA detection folder imports that face
        detection = _EMOCA_DETECTION.match(os.path.basename(os.path.dirname(os.path.abspath(path))))
        return _read_folder(folder, fps, camera_index, int(detection.group(2)) if detection else None)
    arrays = read_file_arrays(path)
    return _import_arrays(os.path.basename(path), arrays, "one file", fps)


def _is_own_file(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "header.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_any(path: str | os.PathLike, *, fps: float | None = None, camera_index: int | None = None,
             whole_sequence: bool = True) -> TrackerImport:
    """A flamediff animation file (read by :func:`load_animation`) or any tracker layout above."""
    path = os.fspath(path)
    if os.path.isfile(path) and _is_own_file(path):
        clip = load_animation(path)
        if fps is not None:
            clip = replace(clip, fps=float(fps))
        source = clip.extra.get("source_tool")
        report = TrackerReport(OWN_FILE + (f" (converted from {source})" if source else ""),
                               clip.extra.get("flame_version"),
                               "one file", clip.num_frames, mapped=["all fields"], fps_in_file=fps_in_file(clip),
                               camera="K, R, t" if clip.has_camera else None)
        return TrackerImport(clip, report)
    return read_tracker(path, fps=fps, camera_index=camera_index, whole_sequence=whole_sequence)


def fps_in_file(clip: AnimationClip) -> bool:
    """False for clips (or files converted) from trackers that carry no frame rate."""
    return bool(clip.extra.get("fps_in_file", True))


def with_default_camera(clip: AnimationClip) -> AnimationClip:
    """``clip`` with :data:`DEFAULT_CAMERA` (a fixed portrait camera in front of the face) on every frame."""
    size = DEFAULT_CAMERA["size"]
    rotation, translation = look_at_opencv(DEFAULT_CAMERA["eye"], DEFAULT_CAMERA["target"])
    K = intrinsics_from_fov(DEFAULT_CAMERA["fov_y_degrees"], size, size)
    frames = clip.num_frames
    return replace(clip, K=np.repeat(K[None], frames, 0), R=np.repeat(rotation[None], frames, 0),
                   t=np.repeat(translation[None], frames, 0), image_size=(size, size))


def flame_version_note(report: TrackerReport, asset_name: str) -> str | None:
    """A warning when the tool implies another FLAME version than the rig's asset, else None."""
    if not report.flame_version:
        return None
    implied = report.flame_version.replace("FLAME ", "")
    if implied in asset_name or (implied == "2020" and asset_name == "generic_model"):
        return None
    version = report.flame_version
    return (f"{report.tool} tracks with {version}, but the FLAME asset is '{asset_name}': expressions and identity "
            f"look different on another model; use a {version} asset (the add-on's preferences, or --flame-asset)")


# ============================================================================ timing

def _slerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise spherical interpolation of unit quaternions (shortest way)."""
    b = np.where(np.sum(a * b, -1, keepdims=True) < 0, -b, b)
    cos = np.clip(np.sum(a * b, -1, keepdims=True), -1.0, 1.0)
    angle = np.arccos(cos)
    sin = np.sin(angle)
    near = sin < 1e-8
    wa = np.where(near, 1 - w, np.sin((1 - w) * angle) / np.where(near, 1, sin))
    wb = np.where(near, w, np.sin(w * angle) / np.where(near, 1, sin))
    q = wa * a + wb * b
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def resample(clip: AnimationClip, times: np.ndarray, frames: np.ndarray) -> AnimationClip:
    """``clip`` evaluated at scene ``frames`` from rows placed at (fractional) scene ``times``:
    linear for coefficients, translation and intrinsics, slerp for joint and camera rotations."""
    index = np.clip(np.searchsorted(times, frames, side="right") - 1, 0, len(times) - 2)
    span = times[index + 1] - times[index]
    w = np.clip((frames - times[index]) / span, 0.0, 1.0)[:, None]

    def linear(values: np.ndarray) -> np.ndarray:
        flat = values.reshape(len(values), -1)
        return ((1 - w) * flat[index] + w * flat[index + 1]).reshape((len(frames),) + values.shape[1:])

    def rotation(quaternions: np.ndarray) -> np.ndarray:
        return _slerp(quaternions[index], quaternions[index + 1], w)

    fields: dict[str, Any] = {name: linear(getattr(clip, name)) for name in ("shape", "expression", "translation")}
    for name in POSE_FIELDS:
        fields[name] = quaternion_to_axis_angle(rotation(axis_angle_to_quaternion(getattr(clip, name))))
    if clip.K is not None and clip.R is not None and clip.t is not None:  # has_camera, for the type checker
        fields.update(K=linear(clip.K), t=linear(clip.t),
                      R=quaternion_to_matrix(rotation(matrix_to_quaternion(clip.R))))
    return replace(clip, frame=np.asarray(frames, np.int64), **fields)


def retime(clip: AnimationClip, *, scene_fps: float, scene_start: int, source_fps: float = 0.0,
           frame_offset: int = 0) -> tuple[AnimationClip, str]:
    """The clip on scene frames and one sentence saying how the timing was decided.

    - no fps anywhere (tracker files): file frame k -> scene frame ``scene_start + k - first``;
    - a source rate (the user's ``source_fps``, the file's, the tool's): rows keep their times;
      when it differs from ``scene_fps`` the clip is resampled onto whole scene frames.
    flamediff's own files keep their Blender frame numbers (and so ignore ``scene_start``).
    """
    known = fps_in_file(clip)
    own = "source_tool" not in clip.extra and known
    rate = source_fps or (clip.fps if known else 0.0)
    origin = 0 if own else int(clip.frame[0])
    first = (0 if own else scene_start) + frame_offset
    ratio = scene_fps / rate if rate else 1.0
    times = first + (clip.frame - origin) * ratio
    if abs(ratio - 1.0) < 1e-9 or len(times) == 1:
        frames = np.round(times).astype(np.int64)
        if not rate:
            how = (f"no frame rate in the file: one file frame per scene frame from frame {int(frames[0])} "
                   "(set the source fps to resample)")
        else:
            how = f"{rate:g} fps, the scene's rate: one file frame per scene frame from frame {int(frames[0])}"
        return replace(clip, frame=frames, fps=float(scene_fps)), how
    frames = np.arange(int(np.ceil(times[0] - 1e-9)), int(np.floor(times[-1] + 1e-9)) + 1)
    out = replace(resample(clip, times.astype(np.float64), frames.astype(np.float64)), fps=float(scene_fps))
    how = (f"resampled {clip.num_frames} frames at {rate:g} fps onto {len(frames)} scene frames at {scene_fps:g} fps "
           f"({int(frames[0])}..{int(frames[-1])}; linear for coefficients, slerp for rotations)")
    return out, how
