"""The model's pixel convention, in one place: uint8 RGB in [0, 255], channels last (images,
dataset frames) <-> float tensors in [-1, 1], channels first (what the VAE encodes and decodes).
Kept apart from ``flamediff_model`` so that reading frames does not import the networks."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def images_to_tensor(images: np.ndarray, device: str | torch.device | None = None) -> Tensor:
    """``[..., H, W, 3]`` uint8 -> ``[..., 3, H, W]`` float32 in [-1, 1] (on ``device``)."""
    return torch.as_tensor(images, dtype=torch.float32, device=device).movedim(-1, -3) / 127.5 - 1.0


def tensor_to_images(images: Tensor) -> list[np.ndarray]:
    """``[N, 3, H, W]`` in [-1, 1] -> uint8 ``[H, W, 3]`` arrays."""
    scaled = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [frame.permute(1, 2, 0).cpu().numpy() for frame in scaled]
