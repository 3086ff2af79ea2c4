"""Identity splits of a dataset folder (``splits.json``): which identities train and which are
held out (never sampled in training; the evaluation's "heldout" split)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from flamediff.errors import FlamediffError

SPLITS_FILE = "splits.json"


class SplitsError(FlamediffError):
    """A ``splits.json`` that cannot be read; the message names the file and what it must hold."""


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
    with open(os.path.join(folder, SPLITS_FILE), "w", encoding="utf-8") as handle:
        json.dump(splits, handle, indent=2)


def has_splits(folder: str) -> bool:
    """Whether the dataset folder has a ``splits.json`` (procedural and imported datasets do)."""
    return os.path.isfile(os.path.join(folder, SPLITS_FILE))


def read_splits(folder: str) -> dict[str, Any]:
    """``{"train": [...], "heldout": [...], ...}``: the identity ids of a dataset's splits, each
    list sorted; a file that is not JSON, or whose splits are not lists of integers, is refused."""
    path = os.path.join(folder, SPLITS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            splits = json.load(handle)
        for name in ("train", "heldout"):
            if not isinstance(splits[name], list):
                raise TypeError(f"'{name}' is {type(splits[name]).__name__}, not a list")
            splits[name] = sorted(int(i) for i in splits[name])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SplitsError(f"{path} is unreadable ({type(exc).__name__}: {exc}); it must hold 'train' and "
                          "'heldout' lists of identity ids (flamediff dataset writes one)") from None
    return splits


def identities_of_split(folder: str, split: str) -> list[int] | None:
    """The sorted identity ids of ``split`` ("train" or "heldout"); None without a ``splits.json``."""
    return read_splits(folder)[split] if has_splits(folder) else None
