"""Identity splits of a dataset folder (``splits.json``): which identities train and which are
held out (never sampled in training; the evaluation's "heldout" split)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def split_identities(identities: int, seed: int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic train / held-out split by identity (at least one of each when possible)."""
    order = np.random.default_rng([seed, 7]).permutation(identities)
    heldout = int(round(heldout_fraction * identities))
    if identities >= 2 and heldout_fraction > 0:
        heldout = min(max(heldout, 1), identities - 1)
    return sorted(order[heldout:].tolist()), sorted(order[:heldout].tolist())


def write_splits(folder: str, seed: int, heldout_fraction: float, train: list[int], heldout: list[int],
                 **extra: Any) -> None:
    """Write ``splits.json`` beside ``dataset.json`` (``extra``: more JSON fields, e.g. identity names)."""
    splits = {"seed": seed, "heldout_fraction": heldout_fraction, "train": train, "heldout": heldout, **extra}
    with open(os.path.join(folder, "splits.json"), "w", encoding="utf-8") as handle:
        json.dump(splits, handle, indent=2)


def read_splits(folder: str) -> dict[str, Any]:
    """``{"train": [...], "heldout": [...], ...}``: the identity ids of a dataset's splits."""
    with open(os.path.join(folder, "splits.json"), encoding="utf-8") as handle:
        return json.load(handle)
