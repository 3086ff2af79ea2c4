"""Arrays computed once per dataset row and kept on disk (the training caches' shared store).

What a step computes from a frame that never changes during a run (the frozen VAE's latents, the
rasteriser's triangle ids of a posed training mesh) is read back instead of recomputed. Each
row's array is its own ``.npy`` file, written to a temporary name and renamed, so an interrupted
run leaves only whole entries. Entries remember the size and modification time of the file they
were computed from, so a regenerated dataset is computed again rather than read stale; the
folder is keyed by the dataset's path and by what computed the arrays (e.g. the VAE's hash).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from flamediff.data.dataset import DatasetIndex

__all__ = ["RowCache", "module_hash", "tensors_hash"]


def tensors_hash(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order), 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def module_hash(module: nn.Module) -> str:
    """:func:`tensors_hash` of a module's state dict."""
    return tensors_hash(module.state_dict().items())


class RowCache:
    """One array per dataset row under ``root/<dataset key>/<key>``, each valid for the file
    ``source(row)`` as it was when the array was computed."""

    def __init__(self, index: DatasetIndex, root: str, key: str, source: Callable[[int], str]) -> None:
        dataset_key = hashlib.sha256(os.path.realpath(index.folder).encode()).hexdigest()[:16]
        self.folder = os.path.join(root, dataset_key, key)
        os.makedirs(self.folder, exist_ok=True)
        self.source = source

    def arrays(self, rows: Iterable[int], compute: Callable[[list[int]], Iterable[np.ndarray]]) -> list[np.ndarray]:
        """The arrays of ``rows`` in order (repeats allowed); ``compute(missing)`` makes those of
        the rows without a valid entry, together, and they are stored."""
        rows = [int(r) for r in rows]
        found = {r: self._read(r) for r in dict.fromkeys(rows)}
        missing = [r for r, array in found.items() if array is None]
        if missing:
            for r, array in zip(missing, compute(missing)):
                self._write(r, array)
                found[r] = array
        return [found[r] for r in rows]

    def entry(self, row: int) -> str:
        return os.path.join(self.folder, f"{row:06d}.npy")

    def _stamp(self, row: int) -> np.ndarray:
        """The source file's (size, mtime in ns): an entry is valid only for the file it read."""
        stat = os.stat(self.source(row))
        return np.array([stat.st_size, stat.st_mtime_ns], dtype=np.int64)

    def _read(self, row: int) -> np.ndarray | None:
        try:
            with open(self.entry(row), "rb") as handle:
                stamp, array = np.load(handle), np.load(handle)
        except (OSError, ValueError, EOFError):
            return None  # absent, or unreadable: compute again
        return array if np.array_equal(stamp, self._stamp(row)) else None

    def _write(self, row: int, array: np.ndarray) -> None:
        handle = tempfile.NamedTemporaryFile(dir=self.folder, suffix=".partial", delete=False)
        try:
            with handle:
                np.save(handle, self._stamp(row))
                np.save(handle, array)
            os.replace(handle.name, self.entry(row))
        except BaseException:
            os.unlink(handle.name)
            raise
