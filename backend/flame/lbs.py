"""Linear blend skinning for FLAME, as plain torch functions (the smplx ``lbs.py`` layout).

Everything is batched over a leading frame axis ``B``; shapes are given in each docstring.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flamediff.geometry.rotations import axis_angle_to_matrix


def blend_shapes(coefficients: Tensor, directions: Tensor) -> Tensor:
    """``[B, K]`` coefficients times ``[V, 3, K]`` directions -> ``[B, V, 3]`` offsets."""
    return torch.einsum("bk,vck->bvc", coefficients, directions)


def rigid_transforms(rotations: Tensor, joints: Tensor, parents: Tensor) -> tuple[Tensor, Tensor]:
    """Forward kinematics.

    ``rotations`` [B, J, 3, 3] local, ``joints`` [B, J, 3] rest positions, ``parents`` [J].
    Returns posed joints [B, J, 3] and skinning transforms [B, J, 4, 4] (rest -> posed).
    """
    relative = joints.clone()
    relative[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.cat([rotations, relative[..., None]], dim=-1)
    bottom = torch.zeros_like(local[..., :1, :])
    bottom[..., 0, 3] = 1.0
    local = torch.cat([local, bottom], dim=-2)
    chain = [local[:, 0]]
    for j in range(1, len(parents)):
        chain.append(chain[int(parents[j])] @ local[:, j])
    world = torch.stack(chain, dim=1)
    posed_joints = world[..., :3, 3]
    rest = torch.cat([joints, torch.zeros_like(joints[..., :1])], dim=-1)[..., None]
    skinning = world.clone()
    skinning[..., :3, 3] = world[..., :3, 3] - (world @ rest)[..., :3, 0]
    return posed_joints, skinning


def lbs(coefficients: Tensor, pose: Tensor, v_template: Tensor, blend_dirs: Tensor, posedirs: Tensor,
        J_regressor: Tensor, parents: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """FLAME's skinning: identity/expression blend shapes, joint regression, pose correctives, LBS.

    ``coefficients`` [B, K] (shape then expression), ``pose`` [B, J, 3] axis-angle,
    ``blend_dirs`` [V, 3, K], ``posedirs`` [V, 3, 9 (J - 1)], ``J_regressor`` [J, V],
    ``weights`` [V, J]. Returns vertices [B, V, 3] and posed joints [B, J, 3].
    """
    shaped = v_template + blend_shapes(coefficients, blend_dirs)
    joints = torch.einsum("jv,bvc->bjc", J_regressor, shaped)
    rotations = axis_angle_to_matrix(pose)
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    pose_feature = (rotations[:, 1:] - eye).flatten(1)
    posed = shaped + blend_shapes(pose_feature, posedirs)
    posed_joints, transforms = rigid_transforms(rotations, joints, parents)
    per_vertex = torch.einsum("vj,bjrc->bvrc", weights, transforms)
    vertices = (per_vertex[..., :3, :3] @ posed[..., None])[..., 0] + per_vertex[..., :3, 3]
    return vertices, posed_joints
