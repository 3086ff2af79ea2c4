"""Measurements beyond self/cross-reenactment, for the results table (procedural datasets).

- :func:`view_study`: PSNR by view angle. Drive with an identity's wide-pose (multi-view)
  samples; PSNR over the head minus the regions synthetic frames corrupt (their ground truth
  carries the artefacts), bucketed by the absolute yaw of the camera around the head.
- :func:`artefact_study`: does a "real"-label output reproduce the synthetic artefacts? Drive
  with clean ("real") samples and measure, inside the artefact regions (ears, mouth interior,
  from :func:`flamediff.data.procedural.region_masks`), L1 to the clean ground truth and the
  saturation excess (mean of max(0, saturation(output) - saturation(truth))).
- :func:`flicker_study`: temporal consistency. Render each held-out continuous sequence as one
  clip; flicker = mean over consecutive frame pairs of the mean absolute difference (0-1 scale)
  over the union of both head masks; reported for the outputs, the ground truth, and their
  difference (the excess flicker the model adds), with the sequences' PSNR.

The reference of every study is the identity's first "real" sample (a clean, near-frontal
frame), never one of the driving frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from flamediff.data.dataset import DatasetIndex
from flamediff.data.procedural import ProceduralRenderer, region_masks
from flamediff.evaluation import metrics as M
from flamediff.evaluation.selection import ground_truth, reference_row, spread
from flamediff.formats.animation import AnimationClip
from flamediff.formats.rotations import axis_angle_to_matrix

if TYPE_CHECKING:
    from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings

YAW_BUCKETS = ((0.0, 20.0), (20.0, 45.0), (45.0, 90.0))


def view_yaw(clip: AnimationClip) -> np.ndarray:
    """``[N]`` absolute yaw (degrees) of each camera around the head's up axis, in the frame of
    the head's global rotation (0 = frontal)."""
    head = axis_angle_to_matrix(np.asarray(clip.global_pose, np.float64))
    centres = -np.einsum("nji,nj->ni", np.asarray(clip.R, np.float64), np.asarray(clip.t, np.float64))
    direction = np.einsum("nji,nj->ni", head, centres - np.asarray(clip.translation, np.float64))
    return np.degrees(np.abs(np.arctan2(direction[:, 0], direction[:, 2])))


def _render(pipeline: FlameDiffPipeline, index: DatasetIndex, reference: int, rows: np.ndarray,
            settings: RenderSettings) -> list[np.ndarray]:
    return pipeline(index.load_frame(reference), index.annotations.take_rows(rows), settings,
                    reference_pose=index.annotations.take_rows(np.array([reference]))).frames


def _saturation(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float64) / 255.0
    high, low = x.max(-1), x.min(-1)
    return np.where(high > 1e-6, (high - low) / np.maximum(high, 1e-6), 0.0)


def view_study(pipeline: FlameDiffPipeline, index: DatasetIndex, identities: list[int], settings: RenderSettings,
               renderer: ProceduralRenderer, max_frames: int | None = 12) -> dict[str, Any]:
    """PSNR by view yaw bucket (see the module doc)."""
    resolution = pipeline.model.config.resolution
    buckets: dict[str, list[float]] = {f"{lo:.0f}-{hi:.0f}": [] for lo, hi in YAW_BUCKETS}
    for identity in identities:
        rows = index.samples_of_identity(identity)
        rows = spread(rows[index.label[rows] == 1], max_frames)
        if not len(rows):
            continue
        clip = index.annotations.take_rows(rows)
        head, artefact = region_masks(renderer, clip, resolution)
        outputs = _render(pipeline, index, reference_row(index, identity), rows, settings)
        for output, truth, h, a, yaw in zip(outputs, ground_truth(index, rows, resolution), head, artefact,
                                            view_yaw(clip)):
            for lo, hi in YAW_BUCKETS:
                if lo <= yaw < hi or (hi == YAW_BUCKETS[-1][1] and yaw >= hi):
                    buckets[f"{lo:.0f}-{hi:.0f}"].append(M.psnr(output, truth, (h >= 0.5) & (a < 0.05)))
                    break
    return {name: {"psnr": float(np.mean(v)) if v else None, "frames": len(v)} for name, v in buckets.items()}


def artefact_study(pipeline: FlameDiffPipeline, index: DatasetIndex, identities: list[int], settings: RenderSettings,
                   renderer: ProceduralRenderer, max_frames: int | None = 8) -> dict[str, Any]:
    """Artefact-region L1 and saturation excess of clean-driven outputs (see the module doc)."""
    resolution = pipeline.model.config.resolution
    l1: list[float] = []
    excess: list[float] = []
    frames = 0
    for identity in identities:
        reference = reference_row(index, identity)
        rows = index.samples_of_identity(identity)
        rows = spread(rows[(index.label[rows] == 0) & (rows != reference)], max_frames)
        if not len(rows):
            continue
        _, artefact = region_masks(renderer, index.annotations.take_rows(rows), resolution)
        outputs = _render(pipeline, index, reference, rows, settings)
        for output, truth, a in zip(outputs, ground_truth(index, rows, resolution), artefact):
            region = a >= 0.5
            if region.sum() < 4:
                continue
            frames += 1
            l1.append(M.l1(output, truth, region))
            excess.append(float(np.maximum(_saturation(output) - _saturation(truth), 0.0)[region].mean()))
    return {"artefact_l1": float(np.mean(l1)) if l1 else None,
            "saturation_excess": float(np.mean(excess)) if excess else None, "frames": frames}


def flicker(frames: list[np.ndarray], masks: np.ndarray) -> float:
    """Mean absolute difference (0-1) of consecutive frames over the union of their masks."""
    values = []
    for (a, b), (ma, mb) in zip(zip(frames[:-1], frames[1:]), zip(masks[:-1], masks[1:])):
        region = ma | mb
        if region.any():
            values.append(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(-1)[region].mean() / 255.0))
    return float(np.mean(values)) if values else float("nan")


def flicker_study(pipeline: FlameDiffPipeline, index: DatasetIndex, identities: list[int], settings: RenderSettings,
                  renderer: ProceduralRenderer, max_sequences: int | None = 1) -> dict[str, Any]:
    """Flicker of outputs and ground truth over held-out continuous sequences (see the module doc)."""
    resolution = pipeline.model.config.resolution
    ours: list[float] = []
    truths: list[float] = []
    psnrs: list[float] = []
    sequences = 0
    continuous = [rows for rows in index.sequences() if (index.label[rows] == 0).all() and len(rows) > 1]
    for identity in identities:
        real = [rows for rows in continuous if index.identity[rows[0]] == identity]
        reference = reference_row(index, identity)
        for rows in real[:max_sequences]:
            outside = [r for r in index.samples_of_identity(identity) if index.label[r] == 0 and r not in rows]
            ref = int(outside[0]) if outside else reference
            head, _ = region_masks(renderer, index.annotations.take_rows(rows), resolution)
            masks = head >= 0.5
            outputs = _render(pipeline, index, ref, rows, settings)
            truth = ground_truth(index, rows, resolution)
            ours.append(flicker(outputs, masks))
            truths.append(flicker(truth, masks))
            psnrs += [M.psnr(o, t, m) for o, t, m in zip(outputs, truth, masks)]
            sequences += 1
    if not sequences:
        return {"flicker": None, "flicker_ground_truth": None, "flicker_excess": None, "psnr": None, "sequences": 0}
    return {"flicker": float(np.mean(ours)), "flicker_ground_truth": float(np.mean(truths)),
            "flicker_excess": float(np.mean(ours) - np.mean(truths)), "psnr": float(np.mean(psnrs)),
            "sequences": sequences}
