"""Self- and cross-reenactment evaluation of a checkpoint on a dataset folder, with baselines.

Protocol (per identity of the chosen split, identities in ascending order):

- reference: the identity's first "real" sample (a clean frame; its first sample if it has none);
- self-reenactment: drive with the identity's other samples (at most ``max_frames``, evenly
  spread over them, so wide-pose and continuous samples both appear) and
  compare with those samples' frames: PSNR / SSIM / L1 (and LPIPS with ``lpips_weights``) over
  the head mask, CSIM(output, ground truth) with ``csim_weights``, AED / APD between the
  estimator's outputs on the rendered frame and on the driving frame with an ``estimator``;
- cross-reenactment: drive with the next identity's samples (cyclically; at most
  ``max_frames``), shape swapped to the reference (``shape_from="reference"``, the reference's
  shape coefficients from the annotations). No ground truth: CSIM(output, reference), AED /
  APD against the driving frame.

Baselines, measured the same way in the same run:

- ``copy_reference``: the output is the reference image;
- ``other_identity_gt``: the ground-truth frame of another identity in the same pose. For self-
  reenactment, a sample of another identity whose expression, pose and camera equal the
  driving sample's (to 1e-6); frames without one are skipped and the count is noted (a
  procedural dataset draws poses per identity, so usually none exists). For cross-
  reenactment, the driving frame itself is that render.

Frames are compared at the model's resolution (ground truth centre-cropped and resized like the
pipeline's inputs). Head mask per frame: where the dataset's FLAME asset is the one loaded, the
coverage of the annotated FLAME mesh rasterised with the annotated camera (what the procedural
renderer reports as ``head_mask``), thresholded at 0.5; else pixels whose colour differs by
more than 12/255 (any channel) from a background estimated from the frame's corners (the mean
of the two top 3x3 corners for the top row, of the two bottom ones for the bottom row, linearly
interpolated over rows: the procedural backgrounds are vertical gradients).

Every metric is a mean over frames (per-frame values first). Metrics not measured (no network
file, no estimator) are ``None``.
"""

from __future__ import annotations

import functools
import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from flamediff.data.dataset import DatasetIndex
from flamediff.evaluation import REFERENCE_POSES
from flamediff.evaluation import metrics as M
from flamediff.evaluation.masks import background_mask, coverage_masks
from flamediff.evaluation.selection import EvaluationError, identities_in_split, reference_row, spread, to_resolution
from flamediff.formats.animation import AnimationClip
from flamediff.formats.flame_asset import FlameAsset

METRIC_KEYS = ("psnr", "ssim", "l1", "lpips", "csim", "aed", "apd", "head_colour", "background_colour", "sharpness")
SELF_KEYS = METRIC_KEYS
SELF_BASELINES = ("copy_reference", "other_identity_gt", "vae_reconstruction")
CROSS_BASELINES = ("copy_reference", "other_identity_gt")
#: One identity's self-reenactment: driving rows, the frames rendered with its own reference, head masks.
SelfRun = tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]
CROSS_KEYS = ("csim", "aed", "apd")
#: An estimator's (expression [N, E], pose [N, P]) on the driving frames, or None without an estimator.
DriveEstimate = tuple[np.ndarray, np.ndarray] | None
MaskFunction = Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]
#: Evaluation renders the camera's whole view, the framing of the dataset's frames it is scored
#: against (RGB, pixel for pixel), not the jobs' default head square in a transparent frame.
FRAMING = "camera"


def default_checkpoint() -> str | None:
    """The shipped demo checkpoint's folder (None when it is not there: a damaged install)."""
    from flamediff.assets import DEMO_CHECKPOINT

    return DEMO_CHECKPOINT if os.path.isdir(DEMO_CHECKPOINT) else None


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


class _Accumulator:
    """Per-frame values of one table row, averaged at the end."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.values: dict[str, list[float]] = {k: [] for k in keys}
        self.frames = 0

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.values[key].append(value)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: _mean(self.values[k]) if self.values[k] else None for k in self.keys}
        out["frames"] = self.frames
        return out


def pose_keys(clip: AnimationClip) -> np.ndarray:
    """``[N, D]`` per-sample expression, pose, translation and camera, to find equal poses."""
    fields = ("expression", "global_pose", "neck_pose", "jaw_pose", "left_eye_pose", "right_eye_pose",
              "translation", "K", "R", "t")
    return np.concatenate([np.asarray(getattr(clip, f), np.float64).reshape(clip.num_frames, -1) for f in fields], 1)


@dataclass
class _Scorer:
    """The table's rows and the optional networks every output is scored with."""

    estimator: M.ExpressionPoseEstimator | None
    lpips: M.LPIPSMetric | None
    csim: M.CSIMMetric | None
    rows: dict[tuple[str, str], _Accumulator] = field(default_factory=dict)
    estimator_error: _Accumulator = field(default_factory=lambda: _Accumulator(("aed", "apd")))

    def __post_init__(self) -> None:
        self.rows.update({("self", name): _Accumulator(SELF_KEYS) for name in ("method", *SELF_BASELINES)})
        self.rows.update({("cross", name): _Accumulator(CROSS_KEYS) for name in ("method", *CROSS_BASELINES)})

    def estimate(self, images: list[np.ndarray]) -> DriveEstimate:
        return self.estimator.estimate(np.stack(images)) if self.estimator is not None else None

    def score(self, kind: str, name: str, outputs: list[np.ndarray], truth: list[np.ndarray] | None,
              masks: list[np.ndarray] | None, identity_ref: list[np.ndarray], drive_est: DriveEstimate,
              keep: list[int] | None = None) -> None:
        """Add the frames ``keep`` (default all) of ``outputs`` to row ``(kind, name)``: pixel and
        colour metrics against ``truth`` (when given), CSIM against ``identity_ref``, AED / APD
        against the driving frames' estimates."""
        row = self.rows[(kind, name)]
        keep = list(range(len(outputs))) if keep is None else keep
        if not keep:
            return
        row.frames += len(keep)
        outputs = [outputs[i] for i in keep]
        for j, i in enumerate(keep):
            if truth is not None and masks is not None:
                row.add(**M.pixel_metrics(outputs[j], truth[i], masks[i]),
                        **appearance_metrics(outputs[j], truth[i], masks[i]))
                if self.lpips is not None:
                    row.add(lpips=self.lpips(outputs[j], truth[i], masks[i]))
            if self.csim is not None:
                row.add(csim=self.csim(outputs[j], identity_ref[i]))
        if drive_est is not None and self.estimator is not None:
            expression, pose = self.estimator.estimate(np.stack(outputs))
            for j, i in enumerate(keep):
                row.add(**M.expression_pose_distance(expression[j], pose[j], drive_est[0][i], drive_est[1][i]))

    def score_estimator(self, clip: AnimationClip, drive_est: DriveEstimate) -> None:
        """The procedural regressor's own error on the driving frames (their annotations are the truth)."""
        if drive_est is None or not isinstance(self.estimator, M.ProceduralRegressor):
            return
        expression, pose = M.procedural_targets(clip, drive_est[0].shape[1])
        for i in range(clip.num_frames):
            self.estimator_error.add(**M.expression_pose_distance(drive_est[0][i], drive_est[1][i], expression[i], pose[i]))
        self.estimator_error.frames += clip.num_frames

    def section(self, kind: str) -> dict[str, Any]:
        names = SELF_BASELINES if kind == "self" else CROSS_BASELINES
        return {"method": self.rows[(kind, "method")].result(),
                "baselines": {name: self.rows[(kind, name)].result() for name in names}}


@dataclass
class _Reference:
    """One identity's reference: its row, the image as stored and at the model's resolution."""

    row: int
    raw: np.ndarray
    small: np.ndarray


@dataclass
class _Evaluation:
    """One run of :func:`evaluate`: the pipeline, the data, the scorer and what the run noted."""

    pipeline: Any
    index: DatasetIndex
    asset: FlameAsset
    scorer: _Scorer
    settings: dict[str, Any]
    use_coverage: bool
    max_frames: int | None
    reference_poses: str = "annotated"
    tracked_poses: dict[int, AnimationClip | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    self_runs: dict[int, SelfRun] = field(default_factory=dict)
    skipped_other: int = 0

    @property
    def resolution(self) -> int:
        return self.pipeline.model.config.resolution

    def masks_for(self, rows: np.ndarray, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Head masks of the samples ``rows`` (their frames ``frames``), see the module doc."""
        if self.use_coverage:
            return list(coverage_masks(self.index.annotations.take_rows(rows), self.asset, self.resolution))
        return [background_mask(f) for f in frames]

    def render(self, reference: _Reference, rows: np.ndarray, swap_shape: bool = False) -> list[np.ndarray]:
        """The method's frames for the samples ``rows``; ``swap_shape``: the reference's shape
        instead of the driving samples' (cross-reenactment)."""
        from flamediff.pipelines.render import RenderSettings

        clip = self.index.annotations.take_rows(rows)
        pose = self.reference_pose(reference.row)
        if not swap_shape:
            return self.pipeline(reference.raw, clip, RenderSettings(**self.settings, framing=FRAMING),
                                 reference_pose=pose).frames
        return self.pipeline(reference.raw, clip, RenderSettings(**self.settings, framing=FRAMING, shape_from="reference"),
                             reference_shape=self.index.annotations.shape[reference.row], reference_pose=pose).frames

    def reference_pose(self, row: int) -> AnimationClip | None:
        """The reference frame's pose and camera for a correspondence checkpoint: the dataset's
        annotation, the tracker's fit of the frame (what a server job gets from a photo), or none."""
        if self.reference_poses == "none" or not self.pipeline.model.config.correspondence:
            return None
        if self.reference_poses == "annotated":
            return self.index.annotations.take_rows(np.array([row]))
        if row not in self.tracked_poses:
            from PIL import Image

            from flamediff.tracking.track import track_reference_pose

            buffer = io.BytesIO()
            Image.fromarray(self.index.load_frame(row)).save(buffer, format="PNG")
            self.tracked_poses[row], note = track_reference_pose(buffer.getvalue(), "png", self.asset)
            if note:
                self.notes.append(f"dataset row {row}: {note}")
        return self.tracked_poses[row]

    @functools.cached_property
    def pose_keys(self) -> np.ndarray:
        return pose_keys(self.index.annotations)

    def frames(self, rows: np.ndarray) -> list[np.ndarray]:
        return [to_resolution(self.index.load_frame(int(i)), self.resolution) for i in rows]

    def reference(self, identity: int) -> _Reference:
        row = reference_row(self.index, identity)
        raw = self.index.load_frame(row)
        return _Reference(row, raw, to_resolution(raw, self.resolution))

    def self_reenactment(self, identity: int, reference: _Reference) -> None:
        """Drive with the identity's other samples and score the method and the self baselines."""
        from flamediff.evaluation.reconstruction import reconstruct

        samples = self.index.samples_of_identity(identity)
        drive = spread(samples[samples != reference.row], self.max_frames)
        if len(drive) == 0:
            self.notes.append(f"identity {identity}: a single sample, no self-reenactment")
            return
        truth = self.frames(drive)
        masks = self.masks_for(drive, truth)
        out = self.render(reference, drive)
        self.self_runs[identity] = (drive, out, masks)
        drive_est = self.scorer.estimate(truth)
        self.scorer.score_estimator(self.index.annotations.take_rows(drive), drive_est)
        score = self.scorer.score
        score("self", "method", out, truth, masks, truth, drive_est)
        score("self", "copy_reference", [reference.small] * len(drive), truth, masks, truth, drive_est)
        score("self", "vae_reconstruction", list(reconstruct(self.pipeline.model, np.stack(truth))), truth, masks,
              truth, drive_est)
        matches, keep = self.same_pose_frames(identity, drive)
        self.skipped_other += len(drive) - len(keep)
        score("self", "other_identity_gt", [m if m is not None else reference.small for m in matches], truth, masks,
              truth, drive_est, keep)

    def same_pose_frames(self, identity: int, drive: np.ndarray) -> tuple[list[np.ndarray | None], list[int]]:
        """Per driving row, another identity's frame in the same pose (None without one), and the
        positions of the rows that have one."""
        keys = self.pose_keys
        others = np.nonzero(self.index.identity != identity)[0]
        matches: list[np.ndarray | None] = []
        keep: list[int] = []
        for i, row in enumerate(drive):
            equal = others[np.abs(keys[others] - keys[row]).max(1) <= 1e-6] if len(others) else others
            match = int(equal[0]) if len(equal) else None
            matches.append(None if match is None else to_resolution(self.index.load_frame(match), self.resolution))
            if match is not None:
                keep.append(i)
        return matches, keep

    def cross_reenactment(self, driver: int, reference: _Reference) -> None:
        """Drive with identity ``driver``'s samples, shape swapped to the reference's."""
        rows = spread(self.index.samples_of_identity(driver), self.max_frames)
        drive_frames = self.frames(rows)
        out = self.render(reference, rows, swap_shape=True)
        drive_est = self.scorer.estimate(drive_frames)
        refs = [reference.small] * len(rows)
        self.scorer.score("cross", "method", out, None, None, refs, drive_est)
        self.scorer.score("cross", "copy_reference", refs, None, None, refs, drive_est)
        self.scorer.score("cross", "other_identity_gt", drive_frames, None, None, refs, drive_est)

    def closing_notes(self, identities: list[int]) -> None:
        if len(identities) < 2:
            self.notes.append("one identity only: no cross-reenactment")
        if self.skipped_other:
            self.notes.append(f"other_identity_gt (self): {self.skipped_other} driving frames have no other identity's "
                              "frame in the same pose and were skipped")
        for missing, note in ((self.scorer.estimator, "AED/APD not measured: no expression/pose estimator given"),
                              (self.scorer.lpips, "LPIPS not measured: no --lpips-weights file"),
                              (self.scorer.csim, "CSIM not measured: no --csim-weights file")):
            if missing is None:
                self.notes.append(note)


def _load_model(checkpoint_or_model: Any, asset: FlameAsset, device: str) -> tuple[Any, str]:
    """The model and how to name it in the result."""
    from flamediff.models.flamediff_model import FlameDiffModel

    if isinstance(checkpoint_or_model, FlameDiffModel):
        return checkpoint_or_model, "<in-memory model>"
    checkpoint = str(checkpoint_or_model)
    if not os.path.exists(checkpoint):
        raise EvaluationError(f"checkpoint {checkpoint} does not exist")
    return FlameDiffModel.from_pretrained(checkpoint, asset=asset, device=device), checkpoint


def _use_coverage(index: DatasetIndex, asset: FlameAsset, head_mask: str, dataset_folder: str) -> bool:
    """Whether head masks come from FLAME coverage (else from the background difference)."""
    if head_mask not in ("auto", "coverage", "background"):
        raise EvaluationError(f"head_mask must be 'auto', 'coverage' or 'background', not {head_mask!r}")
    same_asset = bool(index.flame_asset.get("hash")) and index.flame_asset.get("hash") == asset.content_hash
    if head_mask == "coverage" and not same_asset:
        raise EvaluationError(f"{dataset_folder} was made with FLAME asset {index.flame_asset.get('name')!r}, not the "
                              f"loaded {asset.name!r}: its coverage cannot be computed (use head_mask='background')")
    return same_asset and head_mask != "background"


def evaluate(checkpoint_or_model: Any, dataset_folder: str, split: str = "all", *, steps: int = 0,
             guidance: float = 0.0, seed: int = 0, max_frames: int | None = 8, max_identities: int | None = None,
             flame_asset: FlameAsset | str | None = None, estimator: M.ExpressionPoseEstimator | None = None,
             lpips_weights: str | None = None, csim_weights: str | None = None, frames_per_batch: int = 8,
             device: str | None = None, head_mask: str = "auto", progress: Callable[[int, int], None] | None = None,
             reference_check: bool = True, reference_poses: str = "annotated") -> dict[str, Any]:
    """Evaluate a checkpoint folder (or a :class:`FlameDiffModel`) on ``dataset_folder``; returns
    a JSON-ready dict (see the module doc). ``flame_asset``: a loaded asset, a folder or None
    (the default asset). ``head_mask``: "auto" (FLAME coverage where the dataset's asset is the
    loaded one, else background difference), "coverage" or "background". ``reference_check``:
    also run :func:`reference_sensitivity` (one more render per identity). ``reference_poses``:
    what a correspondence checkpoint reads of each reference, one of REFERENCE_POSES."""
    from flamediff.assets import load_asset
    from flamediff.data.dataset import read_dataset
    from flamediff.flame.model import FlameModel
    from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings

    started = time.perf_counter()
    asset = flame_asset if flame_asset is not None and not isinstance(flame_asset, str) else load_asset(flame_asset)
    model, checkpoint = _load_model(checkpoint_or_model, asset, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = FlameDiffPipeline(model, FlameModel(asset), dtype=torch.float32)  # metrics in fp32, also on GPUs
    index = read_dataset(dataset_folder)
    identities = identities_in_split(index, split)[:max_identities]
    use_coverage = _use_coverage(index, asset, head_mask, dataset_folder)
    settings = {"steps": steps or model.config.default_steps, "guidance": guidance or model.config.default_guidance,
                "seed": seed, "frames_per_batch": frames_per_batch}
    scorer = _Scorer(estimator, M.LPIPSMetric(lpips_weights) if lpips_weights else None,
                     M.CSIMMetric(csim_weights) if csim_weights else None)
    if reference_poses not in REFERENCE_POSES:
        raise ValueError(f"reference_poses must be one of {', '.join(REFERENCE_POSES)}, not {reference_poses!r}")
    run = _Evaluation(pipeline, index, asset, scorer, settings, use_coverage, max_frames, reference_poses)
    if head_mask == "auto" and not use_coverage:
        run.notes.append("head mask: the dataset's FLAME asset is not the one loaded, so pixels differing from the "
                         "corner-estimated background are used")
    for position, identity in enumerate(identities):
        reference = run.reference(identity)
        run.self_reenactment(identity, reference)
        if len(identities) > 1:
            run.cross_reenactment(identities[(position + 1) % len(identities)], reference)
        if progress is not None:
            progress(position + 1, len(identities))
    run.closing_notes(identities)
    sensitivity = (reference_sensitivity(pipeline, index, identities, RenderSettings(**settings, framing=FRAMING),
                                         run.masks_for, run.self_runs) if reference_check and len(identities) > 1
                   else None)
    return {
        "checkpoint": checkpoint, "dataset": os.path.abspath(dataset_folder), "split": split,
        "identities": identities, "resolution": model.config.resolution,
        "mask": "flame-coverage" if use_coverage else "background-difference",
        "settings": {**settings, "max_frames": max_frames},
        "self": scorer.section("self"), "cross": scorer.section("cross"), "reference_sensitivity": sensitivity,
        "estimator": None if estimator is None else {"name": type(estimator).__name__,
                                                      "error_on_ground_truth": scorer.estimator_error.result()},
        "notes": run.notes, "seconds": round(time.perf_counter() - started, 2),
    }


def appearance_metrics(output: np.ndarray, truth: np.ndarray, head: np.ndarray) -> dict[str, float]:
    """Mean-colour error of the head and of the background (0-255 levels) and the head's
    sharpness ratio (see :mod:`flamediff.evaluation.metrics`)."""
    return {"head_colour": M.colour_error(output, truth, head), "background_colour": M.colour_error(output, truth, ~head),
            "sharpness": M.sharpness_ratio(output, truth, head)}


def _region_colours(image: np.ndarray, head: np.ndarray) -> np.ndarray:
    """``[2, 3]`` mean RGB of the head and of the background."""
    x = image.astype(np.float64)
    return np.stack([x[head].mean(0), x[~head].mean(0)])


def reference_sensitivity(pipeline: Any, index: DatasetIndex, identities: list[int], settings: Any,
                          masks_for: MaskFunction, self_runs: dict[int, SelfRun]) -> dict[str, Any]:
    """Same drive, two references: do the outputs' colours follow the reference?

    Identity ``k``'s drive, already rendered with its own reference (``self_runs``, from the
    self-reenactment), is rendered again with identity ``k+1``'s.
    ``ratio``: |change of the outputs' mean colour| / |change of the references' mean colour|
    for head and background (1: the colours move as far as the references differ; 0: the
    reference is ignored). ``follows``: the fraction of frames whose output colour is nearer its
    own reference's than the other reference's (head and background separately).
    """
    ratios, follows = [], []
    resolution = pipeline.model.config.resolution
    for position, identity in enumerate(identities):
        if identity not in self_runs:
            continue
        drive, own_frames, drive_masks = self_runs[identity]
        other = identities[(position + 1) % len(identities)]
        rows = np.asarray([reference_row(index, identity), reference_row(index, other)])
        refs = [index.load_frame(int(r)) for r in rows]
        small = [to_resolution(ref, resolution) for ref in refs]
        ref_colours = [_region_colours(ref, mask) for ref, mask in zip(small, masks_for(rows, small))]
        outputs = [own_frames, pipeline(refs[1], index.annotations.take_rows(drive), settings).frames]
        for frame, head in enumerate(drive_masks):
            own, swapped = (_region_colours(out[frame], head) for out in outputs)
            ref_change = np.linalg.norm(ref_colours[1] - ref_colours[0], axis=1)
            ratios.append(np.linalg.norm(swapped - own, axis=1) / np.maximum(ref_change, 1e-6))
            nearer = [np.linalg.norm(out - ref_colours[k], axis=1) < np.linalg.norm(out - ref_colours[1 - k], axis=1)
                      for k, out in enumerate((own, swapped))]
            follows.append(np.mean(nearer, axis=0))
    ratio, follow = np.mean(ratios, axis=0), np.mean(follows, axis=0)
    return {"pairs": len(identities), "frames": len(ratios),
            "head_ratio": float(ratio[0]), "background_ratio": float(ratio[1]),
            "head_follows": float(follow[0]), "background_follows": float(follow[1])}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate`'s result."""
    def cell(value: Any) -> str:
        return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    lines = [(f"checkpoint {result['checkpoint']}  data {result['dataset']}  split {result['split']}  "
             f"identities {len(result['identities'])}  mask {result['mask']}")]
    header = f"{'':<8} {'row':<18} {'frames':>6} " + " ".join(f"{k:>8}" for k in METRIC_KEYS)
    lines += [header, "-" * len(header)]
    for kind in ("self", "cross"):
        rows = [("method", result[kind]["method"])] + list(result[kind]["baselines"].items())
        for name, values in rows:
            lines.append(f"{kind:<8} {name:<18} {values['frames']:>6} " +
                         " ".join(f"{cell(values.get(k)):>8}" for k in METRIC_KEYS))
    if result.get("estimator"):
        err = result["estimator"]["error_on_ground_truth"]
        lines.append(f"estimator {result['estimator']['name']} on ground-truth renders: AED {cell(err['aed'])} "
                     f"APD {cell(err['apd'])} ({err['frames']} frames)")
    sensitivity = result.get("reference_sensitivity")
    if sensitivity:
        lines.append(f"reference sensitivity ({sensitivity['frames']} frames, two references each): colour change ratio "
                     f"head {sensitivity['head_ratio']:.2f} background {sensitivity['background_ratio']:.2f}; "
                     f"nearer its own reference: head {sensitivity['head_follows']:.0%} "
                     f"background {sensitivity['background_follows']:.0%}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
