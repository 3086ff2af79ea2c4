"""Per-mesh geometry on batched posed meshes ``[B, V, 3]`` (torch, differentiable)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def as_index(index: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """An index array (faces, face ids) as an int64 tensor on ``device``: assets hold numpy arrays,
    models hold buffers, and torch indexing needs int64."""
    if isinstance(index, Tensor):
        return index.to(device=device, dtype=torch.long)
    return torch.as_tensor(np.asarray(index), dtype=torch.long, device=device)


def surface_points(vertices: Tensor, triangles: Tensor, barycentrics: Tensor) -> Tensor:
    """Points on meshes ``[B, V, 3]`` given by the vertex ids of a triangle ``[L, 3]`` and
    barycentrics ``[L, 3]`` each (FLAME's landmarks, bound Gaussians): ``[B, L, 3]``."""
    return torch.einsum("blkc,lk->blc", vertices[:, triangles], barycentrics.to(vertices.dtype))


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted face normals ``[B, F, 3]`` (length = twice the triangle's area; outward for
    counter-clockwise winding like FLAME's)."""
    return triangle_normals(vertices[:, faces])


def triangle_normals(corners: Tensor) -> Tensor:
    """Area-weighted normals ``[..., 3]`` of triangles ``corners`` [..., 3, 3] (as :func:`face_normals`)."""
    return torch.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :], dim=-1)


def face_areas(vertices: Tensor, faces: Tensor) -> Tensor:
    """Areas ``[B, F]`` of the posed triangles."""
    return 0.5 * torch.linalg.vector_norm(face_normals(vertices, faces), dim=-1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals ``[B, V, 3]`` of ``[B, V, 3]`` meshes."""
    faces = torch.as_tensor(faces, dtype=torch.long)
    normal = face_normals(vertices, faces)
    out = torch.zeros_like(vertices)
    for k in range(3):
        out.index_add_(1, faces[:, k], normal)
    return F.normalize(out, dim=-1, eps=1e-12)
