"""The safe unpickler: torch-pickled files (``.pth``, ``.frame``) and ``.pkl`` files without torch.

Tensors are built from the archive's raw storages here (bounds-checked strided copies), numpy
arrays from their raw bytes, and every global that is not a tensor, array, dict, list or number
is refused, so nothing in a file is ever executed. Opcodes and expanded values are counted, so a
small hostile file cannot cost gigabytes; written here because ``pickle`` has no safe mode and
the add-on's Python has no torch.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import zipfile
from typing import Any, Callable

import numpy as np

from .limits import TrackerFormatError, TrackerTooLarge, current_budget

#: Pickle opcodes one file may hold (a parameter dict of arrays needs a few hundred); counted
#: before anything is built, so a file of 1e8 tiny objects costs a scan, not gigabytes.
MAX_PICKLE_OPS = 200_000
#: Values a pickle may expand to once shared references are followed (a "billion laughs" list
#: of lists of the same list is small on disk and huge when walked).
MAX_PICKLE_VALUES = 100_000
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
    current_budget().charge(math.prod(size) * data.itemsize, f"a tensor of size {list(size)[:8]}")
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
        current_budget().charge(len(raw), "a pickled numpy array")
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


def unpickle(handle: Any, source: str, storages: Callable[[Any], _Storage] | None = None) -> Any:
    """A pickle's plain data (arrays, dicts, lists, numbers), its bytes charged to the read's budget
    and its opcodes counted before anything is built; any failure is one TrackerFormatError."""
    try:
        data = _read_within(handle, current_budget().left + 1)
        current_budget().charge(len(data), source)
        _count_ops(data, source)
        return _plain(_SafeUnpickler(io.BytesIO(data), source, storages).load())
    except TrackerFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, RecursionError, zipfile.BadZipFile) as exc:
        raise TrackerFormatError(f"{source} is truncated or not a valid pickle ({exc.__class__.__name__}: "
                                 f"{str(exc)[:120]}); save it again") from None


def load_torch_zip(archive: zipfile.ZipFile, source: str) -> Any:
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
            current_budget().charge(numel * dtype.itemsize, f"{source}: tensor storage {key}")
            raw = _read_entry(archive, f"{prefix}data/{key}", source, limit=numel * dtype.itemsize)
            if len(raw) < numel * dtype.itemsize:
                raise TrackerFormatError(f"{source}: tensor storage {key} is shorter than it claims: the file is "
                                         "truncated or corrupt")
            data = np.frombuffer(raw[: numel * dtype.itemsize], dtype).astype(dtype.newbyteorder("="))
            cache[key] = _Storage(data, kind.name == "BFloat16Storage")
        return cache[key]

    with archive.open(pickles[0]) as handle:
        return unpickle(handle, source, storage)


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


def load_plain_pickle(path: str) -> Any:
    """A plain pickle, read safely; torch's legacy (pre-1.6) files start with a magic number."""
    source = os.path.basename(path)
    with open(path, "rb") as handle:
        value = unpickle(handle, source)
    if value == _TORCH_MAGIC:
        raise TrackerFormatError(f"{source} was written by torch before 1.6 (legacy format): load and torch.save "
                                 "it again with a current torch, or save the parameters with np.savez")
    return value
