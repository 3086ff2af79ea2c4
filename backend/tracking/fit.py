"""FLAME fit to MediaPipe landmarks by optimisation (torch, CPU is enough).

Unknowns: shape (one vector for the whole clip), per-frame expression, global, neck, jaw and eye
poses and translation, and one pinhole focal length. The camera stays still (at ``+z`` looking
at the origin, FLAME's front), so a head that moves in the video moves in the rig. The loss is
the landmarks' reprojection error (Huber, in units of the face's size) plus Gaussian priors on
the coefficients (FLAME's components are unit-variance) and, for clips, a penalty on frame-to-
frame change. Only the vertices under the landmarks are skinned, so a 250-frame clip fits in
seconds: the joints are regressed once from the whole mesh as linear functions of the
coefficients and appended as extra "vertices" whose regressor is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor, nn

from flamediff.flame.lbs import lbs
from flamediff.formats.animation import AnimationClip, make_clip
from flamediff.formats.flame_asset import FlameAsset
from flamediff.geometry.mesh import surface_points
from flamediff.tracking.embedding import LandmarkEmbedding, landmark_embedding
from flamediff.tracking.landmarks import TrackingError

SMALL_CLIP = 32  # frames


@dataclass
class FitSettings:
    """Optimisation settings; the defaults are what tests/test_tracking.py measures."""

    num_shape: int = 100
    num_expression: int = 50
    fov_y_degrees: float = 26.0     # initial vertical field of view; the focal length is then fitted
    fit_focal: bool = True
    rigid_steps: int = 60
    steps: int = 240
    learning_rate: float = 0.03
    shape_prior: float = 1e-2
    expression_prior: float = 5e-3
    neck_prior: float = 0.2         # on neck rotation (radians): the global rotation turns the head
    jaw_prior: float = 0.01         # on jaw rotation: weak, an open mouth is common
    eye_prior: float = 0.05         # on eye rotations
    focal_prior: float = 1e-2       # on log(focal / initial focal)
    smoothness: float = 1.0         # frame-to-frame change, clips only
    huber: float = 0.02             # residuals beyond this (in face sizes) count linearly
    landmarks: str = "auto"         # "auto": MediaPipe's embedding when the asset has one; "ibug": iBUG-51


@dataclass
class FitResult:
    """Fitted parameters (numpy, FLAME space) and the camera, with the landmark error per frame."""

    shape: np.ndarray               # [S]
    expression: np.ndarray          # [T, E]
    pose: np.ndarray                # [T, 5, 3] axis-angle, FLAME joint order
    translation: np.ndarray         # [T, 3]
    K: np.ndarray                   # [3, 3]
    R: np.ndarray                   # [3, 3] world-to-camera (OpenCV)
    t: np.ndarray                   # [3]
    error_px: np.ndarray            # [T] mean landmark reprojection error, NaN where no face was found
    image_size: tuple[int, int]     # (width, height)
    landmark_pixels: np.ndarray     # [T, L, 2] the fitted landmarks' projections
    mediapipe_index: np.ndarray     # [L] the MediaPipe point each fitted landmark matches
    embedding_kind: str

    def clip(self, asset: FlameAsset, fps: float, first_frame: int = 1) -> AnimationClip:
        """The standard animation file's clip, camera included."""
        frames = len(self.expression)
        camera = tuple(np.repeat(value[None], frames, 0) for value in (self.K, self.R, self.t))
        return make_clip(frames, fps=fps, first_frame=first_frame, num_shape=len(self.shape),
                         num_expression=self.expression.shape[1], camera=camera, image_size=self.image_size,
                         flame_asset=asset.identity(), shape=np.repeat(self.shape[None], frames, 0),
                         expression=self.expression, global_pose=self.pose[:, 0], neck_pose=self.pose[:, 1],
                         jaw_pose=self.pose[:, 2], left_eye_pose=self.pose[:, 3], right_eye_pose=self.pose[:, 4],
                         translation=self.translation)


class LandmarkFlame(nn.Module):
    """FLAME evaluated only at the embedding's points (``[B, L, 3]``), joints included exactly."""

    def __init__(self, asset: FlameAsset, embedding: LandmarkEmbedding, num_shape: int, num_expression: int) -> None:
        super().__init__()
        used, local = np.unique(embedding.triangles, return_inverse=True)
        dirs = np.concatenate([asset.shapedirs[..., :num_shape], asset.exprdirs[..., :num_expression]], axis=2)
        joints = len(asset.parents)
        joint_template = asset.J_regressor @ asset.v_template
        joint_dirs = np.einsum("jv,vck->jck", asset.J_regressor, dirs)
        regressor = np.concatenate([np.zeros((joints, len(used))), np.eye(joints)], axis=1)

        def buffer(name: str, value: np.ndarray, dtype: torch.dtype = torch.float32) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(value), dtype=dtype), persistent=False)

        buffer("v_template", np.concatenate([asset.v_template[used], joint_template]))
        buffer("blend_dirs", np.concatenate([dirs[used], joint_dirs]))
        buffer("posedirs", np.concatenate([asset.posedirs[used], np.zeros((joints,) + asset.posedirs.shape[1:])]))
        buffer("J_regressor", regressor)
        buffer("weights", np.concatenate([asset.weights[used], np.zeros((joints, joints))]))
        buffer("parents", asset.parents, torch.long)
        buffer("triangles", local.reshape(embedding.triangles.shape), torch.long)
        buffer("barycentrics", embedding.barycentrics)

    def forward(self, coefficients: Tensor, pose: Tensor) -> Tensor:
        vertices, _ = lbs(coefficients, pose, self.v_template, self.blend_dirs, self.posedirs, self.J_regressor,
                          self.parents, self.weights)
        return surface_points(vertices, self.triangles, self.barycentrics)


def camera_pose(distance: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera ``(R, t)`` of a camera at ``(0, 0, distance)`` looking at the origin (FLAME's front)."""
    R = np.diag([1.0, -1.0, -1.0])
    return R, -R @ np.array([0.0, 0.0, distance])


def project(points: Tensor, focal: Tensor, centre: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Pinhole projection of ``[B, L, 3]`` world points to pixels ``[B, L, 2]``."""
    camera = points @ R.T + t
    return focal * camera[..., :2] / camera[..., 2:3].clamp(min=1e-3) + centre


class _Unknowns(nn.Module):
    def __init__(self, frames: int, num_shape: int, num_expression: int, rotation: Tensor, translation: Tensor) -> None:
        super().__init__()
        self.shape = nn.Parameter(torch.zeros(num_shape))
        self.expression = nn.Parameter(torch.zeros(frames, num_expression))
        self.pose = nn.Parameter(torch.cat([rotation[:, None], torch.zeros(frames, 4, 3)], dim=1))
        self.translation = nn.Parameter(translation)
        self.log_focal = nn.Parameter(torch.zeros(()))

    def coefficients(self) -> Tensor:
        return torch.cat([self.shape.expand(len(self.expression), -1), self.expression], dim=1)


class LandmarkFitter:
    """Fits one clip (one image or many frames of the same person) to detected landmarks."""

    def __init__(self, asset: FlameAsset, settings: FitSettings | None = None) -> None:
        self.asset = asset
        self.settings = settings or FitSettings()
        self.embedding = landmark_embedding(asset, self.settings.landmarks)
        self.num_shape = min(self.settings.num_shape, asset.num_shape)
        self.num_expression = min(self.settings.num_expression, asset.num_expression)
        self.model = LandmarkFlame(asset, self.embedding, self.num_shape, self.num_expression)
        with torch.no_grad():
            rest = self.model(torch.zeros(1, self.num_shape + self.num_expression), torch.zeros(1, 5, 3))[0]
        self.rest_points = rest.double().numpy()

    def _initial_pose(self, targets: np.ndarray, found: np.ndarray,
                      size: tuple[int, int]) -> tuple[float, float, np.ndarray, np.ndarray]:
        """Focal length, camera distance and per-frame global rotation and translation that put the
        rest head over the landmarks: OpenCV's PnP per frame with the initial focal length (frames
        without a face take their nearest neighbours' values)."""
        import cv2

        width, height = size
        focal = 0.5 * height / math.tan(math.radians(self.settings.fov_y_degrees) / 2.0)
        K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
        solved = np.full((len(targets), 2, 3), np.nan)
        for frame in np.flatnonzero(found):
            ok, rotation, translation = cv2.solvePnP(self.rest_points, targets[frame], K, np.zeros(4), flags=cv2.SOLVEPNP_SQPNP)
            if ok:
                solved[frame] = rotation[:, 0], translation[:, 0]
        known = np.flatnonzero(~np.isnan(solved[:, 0, 0]))
        if not len(known):
            raise TrackingError("the landmarks fit no head pose; use footage where the face is turned less than "
                                "about 60 degrees from the camera")
        solved = np.stack([np.interp(np.arange(len(targets)), known, solved[known, i, j])
                           for i in range(2) for j in range(3)], axis=1).reshape(-1, 2, 3)
        distance = float(np.median(solved[:, 1, 2]))
        R_camera, t_camera = camera_pose(distance)
        R_pnp = Rotation.from_rotvec(solved[:, 0]).as_matrix()
        global_rotation = Rotation.from_matrix(R_camera @ R_pnp).as_rotvec()
        root = self.asset.J_regressor[0] @ self.asset.v_template
        translation = (solved[:, 1] - t_camera + R_pnp @ root) @ R_camera.T - root
        return focal, distance, global_rotation, translation

    def fit(self, landmarks: list[np.ndarray | None], image_size: tuple[int, int]) -> FitResult:
        """``landmarks``: per frame MediaPipe's ``[478, 2]`` pixels or ``None`` (no face found there)."""
        found = np.array([points is not None for points in landmarks])
        index = self.embedding.mediapipe_index
        targets = np.stack([points[index] if points is not None else np.zeros((len(index), 2)) for points in landmarks])
        focal0, distance, rotation0, translation0 = self._initial_pose(targets, found, image_size)
        R, t = camera_pose(distance)
        unknowns = _Unknowns(len(landmarks), self.num_shape, self.num_expression,
                             torch.as_tensor(rotation0, dtype=torch.float32), torch.as_tensor(translation0, dtype=torch.float32))
        data = _FitData(targets=torch.as_tensor(targets, dtype=torch.float32),
                        found=torch.as_tensor(found, dtype=torch.float32),
                        focal0=focal0, centre=torch.tensor([image_size[0] / 2.0, image_size[1] / 2.0]),
                        R=torch.as_tensor(R, dtype=torch.float32), t=torch.as_tensor(t, dtype=torch.float32),
                        scale=torch.as_tensor(_face_size(targets, found), dtype=torch.float32))
        threads = torch.get_num_threads()
        if len(landmarks) < SMALL_CLIP:
            torch.set_num_threads(1)  # a few frames' steps are too small to gain from threads
        try:
            self._optimise(unknowns, data, rigid=True)
            self._optimise(unknowns, data, rigid=False)
        finally:
            torch.set_num_threads(threads)
        return self._result(unknowns, data, R, t, image_size)

    def _loss(self, unknowns: _Unknowns, data: _FitData) -> tuple[Tensor, Tensor, Tensor]:
        s = self.settings
        pose = unknowns.pose
        points = self.model(unknowns.coefficients(), pose) + unknowns.translation[:, None]
        pixels = project(points, data.focal0 * unknowns.log_focal.exp(), data.centre, data.R, data.t)
        residual = (pixels - data.targets).norm(dim=-1)                          # [T, L] pixels
        relative = residual / data.scale
        robust = torch.where(relative < s.huber, 0.5 * relative ** 2 / s.huber, relative - 0.5 * s.huber)
        weight = data.found / data.found.sum().clamp(min=1.0)
        loss = (robust.mean(dim=1) * weight).sum()
        loss = loss + s.shape_prior * unknowns.shape.pow(2).sum() + s.focal_prior * unknowns.log_focal ** 2
        loss = loss + s.expression_prior * unknowns.expression.pow(2).sum(1).mean()
        joint_weight = pose.new_tensor([0.0, s.neck_prior, s.jaw_prior, s.eye_prior, s.eye_prior])
        loss = loss + (pose.pow(2).sum(2) * joint_weight).sum(1).mean()
        if len(pose) > 1 and s.smoothness > 0:
            changes = [unknowns.expression, pose.flatten(1), unknowns.translation * 10.0]
            loss = loss + s.smoothness * sum(value.diff(dim=0).pow(2).sum(1).mean() for value in changes) * 0.1
        return loss, residual, pixels

    def _optimise(self, unknowns: _Unknowns, data: _FitData, rigid: bool) -> None:
        s = self.settings
        hook = unknowns.pose.register_hook(_keep_only_global) if rigid else None
        if rigid:
            parameters = [unknowns.pose, unknowns.translation]
        else:
            parameters = list(unknowns.parameters()) if s.fit_focal else \
                [p for name, p in unknowns.named_parameters() if name != "log_focal"]
        optimiser = torch.optim.Adam(parameters, lr=s.learning_rate)
        steps = s.rigid_steps if rigid else s.steps
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=s.learning_rate * 0.05)
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss, _, _ = self._loss(unknowns, data)
            loss.backward()
            optimiser.step()
            schedule.step()
        if hook is not None:
            hook.remove()

    def _result(self, unknowns: _Unknowns, data: _FitData, R: np.ndarray, t: np.ndarray,
                image_size: tuple[int, int]) -> FitResult:
        with torch.no_grad():
            _, residual, pixels = self._loss(unknowns, data)
        error = residual.mean(dim=1).double().numpy()
        error[data.found.numpy() == 0] = np.nan
        focal = data.focal0 * float(unknowns.log_focal.detach().exp())
        K = np.array([[focal, 0.0, image_size[0] / 2.0], [0.0, focal, image_size[1] / 2.0], [0.0, 0.0, 1.0]])
        as_numpy = {name: value.detach().double().numpy() for name, value in unknowns.named_parameters()}
        return FitResult(shape=as_numpy["shape"], expression=as_numpy["expression"], pose=as_numpy["pose"],
                         translation=as_numpy["translation"], K=K, R=R, t=t, error_px=error,
                         image_size=(int(image_size[0]), int(image_size[1])), landmark_pixels=pixels.double().numpy(),
                         mediapipe_index=self.embedding.mediapipe_index, embedding_kind=self.embedding.kind)


@dataclass
class _FitData:
    targets: Tensor    # [T, L, 2] pixels
    found: Tensor      # [T] 1 where MediaPipe found the face
    focal0: float
    centre: Tensor     # [2]
    R: Tensor
    t: Tensor
    scale: Tensor      # [T, 1] face size in pixels


def _face_size(targets: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per frame the landmarks' bounding-box diagonal in pixels (the median for frames without a face)."""
    diagonal = np.linalg.norm(targets.max(axis=1) - targets.min(axis=1), axis=1)
    diagonal = np.where(found, diagonal, np.median(diagonal[found]) if found.any() else 1.0)
    return np.maximum(diagonal, 1.0)[:, None]


def _keep_only_global(gradient: Tensor) -> Tensor:
    """The rigid stage moves the head as a whole: only the global rotation gets a gradient."""
    masked = torch.zeros_like(gradient)
    masked[:, 0] = gradient[:, 0]
    return masked
