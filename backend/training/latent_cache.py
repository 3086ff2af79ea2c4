"""Frozen-VAE latents of dataset frames, computed once and kept on disk.

Stages 1 and 2 never train the VAE, so encoding the same frame again at every step it is drawn
repeats work (and the PNG decoding before it). The cache stores each frame's raw posterior mean
(before the latent normalisation, which is a config value) in its own ``.npy`` file, written to
a temporary name and renamed, so an interrupted run leaves only whole entries. Entries are
keyed by the VAE weights' hash (a retrained VAE gets a new folder) and remember the frame file's
size and modification time, so a regenerated frame is encoded again rather than read stale.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np
import torch
from torch import Tensor, nn

from flamediff.data.dataset import DatasetIndex
from flamediff.formats.paths import cache_dir

__all__ = ["LatentCache", "module_hash"]


def module_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes), as 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """Raw VAE latents ``[N, C, h, w]`` of dataset rows, encoded on first use and read after."""

    def __init__(self, index: DatasetIndex, vae: nn.Module, root: str | None = None) -> None:
        dataset_key = hashlib.sha256(os.path.realpath(index.folder).encode()).hexdigest()[:16]
        self.folder = os.path.join(root or os.path.join(cache_dir(), "latents"), dataset_key, module_hash(vae))
        os.makedirs(self.folder, exist_ok=True)
        self.index, self.vae = index, vae

    def _entry(self, row: int) -> str:
        return os.path.join(self.folder, f"{row:06d}.npy")

    def _stamp(self, row: int) -> np.ndarray:
        """The frame file's (size, mtime in ns): an entry is valid only for the file it encoded."""
        stat = os.stat(self.index.frame_path(row))
        return np.array([stat.st_size, stat.st_mtime_ns], dtype=np.int64)

    def _read(self, row: int) -> np.ndarray | None:
        try:
            with open(self._entry(row), "rb") as handle:
                stamp, latent = np.load(handle), np.load(handle)
        except (OSError, ValueError, EOFError):
            return None  # absent, or unreadable: encode again
        return latent if np.array_equal(stamp, self._stamp(row)) else None

    def _write(self, row: int, latent: np.ndarray) -> None:
        handle = tempfile.NamedTemporaryFile(dir=self.folder, suffix=".partial", delete=False)
        try:
            with handle:
                np.save(handle, self._stamp(row))
                np.save(handle, latent)
            os.replace(handle.name, self._entry(row))
        except BaseException:
            os.unlink(handle.name)
            raise

    @torch.no_grad()
    def raw_latents(self, rows: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
        """The VAE's posterior means of ``rows`` (missing ones encoded together, then stored)."""
        found = {int(r): self._read(int(r)) for r in dict.fromkeys(int(r) for r in rows)}
        missing = [r for r, latent in found.items() if latent is None]
        if missing:
            frames = torch.stack([self.index.frame_tensor(r) for r in missing])
            encoded = self.vae.encode(frames.to(device)).latent_dist.mean.float().cpu().numpy()
            for r, latent in zip(missing, encoded):
                self._write(r, latent)
                found[r] = latent
        return torch.as_tensor(np.stack([found[int(r)] for r in rows]), device=device)

