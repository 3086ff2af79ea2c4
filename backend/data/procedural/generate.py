"""Dataset generation: plan every identity's samples, render them identity by identity (in this
process or in spawned worker processes) and write the dataset folder with its splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from flamediff.data.dataset import DatasetError, DatasetIndex, write_dataset
from flamediff.data.procedural.appearance import NUM_SHAPE, Appearance, HeadRegions, make_appearance
from flamediff.data.procedural.renderer import BATCH, ProceduralRenderer
from flamediff.data.procedural.scene import (
    DEFAULT_LIGHTING,
    LIGHTINGS,
    NUM_EXPRESSION,
    FrameSpecs,
    identity_lighting,
    real_sequence,
    synthetic_views,
)
from flamediff.data.splits import split_identities, write_splits
from flamediff.formats.animation import make_clip
from flamediff.formats.flame_asset import FlameAsset

#: ``progress(done, total)`` frames, called after every rendered identity
Progress = Callable[[int, int], None]

DESCRIPTION = (
    "flamediff procedural dataset: the procedural FLAME head with per-identity shape and appearance. "
    "label 1 (synthetic): multi-view frames (yaw +-80, pitch +-35 deg), one per sequence, with deliberate "
    "artefacts: noisy saturated colour blotches on the ears and a bright saturated mouth interior. "
    "label 0 (real): clean continuous clips (expression, jaw, gaze with blinks, neck and head motion) "
    "from near-frontal drifting cameras. splits.json lists train and held-out identities."
)


@dataclass
class DatasetPlan:
    """What a dataset will hold: per identity its look and frame specs, and per sample its ids."""

    looks: list[Appearance]
    specs: list[FrameSpecs]        # per identity
    identity: np.ndarray
    label: np.ndarray
    sequence: np.ndarray
    frame_in_sequence: np.ndarray


def plan_dataset(regions: HeadRegions, identities: int, views_per_identity: int, sequences_per_identity: int,
                 frames_per_sequence: int, resolution: int, seed: int, persons: list[int] | None = None,
                 lighting: str = DEFAULT_LIGHTING) -> DatasetPlan:
    """Per-identity looks and frame specs; each identity's are drawn from its own seed, so a
    subset of ``persons`` gets exactly the samples the whole dataset gives them. ``lighting``
    "identity" (the default) gives each identity one light, drawn from its own seed, and "frame"
    draws a light per synthetic frame and per clip; every other draw, and so every frame's
    geometry, is the same in both."""
    if lighting not in LIGHTINGS:
        raise DatasetError(f"lighting must be one of {LIGHTINGS}, not {lighting!r}")
    looks, specs, identity, label, sequence, frame_in_sequence = [], [], [], [], [], []
    next_sequence = 0
    for person in range(identities) if persons is None else persons:
        look = make_appearance(person, seed, regions)
        rng = np.random.default_rng([seed, person, 2])
        parts = []
        if views_per_identity:
            parts.append(synthetic_views(rng, views_per_identity, resolution))
            sequence += list(range(next_sequence, next_sequence + views_per_identity))
            frame_in_sequence += [0] * views_per_identity
            next_sequence += views_per_identity
        for _ in range(sequences_per_identity):
            parts.append(real_sequence(rng, frames_per_sequence, resolution))
            sequence += [next_sequence] * frames_per_sequence
            frame_in_sequence += list(range(frames_per_sequence))
            next_sequence += 1
        block = FrameSpecs.concatenate(parts)
        if lighting == "identity":
            block = identity_lighting(np.random.default_rng([seed, person, 3]), block)
        looks.append(look)
        specs.append(block)
        identity += [person] * len(block.label)
        label += block.label.tolist()
    return DatasetPlan(looks=looks, specs=specs, identity=np.asarray(identity, np.int64), label=np.asarray(label, np.int64),
                 sequence=np.asarray(sequence, np.int64), frame_in_sequence=np.asarray(frame_in_sequence, np.int64))


def render_identity(renderer: ProceduralRenderer, look: Appearance, specs: FrameSpecs, resolution: int) -> np.ndarray:
    """All frames ``[N, R, R, 3]`` uint8 of one identity, in batches of ``BATCH``."""
    texture = renderer.bake_texture(look)
    count = len(specs.label)
    return np.concatenate([renderer.render(look, specs.rows(np.arange(start, min(start + BATCH, count))), resolution,
                                           texture=texture).images for start in range(0, count, BATCH)])


_WORKER: dict = {}


def _worker_init(asset: FlameAsset, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["renderer"] = ProceduralRenderer(asset)


def _worker_render(task: tuple[Appearance, FrameSpecs, int]) -> np.ndarray:
    look, specs, resolution = task
    return render_identity(_WORKER["renderer"], look, specs, resolution)


class LazyFrames:
    """The frames of a plan, rendered identity by identity (in this process or in ``workers``
    processes) while ``write_dataset`` saves them in order."""

    def __init__(self, renderer: ProceduralRenderer, plan: DatasetPlan, resolution: int, progress: Progress | None = None,
                 workers: int = 1, threads: int = 1) -> None:
        self.renderer, self.plan, self.resolution, self.progress = renderer, plan, resolution, progress
        self.workers, self.threads = workers, threads
        self.total = int(sum(len(block.label) for block in plan.specs))
        self._first: np.ndarray | None = None

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, sample: int) -> np.ndarray:
        if sample != 0:
            raise IndexError("frames are rendered in order: only frames[0] is random access")
        if self._first is None:
            self._first = render_identity(self.renderer, self.plan.looks[0], self.plan.specs[0], self.resolution)
        return self._first[0]

    def _identities(self) -> Iterator[np.ndarray]:
        tasks = [(look, specs, self.resolution) for look, specs in zip(self.plan.looks, self.plan.specs)]
        if self.workers <= 1 or len(tasks) <= 1:
            for index, (look, specs, resolution) in enumerate(tasks):
                if index == 0 and self._first is not None:
                    yield self._first
                else:
                    yield render_identity(self.renderer, look, specs, resolution)
            return
        import multiprocessing

        if self._first is not None:
            yield self._first
            tasks = tasks[1:]
        context = multiprocessing.get_context("spawn")   # no fork after torch's thread pools exist
        with context.Pool(self.workers, initializer=_worker_init, initargs=(self.renderer.asset, self.threads)) as pool:
            yield from pool.imap(_worker_render, tasks)

    def __iter__(self) -> Iterator[np.ndarray]:
        done = 0
        for images in self._identities():
            yield from images
            done += len(images)
            if self.progress is not None:
                self.progress(done, self.total)


def generate_procedural_dataset(out_dir: str, identities: int, views_per_identity: int, sequences_per_identity: int,
                                frames_per_sequence: int = 14, resolution: int = 128, seed: int = 0,
                                heldout_fraction: float = 0.2, asset: FlameAsset | None = None,
                                progress: Progress | None = None,
                                threads: int | None = 1, workers: int = 1, only_split: str | None = None,
                                lighting: str = DEFAULT_LIGHTING) -> DatasetIndex:
    """Render and write a procedural dataset to ``out_dir`` (see the module docstring); returns its
    index. ``asset`` defaults to :func:`flamediff.assets.load_asset` (the procedural head);
    ``progress(done, total)`` is called after every rendered batch. ``threads``: torch CPU threads
    while rendering (restored afterwards; None leaves torch's setting). One thread is the default:
    the renderer's many small ops gain little from a second thread, and on a busy 2-core machine
    OpenMP threads fighting for cores made it 6x slower (measured). ``workers`` > 1 renders
    identities in that many worker processes (spawned; ``threads`` torch threads each); the
    output is byte-identical to ``workers=1``. ``only_split`` ("train" or "heldout") renders only
    that split's identities, with exactly the samples the whole dataset gives them. ``lighting``:
    see :func:`plan_dataset`."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _generate(out_dir, identities, views_per_identity, sequences_per_identity, frames_per_sequence,
                         resolution, seed, heldout_fraction, asset, progress, workers, threads or 1, only_split,
                         lighting)
    finally:
        torch.set_num_threads(previous)


def _generate(out_dir: str, identities: int, views_per_identity: int, sequences_per_identity: int,
              frames_per_sequence: int, resolution: int, seed: int, heldout_fraction: float,
              asset: FlameAsset | None, progress: Progress | None, workers: int = 1, threads: int = 1,
              only_split: str | None = None, lighting: str = DEFAULT_LIGHTING) -> DatasetIndex:
    if identities < 1 or resolution < 8 or views_per_identity < 0 or sequences_per_identity < 0 or frames_per_sequence < 1:
        raise DatasetError("need identities >= 1, resolution >= 8, views/sequences per identity >= 0 and "
                           "frames per sequence >= 1")
    if views_per_identity + sequences_per_identity == 0:
        raise DatasetError("nothing to render: --views-per-identity and --sequences-per-identity are both 0")
    if asset is None:
        from flamediff.assets import load_asset
        asset = load_asset()
    if only_split not in (None, "train", "heldout"):
        raise DatasetError(f"only_split must be 'train' or 'heldout', not {only_split!r}")
    train, heldout = split_identities(identities, seed, heldout_fraction)
    renderer = ProceduralRenderer(asset)
    plan = plan_dataset(renderer.regions, identities, views_per_identity, sequences_per_identity,
                        frames_per_sequence, resolution, seed,
                        persons=None if only_split is None else {"train": train, "heldout": heldout}[only_split],
                        lighting=lighting)
    specs = FrameSpecs.concatenate(plan.specs)
    shape = np.concatenate([np.repeat(look.shape[None], len(block.label), axis=0)
                            for look, block in zip(plan.looks, plan.specs)])
    pose = specs.pose
    clip = make_clip(len(plan.identity), num_shape=NUM_SHAPE, num_expression=NUM_EXPRESSION,
                     camera=(specs.K, specs.R, specs.t), image_size=(resolution, resolution),
                     flame_asset=asset.identity(), shape=shape, expression=specs.expression,
                     global_pose=pose[:, 0], neck_pose=pose[:, 1], jaw_pose=pose[:, 2], left_eye_pose=pose[:, 3],
                     right_eye_pose=pose[:, 4], translation=specs.translation)
    frames = LazyFrames(renderer, plan, resolution, progress, workers=workers, threads=threads)
    index = write_dataset(out_dir, frames, clip, plan.identity, plan.label, plan.sequence, plan.frame_in_sequence,
                          description=DESCRIPTION, source="procedural")
    write_splits(out_dir, seed, heldout_fraction, train, heldout)
    return index
