"""Tracking accuracy on procedural renders, whose FLAME parameters and camera are known.

Shared by tests/test_tracking.py (error bounds) and benchmarks/tracking_figures.py (docs/TRACKING.md):
render the procedural head (``flamediff.data.procedural``) with random identity, expression, jaw,
gaze and a camera at a chosen yaw, run MediaPipe and the fit, and compare

- landmark reprojection error: fitted iBUG landmarks against their true projection (pixels);
- vertex error: the fitted and the true mesh with the head pose removed (shape, expression, jaw
  and eyes only), mean over all vertices and over the face (``face_region``: what the landmarks
  can see), in mm (the procedural head is in metres like FLAME), each beside the same error of
  the rest head (all coefficients zero) as the do-nothing baseline;
- pose error: the angle between the fitted and the true head rotation seen from the camera
  (camera rotation x global x neck), in degrees.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from flamediff.data import procedural
from flamediff.flame.model import FlameModel
from flamediff.formats.conventions import project_points
from flamediff.formats.flame_asset import FlameAsset
from flamediff.geometry.mesh import vertex_normals
from flamediff.tracking.fit import FitResult, FitSettings, LandmarkFitter
from flamediff.tracking.landmarks import LandmarkDetector

RENDER_BATCH = 16  # frames per render call (bounds memory for long clips)


@dataclass
class ProceduralCase:
    """One render with its truth: shape ``[S]``, expression ``[E]``, pose ``[5, 3]``, camera."""

    image: np.ndarray
    yaw: float
    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray


@dataclass
class CaseErrors:
    yaw: float
    found: bool
    landmark_px: float = float("nan")
    vertex_mm: float = float("nan")
    pose_degrees: float = float("nan")
    face_mm: float = float("nan")
    rest_vertex_mm: float = float("nan")       # the same measures for the rest head (all coefficients zero)
    rest_face_mm: float = float("nan")


def _cases(renderer: procedural.ProceduralRenderer, look: procedural.Appearance, specs: procedural.FrameSpecs,
           resolution: int) -> list[ProceduralCase]:
    texture = renderer.bake_texture(look)
    images = np.concatenate([renderer.render(look, specs.rows(slice(start, start + RENDER_BATCH)), resolution,
                                             texture=texture).images
                             for start in range(0, len(specs.label), RENDER_BATCH)])
    yaws = [float(np.degrees(np.arctan2(-R[2, 0], -R[2, 2]))) for R in specs.R]  # camera left of the head: +
    return [ProceduralCase(image=image, yaw=yaw, shape=look.shape, expression=specs.expression[i],
                           pose=specs.pose[i], K=specs.K[i], R=specs.R[i], t=specs.t[i])
            for i, (image, yaw) in enumerate(zip(images, yaws))]


def procedural_cases(asset: FlameAsset, identity: int, yaws: list[float], resolution: int = 256,
                     seed: int = 3) -> list[ProceduralCase]:
    """Clean renders of one procedural identity with random expressions (the dataset's multi-view
    parameters), at the given yaws (pitch +-10 deg)."""
    renderer = procedural.ProceduralRenderer(asset)
    plan = procedural.plan_dataset(renderer.regions, 1, len(yaws), 0, 1, resolution, seed, persons=[identity])
    look, specs = plan.looks[0], plan.specs[0]
    rng = np.random.default_rng([seed, identity, 11])
    cameras = [procedural.orbit_camera(yaw, pitch) for yaw, pitch in zip(yaws, rng.uniform(-10, 10, len(yaws)))]
    specs.R, specs.t = np.stack([c[0] for c in cameras]), np.stack([c[1] for c in cameras])
    specs.label[:] = procedural.LABEL_REAL  # clean rendering: no deliberate ear / mouth artefacts
    return _cases(renderer, look, specs, resolution)


def procedural_clip(asset: FlameAsset, identity: int, frames: int, resolution: int = 256,
                    seed: int = 3) -> list[ProceduralCase]:
    """A continuous clip of one identity (the dataset's "real" sequences: smooth expression, jaw,
    gaze, blinks, head motion, a near-frontal drifting camera)."""
    renderer = procedural.ProceduralRenderer(asset)
    plan = procedural.plan_dataset(renderer.regions, 1, 0, 1, frames, resolution, seed, persons=[identity])
    return _cases(renderer, plan.looks[0], plan.specs[0], resolution)


def head_rotation(pose: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The head's rotation seen from the camera: ``R @ R_global @ R_neck``."""
    rotations = Rotation.from_rotvec(np.asarray(pose, np.float64)[:2]).as_matrix()
    return R @ rotations[0] @ rotations[1]


def rotation_angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    cosine = (np.trace(a.T @ b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def _posed(model: FlameModel, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray,
           translation: np.ndarray | None = None):
    def tensor(value: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(value), dtype=torch.float32)[None]
    with torch.no_grad():
        return model(shape=tensor(shape), expression=tensor(expression), pose=tensor(pose),
                     translation=None if translation is None else tensor(translation))


def face_region(asset: FlameAsset) -> np.ndarray:
    """Rest vertices that face forward and lie on the front half of the head: the face."""
    rest = torch.as_tensor(asset.v_template, dtype=torch.float32)[None]
    normals = vertex_normals(rest, torch.as_tensor(asset.faces))[0].numpy()
    return np.flatnonzero((normals[:, 2] > 0.3) & (asset.v_template[:, 2] > np.median(asset.v_template[:, 2])))


def _mean_mm(a: torch.Tensor, b: torch.Tensor, rows: np.ndarray | slice = slice(None)) -> float:
    return float((a[rows] - b[rows]).norm(dim=1).mean()) * 1000.0


def case_errors(model: FlameModel, case: ProceduralCase, fit: FitResult, face: np.ndarray,
                frame: int = 0) -> CaseErrors:
    """Errors of frame ``frame`` of ``fit`` against the case's truth (see the module docstring);
    ``face``: the vertex ids of :func:`face_region`."""
    truth = _posed(model, case.shape, case.expression, case.pose)
    fitted = _posed(model, fit.shape, fit.expression[frame], fit.pose[frame], fit.translation[frame])
    truth_px = project_points(truth.landmarks[0].double().numpy(), case.K, case.R, case.t)[0]
    fitted_px = project_points(fitted.landmarks[0].double().numpy(), fit.K, fit.R, fit.t)[0]
    neutral_truth, neutral_fit = case.pose.copy(), fit.pose[frame].copy()
    neutral_truth[:2] = 0.0
    neutral_fit[:2] = 0.0
    canonical_truth = _posed(model, case.shape, case.expression, neutral_truth).vertices[0]
    canonical_fit = _posed(model, fit.shape, fit.expression[frame], neutral_fit).vertices[0]
    rest = model.v_template
    return CaseErrors(
        yaw=case.yaw, found=True,
        landmark_px=float(np.linalg.norm(truth_px - fitted_px, axis=1).mean()),
        vertex_mm=_mean_mm(canonical_truth, canonical_fit), face_mm=_mean_mm(canonical_truth, canonical_fit, face),
        rest_vertex_mm=_mean_mm(canonical_truth, rest), rest_face_mm=_mean_mm(canonical_truth, rest, face),
        pose_degrees=rotation_angle_degrees(head_rotation(case.pose, case.R), head_rotation(fit.pose[frame], fit.R)))


def evaluate_cases(asset: FlameAsset, cases: list[ProceduralCase], settings: FitSettings | None = None,
                   clip: bool = False) -> list[CaseErrors]:
    """Detect and fit each case on its own (a photo each), or all together as one clip (one shape,
    smooth motion, MediaPipe tracking from frame to frame), and measure each frame's errors."""
    fitter = LandmarkFitter(asset, settings)
    model = FlameModel(asset)
    face = face_region(asset)
    size = (cases[0].image.shape[1], cases[0].image.shape[0])
    with closing(LandmarkDetector(video=clip)) as detector:
        landmarks = [detector.detect(case.image) for case in cases]
    if clip:
        fit = fitter.fit(landmarks, size)
        return [case_errors(model, case, fit, face, frame) if points is not None else CaseErrors(yaw=case.yaw, found=False)
                for frame, (case, points) in enumerate(zip(cases, landmarks))]
    return [case_errors(model, case, fitter.fit([points], size), face) if points is not None
            else CaseErrors(yaw=case.yaw, found=False) for case, points in zip(cases, landmarks)]
