"""Reference correspondence: the reference's colour at each surface point a frame shows.

Measured on the demo checkpoint (docs/FINDINGS-demo-training.md), the reference attention
carries about a third of the reference's *overall* head colour into a frame, where it should
take each surface point's colour from where that point lies in the reference. Geometry knows
that correspondence exactly when the reference's FLAME parameters and camera are known (the
training data's annotations; a tracked or matched reference photo at render time), so this
control hands it over instead of leaving it to be learned:

- every pixel ``p`` of a frame that the posed mesh covers is a surface point: triangle ``f``,
  barycentrics ``b`` (the rasteriser's fragments);
- the same point on the reference's posed mesh, ``x = sum_i b_i v_ref[f_i]``, projects through
  the reference's camera to pixel ``q = pi(K_ref (R_ref x + t_ref))``;
- it is visible there when its camera depth is within ``DEPTH_TOLERANCE`` (relative) of the
  reference's own depth buffer at ``q``; then the map holds the reference's colour at ``q``
  (bilinear), else nothing.

Channels (``CORRESPONDENCE_CHANNELS``): RGB in [-1, 1] times the known mask, then the known mask
(1 where the frame's pixel has a visible reference colour). Pixels without mesh, points hidden
in the reference, and renders whose reference pose is not known are all zero: training drops the
channels at random so that a model renders without them too. Nothing here learns; it runs on the
CPU rasteriser like the geometry control and returns maps on the vertices' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flamediff.flame.model import FlameModel
from flamediff.formats.animation import AnimationClip
from flamediff.formats.conventions import square_crop_intrinsics, view_matrices
from flamediff.geometry.rasterizer import Fragments, interpolate, project, rasterize

CORRESPONDENCE_CHANNELS = 4   # reference R, G, B (times known) | known
DEPTH_TOLERANCE = 0.02        # a point is visible in the reference within 2 % of the depth there

Rasterise = Callable[[Tensor, Tensor, Tensor, Tensor, int], Fragments]
"""``(vertices [N, V, 3], faces, Ks [N, 3, 3], viewmats [N, 4, 4], side) -> Fragments`` of
``side x side`` pixels: :func:`rasterise_meshes`, or the training cache's (the same fragments,
their triangle ids read back for frames already seen)."""


def rasterise_meshes(vertices: Tensor, faces: Tensor, Ks: Tensor, viewmats: Tensor, side: int) -> Fragments:
    """:func:`rasterize` of posed meshes through world-to-camera matrices, square images."""
    return rasterize(vertices, faces, Ks, viewmats[:, :3, :3], viewmats[:, :3, 3], side, side)


@dataclass(frozen=True)
class ReferenceView:
    """The reference as the correspondence needs it (CPU float tensors): its posed mesh, camera,
    pixels and its own depth buffer, rasterised once however many frames read it.

    One reference (batch 1) serves every frame, or one per frame (batch N)."""

    vertices: Tensor   # [1 or N, V, 3] the reference's posed FLAME mesh (world)
    viewmats: Tensor   # [1 or N, 4, 4] world-to-camera
    Ks: Tensor         # [1 or N, 3, 3] in pixels of ``image``
    image: Tensor      # [1 or N, 3, S, S] in [-1, 1]
    depth: Tensor      # [1 or N, S, S] camera depth of the reference's mesh (inf off it)

    @classmethod
    def of(cls, vertices: Tensor, faces: Tensor, viewmats: Tensor, Ks: Tensor, image: Tensor,
           rasterise: Rasterise = rasterise_meshes) -> "ReferenceView":
        """The view of posed reference meshes ``[R, V, 3]`` through their cameras, with ``image``
        ``[R, 3, S, S]``; rasterises their depth buffers."""
        vertices, viewmats, Ks, image = (x.detach().float().cpu() for x in (vertices, viewmats, Ks, image))
        depth = rasterise(vertices, faces.long().cpu(), Ks, viewmats, image.shape[-1]).depth
        return cls(vertices, viewmats, Ks, image, depth)

    @classmethod
    def posed(cls, flame: FlameModel, clip: AnimationClip, image: Tensor,
              rasterise: Rasterise = rasterise_meshes) -> "ReferenceView":
        """The view of the references ``clip`` describes (FLAME parameters and camera per frame),
        whose pixels ``image`` ``[R, 3, S, S]`` are the centre square of the camera's image."""
        with torch.no_grad():
            vertices = flame.forward_clip(clip).vertices
        viewmats = torch.as_tensor(view_matrices(clip.R, clip.t), dtype=torch.float32)
        Ks = torch.as_tensor(square_crop_intrinsics(clip.K, clip.image_size, image.shape[-1]), dtype=torch.float32)
        return cls.of(vertices, flame.faces, viewmats, Ks, image, rasterise)

    def take(self, rows: Tensor) -> "ReferenceView":
        """The views of ``rows`` (e.g. one reference per sample repeated per frame)."""
        return ReferenceView(*(x[rows] for x in (self.vertices, self.viewmats, self.Ks, self.image, self.depth)))


@torch.no_grad()
def correspondence_maps(vertices: Tensor, faces: Tensor, viewmats: Tensor, Ks: Tensor, resolution: int,
                        reference: ReferenceView, rasterise: Rasterise = rasterise_meshes) -> Tensor:
    """``[N, R, R, CORRESPONDENCE_CHANNELS]`` for posed meshes ``[N, V, 3]`` seen through
    ``viewmats`` [N, 4, 4] and ``Ks`` [N, 3, 3] (pixels of the R x R map)."""
    device = vertices.device
    vertices, viewmats, Ks = (x.detach().float().cpu() for x in (vertices, viewmats, Ks))
    faces = faces.long().cpu()
    count = vertices.shape[0]
    fragments = rasterise(vertices, faces, Ks, viewmats, resolution)
    points = interpolate(fragments, reference.vertices.expand(count, -1, -1), faces).flatten(1, 2)  # [N, R*R, 3]
    seen, colour = _seen_in_reference(points, reference, count)
    known = (fragments.mask.flatten(1) & seen).float()[..., None]                        # [N, R*R, 1]
    maps = torch.cat([colour * known, known], dim=-1)
    return maps.unflatten(1, (resolution, resolution)).to(device)


def _seen_in_reference(points: Tensor, reference: ReferenceView, count: int) -> tuple[Tensor, Tensor]:
    """Whether each world point ``[N, P, 3]`` (on the reference's mesh) is visible in the
    reference ``[N, P]``, and the reference's colour there ``[N, P, 3]``."""
    side = reference.image.shape[-1]
    rotation, translation = reference.viewmats[:, :3, :3], reference.viewmats[:, :3, 3]
    depth_buffer = reference.depth.expand(count, -1, -1).flatten(1)                    # [N, S*S]
    camera_points, pixels = project(points, reference.Ks.expand(count, -1, -1), rotation.expand(count, -1, -1),
                                    translation.expand(count, -1))
    column, row = pixels[..., 0].floor().long(), pixels[..., 1].floor().long()
    inside = (column >= 0) & (column < side) & (row >= 0) & (row < side)
    surface_depth = depth_buffer.gather(1, (row.clamp(0, side - 1) * side + column.clamp(0, side - 1)))
    depth = camera_points[..., 2]
    seen = inside & torch.isfinite(surface_depth) & (depth <= surface_depth * (1.0 + DEPTH_TOLERANCE))
    grid = (pixels / side * 2.0 - 1.0)[:, :, None, :]                                   # [N, P, 1, 2]
    colour = F.grid_sample(reference.image.expand(count, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)                                          # [N, 3, P, 1]
    return seen, colour[..., 0].permute(0, 2, 1)
