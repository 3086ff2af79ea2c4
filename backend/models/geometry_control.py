"""Geometry control maps: the control of the paper's ablation (a), rasterised from the FLAME mesh.

The paper argues for its learnable Gaussian feature map against the usual geometric controls,
and its ablation swaps the feature map for FLAME landmarks + normal map + depth map,
concatenated and fed through the same pose guider. A model with ``control="geometry"`` renders
these maps instead of splatting a field, so the baseline trains exactly like the method.
Nothing here learns: the maps come from flamediff's own (CPU) rasteriser
(:mod:`flamediff.geometry`, shared with the procedural dataset) and are returned on
the device of the input vertices.

Channels, OpenCV camera axes (x right, y down, z forward): camera-space unit normal (3),
depth relative to the mesh (1), heatmap of every landmark, occluded or not (1); the normal and
depth channels are 0 on the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flamediff.geometry.mesh import surface_points, vertex_normals
from flamediff.geometry.rasterizer import Fragments, interpolate, project, rasterize

GEOMETRY_CHANNELS = 5    # normal x, y, z | depth | landmark heatmap
LANDMARK_SIGMA = 0.015   # standard deviation of a landmark blob, as a fraction of the resolution


def render_geometry_control(vertices: Tensor, faces: Tensor, viewmats: Tensor, Ks: Tensor, resolution: int,
                            landmark_triangles: Tensor, landmark_barycentrics: Tensor) -> Tensor:
    """Control maps ``[N, R, R, GEOMETRY_CHANNELS]`` of posed meshes ``[N, V, 3]``.

    ``viewmats`` [N, 4, 4] world-to-camera, ``Ks`` [N, 3, 3] in pixels of the R x R map; the
    landmarks are points on the mesh: a triangle's vertex ids ``[L, 3]`` and barycentrics ``[L, 3]``.
    """
    device = vertices.device
    vertices, viewmats, Ks = (x.detach().float().cpu() for x in (vertices, viewmats, Ks))
    faces = faces.long().cpu()
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    camera_vertices, _ = project(vertices, Ks, R, t)
    fragments = rasterize(vertices, faces, Ks, R, t, resolution, resolution)
    landmarks = surface_points(vertices, landmark_triangles.long().cpu(), landmark_barycentrics.float().cpu())
    _, landmark_pixels = project(landmarks, Ks, R, t)
    maps = torch.cat([normal_map(fragments, camera_vertices, faces), depth_map(fragments, camera_vertices),
                      landmark_heatmap(landmark_pixels, resolution)], dim=-1)
    return maps.to(device)


def normal_map(fragments: Fragments, camera_vertices: Tensor, faces: Tensor) -> Tensor:
    """``[N, H, W, 3]`` unit camera-space normals (interpolated vertex normals, renormalised)."""
    normals = interpolate(fragments, vertex_normals(camera_vertices, faces), faces)
    return F.normalize(normals, dim=-1)


def depth_map(fragments: Fragments, camera_vertices: Tensor) -> Tensor:
    """``[N, H, W, 1]`` depth minus the mesh's mean vertex depth, over the mesh's radius (largest
    vertex distance from its centroid): a surface point keeps its value at any camera distance."""
    centre = camera_vertices.mean(1, keepdim=True)
    radius = (camera_vertices - centre).norm(dim=-1).amax(1)
    relative = (fragments.depth - centre[:, :, 2:3]) / radius[:, None, None]
    return torch.where(fragments.mask, relative, torch.zeros_like(relative))[..., None]


def landmark_heatmap(pixels: Tensor, resolution: int) -> Tensor:
    """``[N, R, R, 1]``: the brightest of unit-peak Gaussian blobs at the landmarks ``[N, L, 2]``
    (pixel coordinates, pixel centres at +0.5); sigma is at least a pixel so small maps still
    sample every blob."""
    sigma = max(LANDMARK_SIGMA * resolution, 1.0)
    centres = torch.arange(resolution, dtype=pixels.dtype) + 0.5
    along_x = torch.exp(-(centres - pixels[..., 0:1]) ** 2 / (2 * sigma ** 2))   # [N, L, R]
    along_y = torch.exp(-(centres - pixels[..., 1:2]) ** 2 / (2 * sigma ** 2))
    return torch.einsum("nly,nlx->nlyx", along_y, along_x).amax(1)[..., None]
