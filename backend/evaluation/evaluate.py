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

import os
import time
from typing import Any

import numpy as np
import torch

from flamediff.errors import FlamediffError
from flamediff.evaluation import metrics as M
from flamediff.evaluation.studies import reference_row, spread

METRIC_KEYS = ("psnr", "ssim", "l1", "lpips", "csim", "aed", "apd", "head_colour", "background_colour", "sharpness")
SELF_KEYS = METRIC_KEYS
SELF_BASELINES = ("copy_reference", "other_identity_gt", "vae_reconstruction")
#: One identity's self-reenactment: driving rows, the frames rendered with its own reference, head masks.
SelfRun = tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]
CROSS_KEYS = ("csim", "aed", "apd")


class EvaluationError(FlamediffError):
    """Bad evaluation inputs (split, dataset, checkpoint); the message says which and why."""


def default_checkpoint() -> str | None:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "demo")
    return path if os.path.isdir(path) else None


def split_identities(index, split: str) -> list[int]:
    all_ids = sorted(int(i) for i in np.unique(index.identity))
    if split == "all":
        return all_ids
    if split not in ("train", "heldout"):
        raise EvaluationError(f"split must be 'all', 'train' or 'heldout', not {split!r}")
    if not os.path.isfile(os.path.join(index.folder, "splits.json")):
        raise EvaluationError(f"{index.folder} has no splits.json: use --split all (or a procedural dataset)")
    from flamediff.data.procedural import read_splits

    chosen = sorted(int(i) for i in read_splits(index.folder).get(split, []) if int(i) in all_ids)
    if not chosen:
        raise EvaluationError(f"{index.folder}: the {split!r} split has no identities in this dataset")
    return chosen


def to_resolution(image: np.ndarray, resolution: int) -> np.ndarray:
    """Ground truth at the model's resolution, prepared like the pipeline's input images."""
    if image.shape[:2] == (resolution, resolution):
        return image
    from flamediff.pipelines.render import image_to_tensor, tensor_to_images

    return tensor_to_images(image_to_tensor(image, resolution))[0]


def coverage_masks(clip, asset, resolution: int, supersample: int = 2) -> np.ndarray:
    """``[N, R, R]`` bool: FLAME mesh coverage >= 0.5 (annotated parameters and camera)."""
    from flamediff.geometry.rasterizer import downsample, rasterize
    from flamediff.flame.model import FlameModel
    from flamediff.formats.conventions import square_crop_intrinsics

    with torch.no_grad():
        vertices = FlameModel(asset).forward_clip(clip).vertices.float()
    image_size = clip.image_size or (resolution, resolution)
    K = square_crop_intrinsics(clip.K, image_size, resolution * supersample)
    faces = torch.as_tensor(np.asarray(asset.faces), dtype=torch.long)
    frags = rasterize(vertices, faces, torch.as_tensor(K, dtype=torch.float32), torch.as_tensor(clip.R, dtype=torch.float32),
                      torch.as_tensor(clip.t, dtype=torch.float32), resolution * supersample, resolution * supersample)
    covered = (frags.face_id >= 0).float()[..., None]
    return (downsample(covered, supersample)[..., 0] >= 0.5).numpy()


def background_mask(image: np.ndarray, threshold: float = 12.0) -> np.ndarray:
    """``[H, W]`` bool: pixels that differ from the corner-estimated background (see the module doc)."""
    x = image.astype(np.float64)
    top = (x[:3, :3].mean((0, 1)) + x[:3, -3:].mean((0, 1))) / 2
    bottom = (x[-3:, :3].mean((0, 1)) + x[-3:, -3:].mean((0, 1))) / 2
    s = np.linspace(0.0, 1.0, x.shape[0])[:, None, None]
    background = top * (1 - s) + bottom * s
    return np.abs(x - background).max(-1) > threshold


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


class _Accumulator:
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


def pose_keys(clip) -> np.ndarray:
    """``[N, D]`` per-sample expression, pose, translation and camera, to find equal poses."""
    fields = ("expression", "global_pose", "neck_pose", "jaw_pose", "left_eye_pose", "right_eye_pose",
              "translation", "K", "R", "t")
    return np.concatenate([np.asarray(getattr(clip, f), np.float64).reshape(clip.num_frames, -1) for f in fields], 1)


def evaluate(checkpoint_or_model, dataset_folder: str, split: str = "all", *, steps: int = 0,
             guidance: float = 0.0, seed: int = 0, max_frames: int | None = 8, max_identities: int | None = None,
             flame_asset=None, estimator: M.ExpressionPoseEstimator | None = None,
             lpips_weights: str | None = None, csim_weights: str | None = None, frames_per_batch: int = 8,
             device: str | None = None, head_mask: str = "auto", progress=None,
             reference_check: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint folder (or a :class:`FlameDiffModel`) on ``dataset_folder``; returns
    a JSON-ready dict (see the module doc). ``flame_asset``: a loaded asset, a folder or None
    (the default asset). ``head_mask``: "auto" (FLAME coverage where the dataset's asset is the
    loaded one, else background difference), "coverage" or "background". ``reference_check``:
    also run :func:`reference_sensitivity` (one more render per identity)."""
    from flamediff.assets import load_asset
    from flamediff.evaluation.reconstruction import reconstruct
    from flamediff.data.dataset import read_dataset
    from flamediff.flame.model import FlameModel
    from flamediff.models.flamediff_model import FlameDiffModel
    from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings

    started = time.perf_counter()
    asset = flame_asset if flame_asset is not None and not isinstance(flame_asset, str) else load_asset(flame_asset)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(checkpoint_or_model, FlameDiffModel):
        model, checkpoint = checkpoint_or_model, "<in-memory model>"
    else:
        checkpoint = str(checkpoint_or_model)
        if not os.path.exists(checkpoint):
            raise EvaluationError(f"checkpoint {checkpoint} does not exist")
        model = FlameDiffModel.from_pretrained(checkpoint, asset=asset, device=device)
    pipeline = FlameDiffPipeline(model, FlameModel(asset), dtype=torch.float32)  # metrics in fp32, also on GPUs
    resolution = model.config.resolution
    index = read_dataset(dataset_folder)
    clip = index.annotations
    identities = split_identities(index, split)
    if max_identities is not None:
        identities = identities[:max_identities]
    notes: list[str] = []
    if head_mask not in ("auto", "coverage", "background"):
        raise EvaluationError(f"head_mask must be 'auto', 'coverage' or 'background', not {head_mask!r}")
    same_asset = bool(index.flame_asset.get("hash")) and index.flame_asset.get("hash") == asset.content_hash
    if head_mask == "coverage" and not same_asset:
        raise EvaluationError(f"{dataset_folder} was made with FLAME asset {index.flame_asset.get('name')!r}, not the "
                              f"loaded {asset.name!r}: its coverage cannot be computed (use head_mask='background')")
    use_coverage = same_asset and head_mask != "background"
    mask_kind = "flame-coverage" if use_coverage else "background-difference"
    if head_mask == "auto" and not use_coverage:
        notes.append("head mask: the dataset's FLAME asset is not the one loaded, so pixels differing from the "
                     "corner-estimated background are used")
    lpips = M.LPIPSMetric(lpips_weights) if lpips_weights else None
    csim = M.CSIMMetric(csim_weights) if csim_weights else None

    def masks_for(rows: np.ndarray, frames: list[np.ndarray]) -> list[np.ndarray]:
        if use_coverage:
            return list(coverage_masks(clip.take_rows(rows), asset, resolution))
        return [background_mask(f) for f in frames]

    def estimate(images: list[np.ndarray]):
        return estimator.estimate(np.stack(images)) if estimator is not None else None

    steps = steps or model.config.default_steps
    guidance = guidance or model.config.default_guidance
    settings = {"steps": steps, "guidance": guidance, "seed": seed, "frames_per_batch": frames_per_batch}
    acc = {("self", name): _Accumulator(SELF_KEYS) for name in ("method", *SELF_BASELINES)}
    acc.update({("cross", name): _Accumulator(CROSS_KEYS) for name in ("method", "copy_reference", "other_identity_gt")})
    estimator_error = _Accumulator(("aed", "apd"))
    skipped_other = 0
    self_runs: dict[int, SelfRun] = {}
    keys = pose_keys(clip)

    def score(kind: str, name: str, outputs: list[np.ndarray], truth: list[np.ndarray] | None,
              masks: list[np.ndarray] | None, identity_ref: list[np.ndarray], drive_est, keep: list[int] | None = None) -> None:
        a = acc[(kind, name)]
        keep = list(range(len(outputs))) if keep is None else keep
        if not keep:
            return
        a.frames += len(keep)
        outputs = [outputs[i] for i in keep]
        for j, i in enumerate(keep):
            if truth is not None:
                a.add(**M.pixel_metrics(outputs[j], truth[i], masks[i]), **appearance_metrics(outputs[j], truth[i], masks[i]))
                if lpips is not None:
                    a.add(lpips=lpips(outputs[j], truth[i], masks[i]))
            if csim is not None:
                a.add(csim=csim(outputs[j], identity_ref[i]))
        if drive_est is not None:
            expression, pose = estimator.estimate(np.stack(outputs))
            for j, i in enumerate(keep):
                a.add(**M.expression_pose_distance(expression[j], pose[j], drive_est[0][i], drive_est[1][i]))

    for position, identity in enumerate(identities):
        samples = index.samples_of_identity(identity)
        ref = reference_row(index, identity)
        reference_raw = index.load_frame(ref)
        reference = to_resolution(reference_raw, resolution)
        # self-reenactment
        drive = spread(samples[samples != ref], max_frames)
        if len(drive) == 0:
            notes.append(f"identity {identity}: a single sample, no self-reenactment")
        else:
            truth = [to_resolution(index.load_frame(int(i)), resolution) for i in drive]
            masks = masks_for(drive, truth)
            out = pipeline(reference_raw, clip.take_rows(drive), RenderSettings(**settings)).frames
            self_runs[identity] = (drive, out, masks)
            drive_est = estimate(truth)
            if drive_est is not None:
                expression, pose = M.procedural_targets(clip.take_rows(drive), drive_est[0].shape[1]) \
                    if isinstance(estimator, M.ProceduralRegressor) else (None, None)
                if expression is not None:
                    for i in range(len(drive)):
                        estimator_error.add(**M.expression_pose_distance(drive_est[0][i], drive_est[1][i],
                                                                         expression[i], pose[i]))
                    estimator_error.frames += len(drive)
            score("self", "method", out, truth, masks, truth, drive_est)
            score("self", "copy_reference", [reference] * len(drive), truth, masks, truth, drive_est)
            score("self", "vae_reconstruction", list(reconstruct(model, np.stack(truth))), truth, masks, truth, drive_est)
            others = np.nonzero(index.identity != identity)[0]
            matches, keep = [], []
            for i, row in enumerate(drive):
                equal = others[np.abs(keys[others] - keys[row]).max(1) <= 1e-6] if len(others) else others
                match = int(equal[0]) if len(equal) else None
                matches.append(None if match is None else to_resolution(index.load_frame(match), resolution))
                if match is not None:
                    keep.append(i)
            skipped_other += len(drive) - len(keep)
            score("self", "other_identity_gt", [m if m is not None else reference for m in matches], truth, masks,
                  truth, drive_est, keep)
        # cross-reenactment
        if len(identities) > 1:
            driver = identities[(position + 1) % len(identities)]
            rows = index.samples_of_identity(driver)
            rows = spread(rows, max_frames)
            drive_frames = [to_resolution(index.load_frame(int(i)), resolution) for i in rows]
            out = pipeline(reference_raw, clip.take_rows(rows),
                           RenderSettings(**settings, shape_from="reference"),
                           reference_shape=clip.shape[ref]).frames
            drive_est = estimate(drive_frames)
            refs = [reference] * len(rows)
            score("cross", "method", out, None, None, refs, drive_est)
            score("cross", "copy_reference", refs, None, None, refs, drive_est)
            score("cross", "other_identity_gt", drive_frames, None, None, refs, drive_est)
        if progress is not None:
            progress(position + 1, len(identities))
    if len(identities) < 2:
        notes.append("one identity only: no cross-reenactment")
    if skipped_other:
        notes.append(f"other_identity_gt (self): {skipped_other} driving frames have no other identity's frame in the "
                     "same pose and were skipped")
    if estimator is None:
        notes.append("AED/APD not measured: no expression/pose estimator given")
    if lpips is None:
        notes.append("LPIPS not measured: no --lpips-weights file")
    if csim is None:
        notes.append("CSIM not measured: no --csim-weights file")

    def section(kind: str) -> dict[str, Any]:
        names = SELF_BASELINES if kind == "self" else ("copy_reference", "other_identity_gt")
        return {"method": acc[(kind, "method")].result(),
                "baselines": {name: acc[(kind, name)].result() for name in names}}

    sensitivity = (reference_sensitivity(pipeline, index, identities, RenderSettings(**settings), masks_for, self_runs)
                   if reference_check and len(identities) > 1 else None)

    return {
        "checkpoint": checkpoint, "dataset": os.path.abspath(dataset_folder), "split": split,
        "identities": identities, "resolution": resolution, "mask": mask_kind,
        "settings": {**settings, "max_frames": max_frames},
        "self": section("self"), "cross": section("cross"), "reference_sensitivity": sensitivity,
        "estimator": None if estimator is None else {"name": type(estimator).__name__,
                                                      "error_on_ground_truth": estimator_error.result()},
        "notes": notes, "seconds": round(time.perf_counter() - started, 2),
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


def reference_sensitivity(pipeline, index, identities: list[int], settings, masks_for,
                          self_runs: dict[int, SelfRun]) -> dict[str, Any]:
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
