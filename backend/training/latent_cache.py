"""Frozen-VAE latents of dataset frames, computed once and kept on disk.

Stages 1 and 2 never train the VAE, so encoding the same frame again at every step it is drawn
repeats work (and the PNG decoding before it). The cache stores each frame's raw posterior mean
(before the latent normalisation, which is a config value) in a :class:`RowCache` keyed by the
VAE weights' hash (a retrained VAE gets a new folder) and stamped by the frame file (a
regenerated frame is encoded again rather than read stale).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from flamediff.data.dataset import DatasetIndex
from flamediff.formats.paths import cache_dir
from flamediff.training.row_cache import RowCache, module_hash

__all__ = ["LatentCache"]


class LatentCache:
    """Raw VAE latents ``[N, C, h, w]`` of dataset rows, encoded on first use and read after."""

    def __init__(self, index: DatasetIndex, vae: nn.Module, root: str | None = None) -> None:
        self.store = RowCache(index, root or os.path.join(cache_dir(), "latents"), module_hash(vae), index.frame_path)
        self.index, self.vae = index, vae

    @property
    def folder(self) -> str:
        return self.store.folder

    @torch.no_grad()
    def raw_latents(self, rows: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
        """The VAE's posterior means of ``rows`` (missing ones encoded together, then stored)."""
        return torch.as_tensor(np.stack(self.store.arrays(rows, self._encode)), device=device)

    def _encode(self, rows: list[int]) -> np.ndarray:
        frames = torch.stack([self.index.frame_tensor(r) for r in rows])
        device = next(self.vae.parameters()).device
        return self.vae.encode(frames.to(device)).latent_dist.mean.float().cpu().numpy()
