"""Head masks of evaluated frames: the annotated FLAME mesh's coverage, or pixels that differ
from a background estimated from the frame's corners (see :mod:`flamediff.evaluation.evaluate`)."""

from __future__ import annotations

import numpy as np
import torch

from flamediff.formats.animation import AnimationClip
from flamediff.formats.flame_asset import FlameAsset


def coverage_masks(clip: AnimationClip, asset: FlameAsset, resolution: int, supersample: int = 2) -> np.ndarray:
    """``[N, R, R]`` bool: FLAME mesh coverage >= 0.5 (annotated parameters and camera)."""
    from flamediff.flame.model import FlameModel
    from flamediff.formats.conventions import square_crop_intrinsics
    from flamediff.geometry.rasterizer import downsample, rasterize

    with torch.no_grad():
        vertices = FlameModel(asset).forward_clip(clip).vertices.float()
    image_size = clip.image_size or (resolution, resolution)
    K = square_crop_intrinsics(clip.K, image_size, resolution * supersample)
    faces = torch.as_tensor(np.asarray(asset.faces), dtype=torch.long)
    frags = rasterize(vertices, faces, torch.as_tensor(K, dtype=torch.float32), torch.as_tensor(clip.R, dtype=torch.float32),
                      torch.as_tensor(clip.t, dtype=torch.float32), resolution * supersample, resolution * supersample)
    covered = (frags.face_id >= 0).float()[..., None]
    return (downsample(covered, supersample)[..., 0] >= 0.5).numpy()


def background_mask(image: np.ndarray, threshold: float = 12.0) -> np.ndarray:
    """``[H, W]`` bool: pixels that differ from the corner-estimated background (see the module doc)."""
    x = image.astype(np.float64)
    top = (x[:3, :3].mean((0, 1)) + x[:3, -3:].mean((0, 1))) / 2
    bottom = (x[-3:, :3].mean((0, 1)) + x[-3:, -3:].mean((0, 1))) / 2
    s = np.linspace(0.0, 1.0, x.shape[0])[:, None, None]
    background = top * (1 - s) + bottom * s
    return np.abs(x - background).max(-1) > threshold
