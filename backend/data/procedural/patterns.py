"""Noise and colour patterns of the procedural dataset: skin textures, backgrounds and the
deterministic per-sample noise the synthetic artefacts are drawn from."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic between: soft region edges."""
    s = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def smooth_noise(generator: torch.Generator, channels: int, cells: tuple[int, int], size: int) -> torch.Tensor:
    """[channels, size, size] noise in about [-1, 1]: a random ``cells`` grid, bicubically upsampled."""
    grid = torch.rand(1, channels, cells[0], cells[1], generator=generator) * 2.0 - 1.0
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0]


def hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    """RGB in [0, 1] of a hue / saturation / value triple (background and cap colours)."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


_NOISE: torch.Tensor | None = None


def artefact_noise() -> torch.Tensor:
    """[2, 256, 256] fixed smooth noise (channel 0 blotch hue, 1 grain) the artefacts sample from,
    at a per-sample random offset and scale (so the pattern changes per sample, deterministically)."""
    global _NOISE
    if _NOISE is None:
        generator = torch.Generator().manual_seed(20261121)
        hue = smooth_noise(generator, 1, (14, 14), 256)
        grain = smooth_noise(generator, 1, (64, 64), 256)
        _NOISE = torch.cat([hue, grain], 0)
    return _NOISE


def seed_fraction(seed: int, salt: int = 0) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, salt)``: a per-sample constant."""
    return float(np.random.default_rng([seed, salt]).uniform())


def scramble_uv(uv: torch.Tensor, seeds: np.ndarray, frame: torch.Tensor, salt: int) -> torch.Tensor:
    """uv mapped through a per-sample random scale and offset, folded back into [0, 1]."""
    params = np.stack([np.random.default_rng([int(x), salt, 3]).uniform([0.7, 0.7, 0, 0], [1.4, 1.4, 1, 1])
                       for x in seeds])
    params = torch.as_tensor(params, dtype=uv.dtype)[frame]
    folded = uv * params[:, :2] + params[:, 2:]
    folded = folded % 2.0
    return torch.where(folded > 1.0, 2.0 - folded, folded)


def hue_colour(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated colours [M, 3] of hues in [0, 1)."""
    angle = hue[:, None] * 2.0 * math.pi - torch.tensor([0.0, 2.0 * math.pi / 3, 4.0 * math.pi / 3])
    colour = torch.cos(angle) * 0.5 + 0.5
    low, high = colour.amin(-1, keepdim=True), colour.amax(-1, keepdim=True)
    return (colour - low) / (high - low + 1e-6)


def noise_colours(noise: torch.Tensor) -> torch.Tensor:
    """Saturated colour blotches [M, 3] from the two noise channels [M, 2]."""
    colour = hue_colour((noise[:, 0] * 2.5) % 1.0)
    return colour * (0.55 + 0.45 * (noise[:, 1:2] * 2.0).clamp(-1, 1))
