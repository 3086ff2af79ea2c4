"""The rasteriser's triangle ids of the training frames' posed meshes, computed once.

A model with the reference correspondence (models/correspondence.py) rasterises every drawn
frame's posed FLAME mesh and every reference's, each step, with no gradient: the same meshes
through the same cameras whenever the same rows are drawn. The z-buffer search is most of that
cost and its result, which triangle each pixel shows, is a small integer map. This cache keeps
those maps per dataset row and square size in a :class:`RowCache` keyed by the FLAME model's
tensors (a different head gets a new folder) and stamped by the dataset's ``annotations.npz``
(new poses or cameras are rasterised again); the rest of the fragments (barycentrics, depth) is
recomputed from them with the rasteriser's own step (``fragments_of``), bit-identical to
rasterising again.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from flamediff.data.dataset import DatasetIndex
from flamediff.flame.model import FlameModel
from flamediff.formats.paths import cache_dir
from flamediff.geometry.rasterizer import Fragments, fragments_of, rasterize
from flamediff.training.row_cache import RowCache, tensors_hash

__all__ = ["TriangleIdCache"]


class TriangleIdCache:
    """Fragments of dataset rows' posed meshes at square sizes, the triangle ids read from disk."""

    def __init__(self, index: DatasetIndex, flame: FlameModel, root: str | None = None) -> None:
        self.index, self.root = index, root or os.path.join(cache_dir(), "triangle_ids")
        self.flame_key = tensors_hash(flame.named_buffers())
        self.annotations = os.path.join(index.folder, "annotations.npz")
        self.stores: dict[int, RowCache] = {}

    def store(self, side: int) -> RowCache:
        if side not in self.stores:
            self.stores[side] = RowCache(self.index, self.root, os.path.join(self.flame_key, str(side)),
                                         lambda row: self.annotations)
        return self.stores[side]

    def fragments(self, rows: np.ndarray, vertices: Tensor, faces: Tensor, Ks: Tensor, viewmats: Tensor,
                  side: int) -> Fragments:
        """Fragments ``[N, side, side]`` of rows ``[N]``'s meshes ``[N, V, 3]`` (posed from the
        dataset's annotations) through ``viewmats`` [N, 4, 4] and ``Ks`` [N, 3, 3] (pixels of
        ``side``), as :func:`rasterize` gives them; rows without an entry are rasterised."""
        rows = np.asarray(rows).reshape(-1)
        first = {int(r): i for i, r in reversed(list(enumerate(rows)))}
        R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]

        def rasterise(missing: list[int]) -> np.ndarray:
            at = torch.as_tensor([first[r] for r in missing])
            ids = rasterize(vertices[at], faces, Ks[at], R[at], t[at], side, side).face_id
            return ids.to(torch.int32).numpy()

        ids = torch.as_tensor(np.stack(self.store(side).arrays(rows, rasterise)))
        return fragments_of(ids, vertices, faces, Ks, R, t)
