"""The learnable Gaussian embedding: one isotropic Gaussian per covered UV texel.

Each texel carries a neural feature ``f`` [D], an opacity logit and a log scale.  On a posed
FLAME mesh the Gaussian sits at its texel's bound surface point (see ``uv_binding``); its
standard deviation is ``exp(log_scale) * sqrt(area of the posed triangle)``, so it follows the
local stretch of the surface.  Splatting the field with a camera gives the feature map that
controls the diffusion model (METHOD.md section 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flamediff.gaussians.splatting import auto_backend, splat_features
from flamediff.gaussians.uv_binding import UVBinding, local_triangle_scale
from flamediff.geometry.mesh import as_index, surface_points

__all__ = ["GaussianFrame", "UVGaussianField"]


@dataclass
class GaussianFrame:
    """The field on B posed meshes, ready for ``splat_features``."""

    means: Tensor      # [B, N, 3] world (FLAME space), metres
    scales: Tensor     # [B, N] isotropic standard deviation, metres
    opacities: Tensor  # [N] in (0, 1)
    features: Tensor   # [N, D]


class UVGaussianField(nn.Module):
    """Per-texel Gaussian attributes bound to FLAME's UV layout.

    Parameters (all per kept texel, N = ``binding.num_texels``):
    ``features`` [N, D] ~ Normal(0, ``feature_init_std``), ``opacity_logits`` [N] =
    logit(``init_opacity``), ``log_scales`` [N] set so the initial standard deviation is
    ``init_scale`` times one texel's footprint on the rest surface
    (``sqrt(triangle area / (R^2 * triangle UV area))``): neighbouring Gaussians, one texel
    spacing apart, overlap (at one sigma each other's density is 0.61 of the peak).

    The binding (face ids, barycentrics) is kept as non-persistent buffers: ``state_dict`` holds
    only the learnt attributes, and ``config()`` plus the asset's binding rebuild the module
    (``UVGaussianField.from_config``).
    """

    face_ids: Tensor       # [N] buffers, registered in __init__
    barycentrics: Tensor   # [N, 3]
    texel_ij: Tensor       # [N, 2]

    def __init__(self, binding: UVBinding, feature_dim: int = 16, *, init_opacity: float = 0.9,
                 init_scale: float = 1.0, feature_init_std: float = 1e-2,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim <= 0:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
        if not init_scale > 0.0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        n = binding.num_texels
        if n == 0:
            raise ValueError("the UV binding covers no texel; check the asset's UV layout")
        self.resolution = int(binding.resolution)
        self.feature_dim = feature_dim
        self.asset_hash = binding.asset_hash
        self.register_buffer("face_ids", torch.as_tensor(binding.face_ids, dtype=torch.long),
                             persistent=False)
        self.register_buffer("barycentrics", torch.as_tensor(binding.barycentrics, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("texel_ij", torch.as_tensor(binding.texel_ij, dtype=torch.long),
                             persistent=False)
        self.features = nn.Parameter(
            torch.randn(n, feature_dim, generator=generator) * feature_init_std)
        self.opacity_logits = nn.Parameter(
            torch.full((n,), math.log(init_opacity / (1.0 - init_opacity))))
        # std = exp(log_scale) * sqrt(A_3d); one texel's footprint = sqrt(A_3d / (R^2 A_uv))
        uv_area = np.clip(np.asarray(binding.face_uv_area, dtype=np.float64), 1e-30, None)
        log_scale = math.log(init_scale) - math.log(self.resolution) - 0.5 * np.log(uv_area)
        self.log_scales = nn.Parameter(torch.as_tensor(log_scale, dtype=torch.float32))

    @property
    def num_texels(self) -> int:
        return int(self.face_ids.shape[0])

    def config(self) -> dict[str, Any]:
        """What a model folder records to rebuild the module (with the asset's binding)."""
        return {"resolution": self.resolution, "feature_dim": self.feature_dim,
                "num_texels": self.num_texels, "asset_hash": self.asset_hash}

    @classmethod
    def from_config(cls, config: dict[str, Any], binding: UVBinding) -> "UVGaussianField":
        """Rebuild an (untrained) module for ``load_state_dict``; checks the binding matches."""
        if int(config["resolution"]) != binding.resolution:
            raise ValueError(f"config resolution {config['resolution']} != binding {binding.resolution}")
        if int(config["num_texels"]) != binding.num_texels:
            raise ValueError(f"config has {config['num_texels']} texels, the binding "
                             f"{binding.num_texels}: a different FLAME asset or UV layout")
        want = config.get("asset_hash") or ""
        if want and binding.asset_hash and want != binding.asset_hash:
            raise ValueError(f"the model was trained on FLAME asset {want[:12]}, "
                             f"the binding is for {binding.asset_hash[:12]}")
        return cls(binding, int(config["feature_dim"]))

    def scale_factors(self) -> Tensor:
        """exp(log_scales) [N]: std in units of sqrt(posed triangle area)."""
        return self.log_scales.exp()

    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def forward(self, vertices: Tensor, faces: Tensor | np.ndarray) -> GaussianFrame:
        """The Gaussians on posed meshes ``vertices`` [B, V, 3]; ``faces`` [F, 3] as in the asset."""
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"vertices must have shape [B, V, 3], got {tuple(vertices.shape)}")
        means, tri_scale = _surface_frame(vertices, as_index(faces, vertices.device), self.face_ids,
                                          self.barycentrics)
        scales = self.scale_factors().to(vertices.dtype)[None] * tri_scale
        return GaussianFrame(means, scales, self.opacities().to(vertices.dtype),
                             self.features.to(vertices.dtype))

    def render(self, vertices: Tensor, faces: Tensor | np.ndarray, viewmats: Tensor, Ks: Tensor, width: int,
               height: int, **splat_kwargs: Any) -> tuple[Tensor, Tensor]:
        """Splat the field: ``(feature_map [B, H, W, D], alpha [B, H, W, 1])``.

        ``viewmats`` [B, 4, 4] OpenCV world-to-camera (FLAME space), ``Ks`` [B, 3, 3] pixels;
        ``splat_kwargs`` go to ``splat_features`` (backend, near, far, tile_size).
        """
        g = self(vertices, faces)
        return splat_features(g.means, g.scales, g.opacities, g.features, viewmats.to(vertices),
                              Ks.to(vertices), width, height, **splat_kwargs)


def _surface_frame(vertices: Tensor, faces: Tensor, face_ids: Tensor, barycentrics: Tensor) -> tuple[Tensor, Tensor]:
    """Each texel's surface point [B, N, 3] and posed-triangle scale [B, N]
    (``surface_points``, ``local_triangle_scale``): compiled for float32 CPU meshes that need no
    gradient (stage-1 training, inference), the same numbers within float rounding at a
    fraction of the cost."""
    if (vertices.dtype == torch.float32 and auto_backend(vertices.device) == "numba"
            and not (torch.is_grad_enabled() and vertices.requires_grad)):
        from flamediff.gaussians.projection_cpu import surface_frame_cpu

        return surface_frame_cpu(vertices, faces[face_ids], barycentrics)
    return (surface_points(vertices, faces[face_ids], barycentrics),
            local_triangle_scale(vertices, faces, face_ids))
