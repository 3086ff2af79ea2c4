"""Which samples an evaluation uses: the identities of a split, each identity's reference row,
evenly spread driving rows, and ground truth prepared at the model's resolution."""

from __future__ import annotations

import numpy as np

from flamediff.data.dataset import DatasetIndex
from flamediff.errors import FlamediffError


class EvaluationError(FlamediffError):
    """Bad evaluation inputs (split, dataset, checkpoint); the message says which and why."""


def identities_in_split(index: DatasetIndex, split: str) -> list[int]:
    """The identity ids of ``split`` ("all", or "train" / "heldout" from the dataset's splits.json)
    that have samples in ``index``, ascending."""
    all_ids = sorted(int(i) for i in np.unique(index.identity))
    if split == "all":
        return all_ids
    if split not in ("train", "heldout"):
        raise EvaluationError(f"split must be 'all', 'train' or 'heldout', not {split!r}")
    from flamediff.data.splits import identities_of_split

    in_split = identities_of_split(index.folder, split)
    if in_split is None:
        raise EvaluationError(f"{index.folder} has no splits.json: use --split all (or a procedural dataset)")
    chosen = [i for i in in_split if i in all_ids]
    if not chosen:
        raise EvaluationError(f"{index.folder}: the {split!r} split has no identities in this dataset")
    return chosen


def reference_row(index: DatasetIndex, identity: int) -> int:
    """The identity's first "real" sample (its first sample when it has none)."""
    rows = index.samples_of_identity(identity)
    real = rows[index.label[rows] == 0]
    return int(real[0] if len(real) else rows[0])


def spread(rows: np.ndarray, count: int | None) -> np.ndarray:
    """At most ``count`` of ``rows``, evenly spaced (all when ``count`` is None)."""
    if count is None or len(rows) <= count:
        return rows
    return rows[np.linspace(0, len(rows) - 1, count).round().astype(int)]


def to_resolution(image: np.ndarray, resolution: int) -> np.ndarray:
    """Ground truth at the model's resolution, prepared like the pipeline's input images."""
    if image.shape[:2] == (resolution, resolution):
        return image
    from flamediff.models.pixels import tensor_to_images
    from flamediff.pipelines.render import image_to_tensor

    return tensor_to_images(image_to_tensor(image, resolution))[0]


def ground_truth(index: DatasetIndex, rows: np.ndarray, resolution: int) -> list[np.ndarray]:
    """The frames of ``rows`` at the model's resolution."""
    return [to_resolution(index.load_frame(int(r)), resolution) for r in rows]
