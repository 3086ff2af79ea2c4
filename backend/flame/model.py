"""The FLAME model in torch: an asset's arrays as buffers and a batched forward."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from flamediff.flame.lbs import lbs
from flamediff.formats.animation import AnimationClip
from flamediff.formats.flame_asset import FlameAsset
from flamediff.geometry.mesh import surface_points


@dataclass
class FlameOutput:
    vertices: Tensor   # [B, V, 3] metres, FLAME space
    joints: Tensor     # [B, J, 3]
    landmarks: Tensor  # [B, L, 3]


class FlameModel(nn.Module):
    """FLAME forward: shape, expression, joint poses (axis-angle) and translation -> mesh.

    Coefficient vectors may be shorter than the model's (DECA/EMOCA export 100 shape and 50
    expression coefficients): they are zero-padded, which is exactly FLAME's meaning of them.
    """

    # the asset's arrays, registered as buffers in __init__
    v_template: Tensor
    blend_dirs: Tensor
    posedirs: Tensor
    J_regressor: Tensor
    weights: Tensor
    parents: Tensor
    faces: Tensor
    landmark_faces: Tensor
    landmark_barycentrics: Tensor

    def __init__(self, asset: FlameAsset, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_shape, self.num_expression = asset.num_shape, asset.num_expression

        def buffer(name: str, value: np.ndarray, kind: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(value), dtype=kind), persistent=False)

        buffer("v_template", asset.v_template)
        buffer("blend_dirs", np.concatenate([asset.shapedirs, asset.exprdirs], axis=2))
        buffer("posedirs", asset.posedirs)
        buffer("J_regressor", asset.J_regressor)
        buffer("weights", asset.weights)
        buffer("parents", asset.parents, torch.long)
        buffer("faces", asset.faces, torch.long)
        buffer("landmark_faces", asset.landmark_faces, torch.long)
        buffer("landmark_barycentrics", asset.landmark_barycentrics)

    def _pad(self, values: Tensor | None, length: int, name: str, batch: int) -> Tensor:
        if values is None:
            return self.v_template.new_zeros(batch, length)
        if values.shape[-1] > length:
            raise ValueError(f"{name} has {values.shape[-1]} coefficients; this FLAME model has {length}")
        return torch.nn.functional.pad(values.to(self.v_template), (0, length - values.shape[-1])).expand(batch, -1)

    def forward(self, shape: Tensor | None = None, expression: Tensor | None = None,
                pose: Tensor | None = None, translation: Tensor | None = None) -> FlameOutput:
        """``shape`` [B, <=S] or [<=S], ``expression`` [B, <=E], ``pose`` [B, 5, 3] axis-angle in
        FLAME joint order (global, neck, jaw, left eye, right eye), ``translation`` [B, 3]."""
        given = [t for t in (expression, pose, translation) if t is not None]
        batch = given[0].shape[0] if given else (shape.shape[0] if shape is not None and shape.ndim == 2 else 1)
        if shape is not None and shape.ndim == 1:
            shape = shape[None]
        coefficients = torch.cat([self._pad(shape, self.num_shape, "shape", batch),
                                  self._pad(expression, self.num_expression, "expression", batch)], dim=1)
        if pose is None:
            pose = self.v_template.new_zeros(batch, len(self.parents), 3)
        vertices, joints = lbs(coefficients, pose.to(self.v_template), self.v_template, self.blend_dirs,
                               self.posedirs, self.J_regressor, self.parents, self.weights)
        if translation is not None:
            vertices = vertices + translation.to(vertices)[:, None]
            joints = joints + translation.to(vertices)[:, None]
        landmarks = surface_points(vertices, self.faces[self.landmark_faces], self.landmark_barycentrics)
        return FlameOutput(vertices=vertices, joints=joints, landmarks=landmarks)

    def forward_clip(self, clip: AnimationClip) -> FlameOutput:
        """Pose every frame of an animation clip."""
        def tensor(value: np.ndarray) -> Tensor:
            return torch.as_tensor(value, dtype=self.v_template.dtype, device=self.v_template.device)
        return self(shape=tensor(clip.shape), expression=tensor(clip.expression), pose=tensor(clip.pose()),
                    translation=tensor(clip.translation))
