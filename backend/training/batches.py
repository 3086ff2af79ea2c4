"""What a training step draws: its target frames or clips, one reference per sample, and the
step's random choices, all from one generator seeded by (seed, step, process).

A run resumed from a checkpoint therefore continues exactly where the killed run was, with no
data-loader state to save. The draws happen in one fixed order (rows, references, the noise
seed, the reference-dropout draws, then the correspondence-dropout draws) that checkpoints
written by earlier runs rely on: changing it changes every batch of a resumed run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flamediff.data.dataset import DatasetIndex
from flamediff.formats.animation import AnimationClip
from flamediff.formats.conventions import view_matrices
from flamediff.models.config import LABELS


@dataclass(frozen=True)
class Batch:
    """One process's batch of one step: ``B`` samples of ``F`` frames (``F`` = 1 but in stage 2)."""

    rows: np.ndarray               # [B, F] dataset rows of the target frames
    reference_rows: np.ndarray     # [B] one reference row per sample, of the same identity
    clip: AnimationClip            # the B*F target frames' FLAME parameters and cameras
    viewmats: torch.Tensor         # [B*F, 4, 4] world-to-camera matrices
    label: torch.Tensor            # [B] domain label of each sample
    noise_seed: int                # seeds the step's noise and timesteps (a torch.Generator)
    reference_draws: np.ndarray    # [B] uniform in [0, 1): a reference is dropped where < reference_dropout
    correspondence_draws: np.ndarray  # [B] uniform in [0, 1): the correspondence is dropped where < its dropout
    target: torch.Tensor | None = None     # [B, F, 3, H, W] pixels in [-1, 1], when the images are loaded
    reference: torch.Tensor | None = None  # [B, 3, H, W]

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, F)``."""
        return self.rows.shape  # type: ignore[return-value]


def step_generator(seed: int, step: int, rank: int) -> np.random.RandomState:
    """The generator of ``step`` on process ``rank``."""
    return np.random.RandomState((seed * 1_000_003 + step * 97 + rank) % (2 ** 32))


def training_pool(index: DatasetIndex, domains: tuple[str, ...], heldout: list[int]) -> np.ndarray:
    """Rows training may draw (as targets or references): the chosen domains, held-out identities excluded."""
    chosen = np.isin(index.label, [LABELS[d] for d in domains]) & ~np.isin(index.identity, heldout)
    return np.nonzero(chosen)[0]


def real_sequences(index: DatasetIndex, length: int, pool: np.ndarray) -> list[np.ndarray]:
    """The rows of each real-label sequence of at least ``length`` frames within ``pool``: what
    clips are cut from (the trainer checks there are ``batch_size`` of them before it starts)."""
    return [rows for rows in index.sequences()
            if len(rows) >= length and (index.label[rows] == 0).all() and np.isin(rows, pool).all()]


def _clip_rows(index: DatasetIndex, rng: np.random.RandomState, batch_size: int, length: int,
               pool: np.ndarray | None = None) -> np.ndarray:
    """``[B, length]`` sample rows: single frames (length 1, from ``pool``, default every sample)
    or consecutive frames of distinct real-label sequences."""
    pool = np.arange(len(index)) if pool is None else pool
    if length == 1:
        return pool[rng.choice(len(pool), size=batch_size, replace=False)][:, None]
    clips = real_sequences(index, length, pool)
    chosen = rng.choice(len(clips), size=batch_size, replace=False)
    starts = [rng.randint(0, len(clips[c]) - length + 1) for c in chosen]
    return np.stack([clips[c][s:s + length] for c, s in zip(chosen, starts)])


def draw_batch(index: DatasetIndex, step: int, batch_size: int, seed: int, rank: int,
               length: int = 1, pool: np.ndarray | None = None, load_images: bool = True,
               load_references: bool = False) -> Batch:
    """The batch of ``step`` on process ``rank``: ``[B, F]`` target frames, one reference of the
    same identity per sample, FLAME parameters, cameras, domain labels and the step's random
    draws. The pixels only with ``load_images`` (a latent cache stands in for them otherwise);
    ``load_references``: the references' pixels in any case (the correspondence reads them)."""
    rng = step_generator(seed, step, rank)
    rows = _clip_rows(index, rng, batch_size, length, pool)
    references = []
    for clip_rows in rows:
        same = index.samples_of_identity(int(index.identity[clip_rows[0]]))  # never another split's
        others = np.setdiff1d(same, clip_rows)
        references.append(int(rng.choice(others)) if len(others) else int(clip_rows[0]))
    noise_seed = int(rng.randint(0, 2 ** 31))
    reference_draws = rng.uniform(size=batch_size)
    correspondence_draws = rng.uniform(size=batch_size)
    flat = rows.reshape(-1)
    clip = index.annotations.take_rows(flat)
    images = {}
    if load_images:
        images = {"target": torch.stack([index.frame_tensor(int(r)) for r in flat]).unflatten(0, rows.shape),
                  "reference": torch.stack([index.frame_tensor(r) for r in references])}
    elif load_references:
        images = {"reference": torch.stack([index.frame_tensor(r) for r in references])}
    return Batch(rows=rows, reference_rows=np.array(references), clip=clip,
                 viewmats=torch.as_tensor(view_matrices(clip.R, clip.t), dtype=torch.float32),
                 label=torch.as_tensor(index.label[rows[:, 0]], dtype=torch.long),
                 noise_seed=noise_seed, reference_draws=reference_draws,
                 correspondence_draws=correspondence_draws, **images)
