"""One tracker file (``.npz``, ``.npy``, pickle, ``torch.save``, ``.txt``) -> a flat dict of arrays,
within the read's budget."""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import replace
from typing import Any

import numpy as np

from ..animation import AnimationFormatError, AnimationTooLarge, declared_npz_bytes, read_npz
from .limits import MAX_FILE_BYTES, TRACKER_LIMITS, TrackerFormatError, TrackerTooLarge, current_budget
from .tools import SUPPORTED
from .unpickler import load_plain_pickle, load_torch_zip, unpickle


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
            return _flatten(unpickle(handle, os.path.basename(path)))
    current_budget().charge(math.prod(shape) * dtype.itemsize, os.path.basename(path))
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
                    return _flatten(load_torch_zip(archive, name))
            budget = current_budget()
            arrays = read_npz(path, replace(TRACKER_LIMITS, max_bytes=budget.left), text=True)
            budget.charge(sum(v.nbytes for v in arrays.values()), name)
            return arrays
        if head.startswith(b"\x93NUMPY"):
            return _read_npy(path)
        if head[:1] == b"\x80":
            return _flatten(load_plain_pickle(path))
        if name.lower().endswith(".txt"):
            current_budget().charge(4 * os.path.getsize(path), name)  # a float64 per two characters at most
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


def declared_bytes(path: str) -> int:
    """What reading ``path`` allocates at least: the sizes an ``.npz`` or ``.npy`` declares in its
    headers (read without decompressing), else the file's own size; a folder's files are priced
    together before any of them is read."""
    if os.path.isdir(path):
        return sum(declared_bytes(os.path.join(path, name)) for name in os.listdir(path) if name.endswith(".npy"))
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
            budget = current_budget()
            return declared_npz_bytes(path, replace(TRACKER_LIMITS, max_bytes=budget.left), text=True)
    except AnimationFormatError as exc:
        kind = TrackerTooLarge if isinstance(exc, AnimationTooLarge) else TrackerFormatError
        raise kind(f"{os.path.basename(path)}: {exc}") from None
    except (ValueError, EOFError, zipfile.BadZipFile):
        pass  # read_file_arrays names what is wrong with it
    return os.path.getsize(path)


def _is_torch_zip(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("data.pkl") for n in archive.namelist())


def price_files(paths: list[str], what: str) -> None:
    """Charge the declared bytes of ``paths`` before reading them (a folder of frames that each
    declare a large array is refused from its headers, not after decompressing them)."""
    budget, total = current_budget(), 0
    for path in paths:
        total += declared_bytes(path)
        if total > budget.left:
            budget.charge(total, what)  # refuses: each file is charged again as it is read
