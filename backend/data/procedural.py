"""The procedural training dataset (issue 7): the procedural head rendered with per-identity
appearance, in the paper's two domains, by flamediff's own rasteriser (``flamediff.geometry.rasterizer``).

Per identity (all drawn from ``numpy.random.default_rng([seed, identity])``):

- FLAME shape: standard normal on the first ``SHAPE_COMPONENTS`` (20) coefficients, times 0.8;
- appearance: skin tone, a UV-space skin pattern (smooth low-frequency blotches and, for some
  identities, freckles on the face), lip colour, eyebrows, iris colour, a hair region (top and
  back of the head, variable hairline) or a coloured cap, and a two-colour background gradient.

Two kinds of samples (``samples.npz``'s ``label``):

- **synthetic** (label 1), the paper's multi-view set: ``views_per_identity`` single frames, each
  its own sequence, from cameras orbiting the head at yaw in +-80 deg and pitch in +-35 deg, with
  random expressions (the named components and small random others), jaw, gaze and neck.
  They carry deliberate artefacts in two regions, and only there:
    * **ears**: the ear region (a blob around each ear, from the rest mesh) is painted over
      with noisy, saturated colour blotches (a fresh random UV noise per sample);
    * **mouth interior**: what shows through the open mouth (back faces of the head's inside)
      is a bright saturated colour with noise instead of the clean dark red.
- **real** (label 0), continuous clips for temporal training: ``sequences_per_identity`` clips of
  ``frames_per_sequence`` frames of smooth expression / jaw / gaze / neck / head animation with
  blinks, a near-frontal camera (yaw +-20 deg, pitch +-10 deg) that drifts slowly, clean rendering.

Every frame has its own lighting (direction from the camera's front hemisphere, ambient,
diffuse, a Blinn-Phong specular term, a slight colour tint); within a real clip it drifts smoothly.
Identities are split into train and held-out sets (``splits.json`` beside ``dataset.json``).
Everything is deterministic given the seed (same seed, same PNG bytes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flamediff.data.dataset import DatasetError, DatasetIndex, write_dataset
from flamediff.geometry.mesh import surface_points, vertex_normals
from flamediff.geometry.rasterizer import downsample, interpolate, rasterize, sample_texture
from flamediff.formats.animation import make_clip
from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv, square_crop_intrinsics

NUM_SHAPE = 100
NUM_EXPRESSION = 50
SHAPE_COMPONENTS = 20
SHAPE_SCALE = 0.8
SUPERSAMPLE = 2
TEXTURE_SIZE = 256
TEXTURE_UV_SIZE = 512  # baked per-identity texture
BATCH = 16
FOV_Y = 26.0
DISTANCE = 0.66
TARGET = np.array([0.0, -0.01, 0.0])
SYNTHETIC_YAW, SYNTHETIC_PITCH = 80.0, 35.0
REAL_YAW, REAL_PITCH = 20.0, 10.0
LABEL_REAL, LABEL_SYNTHETIC = 0, 1
# procedural head expression components (backend/formats/procedural_head.py EXPRESSION_NAMES)
SMILE, MOUTH_OPEN, BROWS_UP, FROWN, EYES_CLOSED, BROW_FURROW, PUCKER, PUFF, SNEER, WINK_L, WINK_R, STRETCH = range(12)
# (low, high) of each named component in random expressions; eyes closed / winks are rarer
EXPRESSION_RANGES = ((-0.4, 1.6), (0.0, 0.8), (-0.5, 1.2), (0.0, 1.2), (0.0, 1.0), (0.0, 1.2), (0.0, 1.0),
                     (0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0))
EXPRESSION_PROBABILITY = (0.6, 0.4, 0.4, 0.3, 0.1, 0.3, 0.25, 0.25, 0.25, 0.08, 0.08, 0.3)

DESCRIPTION = (
    "flamediff procedural dataset: the procedural FLAME head with per-identity shape and appearance. "
    "label 1 (synthetic): multi-view frames (yaw +-80, pitch +-35 deg), one per sequence, with deliberate "
    "artefacts: noisy saturated colour blotches on the ears and a bright saturated mouth interior. "
    "label 0 (real): clean continuous clips (expression, jaw, gaze with blinks, neck and head motion) "
    "from near-frontal drifting cameras. splits.json lists train and held-out identities."
)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    s = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _smooth_noise(generator: torch.Generator, channels: int, cells: tuple[int, int], size: int) -> torch.Tensor:
    """[channels, size, size] noise in about [-1, 1]: a random ``cells`` grid, bicubically upsampled."""
    grid = torch.rand(1, channels, cells[0], cells[1], generator=generator) * 2.0 - 1.0
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def orbit_camera(yaw_deg: float, pitch_deg: float, distance: float = DISTANCE,
                 target: np.ndarray = TARGET) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``(R, t)`` of a camera at ``distance`` from ``target``, ``yaw`` to the head's left
    (+x), ``pitch`` above the head (+y), looking at ``target``."""
    direction = _rotation_y(math.radians(yaw_deg)) @ _rotation_x(-math.radians(pitch_deg)) @ np.array([0, 0, 1.0])
    return look_at_opencv(np.asarray(target) + distance * direction, target)


# ---------------------------------------------------------------------------------------------
# Regions of the head, from the asset's rest mesh (works for any FLAME-topology asset)


class HeadRegions:
    """Canonical (rest-pose) anchors of the asset: eyes, brows, lips, ears, neck."""

    def __init__(self, asset) -> None:
        rest = np.asarray(asset.v_template, np.float64)
        faces = np.asarray(asset.faces, np.int64)
        weights = np.asarray(asset.weights)
        self.rest = rest
        eye = [weights[:, joint] > 0.99 for joint in (3, 4)]
        self.eye_vertex = eye[0] | eye[1]
        self.eye_face = self.eye_vertex[faces].all(axis=1)
        self.eye_centres = np.stack([rest[m].mean(axis=0) if m.any() else np.zeros(3) for m in eye])
        lm = surface_points(torch.as_tensor(rest)[None], torch.as_tensor(faces[asset.landmark_faces]),
                            torch.as_tensor(asset.landmark_barycentrics))[0].numpy()
        self.landmarks = lm
        self.brows = [lm[0:5], lm[5:10]]
        lips = lm[31:43]
        self.mouth_centre = lips.mean(axis=0)
        self.mouth_half = np.array([np.abs(lips[:, 0] - self.mouth_centre[0]).max() * 1.08,
                                    (lips[:, 1].max() - lips[:, 1].min()) * 0.5 * 1.25])
        self.eye_y = float(self.eye_centres[:, 1].mean())
        self.brow_y = float(lm[0:10, 1].mean())
        head = ~self.eye_vertex
        ears = []
        for side in (1.0, -1.0):
            band = head & (np.abs(rest[:, 1] - (self.eye_y - 0.015)) < 0.035) & (np.abs(rest[:, 2]) < 0.05) \
                & (side * rest[:, 0] > 0)
            candidates = np.nonzero(band)[0]
            ears.append(rest[candidates[np.argmax(side * rest[candidates, 0])]])
        self.ear_centres = np.stack(ears)
        self.neck_y = float(self.mouth_centre[1] - 0.055)
        self.top_y = float(rest[:, 1].max())


# ---------------------------------------------------------------------------------------------
# Per-identity appearance


SKIN_LIGHT, SKIN_DARK = np.array([0.96, 0.80, 0.70]), np.array([0.36, 0.23, 0.16])
HAIR_COLOURS = np.array([[0.06, 0.05, 0.05], [0.22, 0.13, 0.08], [0.45, 0.30, 0.16], [0.80, 0.65, 0.40],
                         [0.55, 0.22, 0.10], [0.62, 0.60, 0.58]])
IRIS_COLOURS = np.array([[0.30, 0.17, 0.08], [0.20, 0.38, 0.62], [0.25, 0.45, 0.25], [0.45, 0.35, 0.15],
                         [0.45, 0.48, 0.52]])


@dataclass
class Appearance:
    """One identity's look; ``texture`` is [4, T, T] in UV space: RGB skin pattern multiplier and
    a hair-strand channel."""

    identity: int
    shape: np.ndarray          # [NUM_SHAPE]
    skin: np.ndarray           # [3]
    lips: np.ndarray
    brow_colour: np.ndarray
    hair_colour: np.ndarray
    iris: np.ndarray
    background: np.ndarray     # [2, 3] top, bottom
    hairline_front: float      # metres above the brows
    hairline_back: float       # metres, height of the hair's lower edge at the back
    cap: bool
    brow_thickness: float
    texture: torch.Tensor


def make_appearance(identity: int, seed: int, regions: HeadRegions) -> Appearance:
    rng = np.random.default_rng([seed, identity, 1])
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    shape = np.zeros(NUM_SHAPE)
    shape[:SHAPE_COMPONENTS] = SHAPE_SCALE * rng.standard_normal(SHAPE_COMPONENTS)
    tone = rng.uniform()
    skin = SKIN_LIGHT * (1 - tone) + SKIN_DARK * tone
    skin = np.clip(skin * rng.uniform(0.94, 1.06, 3), 0.0, 1.0)
    lips = np.clip(skin * np.array([0.82, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) * rng.uniform(0.5, 1.5), 0, 1)
    cap = bool(rng.uniform() < 0.2)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    if cap:
        hair = _hsv(rng.uniform(), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.85))
    brow = np.clip(HAIR_COLOURS[rng.integers(3)] * 0.8 + skin * 0.15, 0, 1)
    iris = np.clip(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))] * rng.uniform(0.8, 1.2, 3), 0, 1)
    hue = rng.uniform()
    background = np.stack([_hsv(hue, rng.uniform(0.05, 0.45), rng.uniform(0.35, 0.95)),
                           _hsv((hue + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.05, 0.45),
                                rng.uniform(0.2, 0.8))])
    # UV texture: low-frequency blotches, fine mottling, optional freckles, hair strands
    blotch = _smooth_noise(generator, 3, (8, 8), TEXTURE_SIZE) * rng.uniform(0.03, 0.10)
    mottle = _smooth_noise(generator, 1, (48, 48), TEXTURE_SIZE) * rng.uniform(0.01, 0.04)
    pattern = 1.0 + blotch + mottle
    freckle_density = rng.uniform() if rng.uniform() < 0.4 else 0.0
    if freckle_density > 0:
        spots = _smooth_noise(generator, 1, (96, 96), TEXTURE_SIZE)
        threshold = 0.75 - 0.35 * freckle_density
        freckles = _smoothstep(threshold, threshold + 0.12, spots)
        pattern = pattern * (1.0 - freckles * torch.tensor([0.30, 0.42, 0.50])[:, None, None])
    strands = _smooth_noise(generator, 1, (6, 128), TEXTURE_SIZE)  # fast along u, slow along v
    texture = torch.cat([pattern, strands], 0).float()
    return Appearance(identity=identity, shape=shape, skin=skin, lips=lips, brow_colour=brow, hair_colour=hair,
                      iris=iris, background=background, hairline_front=float(rng.uniform(0.025, 0.05)),
                      hairline_back=float(regions.mouth_centre[1] + rng.uniform(-0.03, 0.02)), cap=cap,
                      brow_thickness=float(rng.uniform(0.0025, 0.0045)), texture=texture)


# ---------------------------------------------------------------------------------------------
# Per-frame parameters


@dataclass
class FrameSpecs:
    """Per-frame FLAME parameters, camera and lighting of a block of samples (numpy, leading axis N)."""

    expression: np.ndarray     # [N, NUM_EXPRESSION]
    pose: np.ndarray           # [N, 5, 3]
    translation: np.ndarray    # [N, 3]
    K: np.ndarray              # [N, 3, 3]
    R: np.ndarray
    t: np.ndarray
    light: np.ndarray          # [N, 3] unit direction, world
    light_colour: np.ndarray   # [N, 3]
    ambient: np.ndarray        # [N]
    diffuse: np.ndarray
    specular: np.ndarray
    label: np.ndarray          # [N]
    noise_seed: np.ndarray     # [N] per-sample artefact noise

    @staticmethod
    def concatenate(parts: list["FrameSpecs"]) -> "FrameSpecs":
        return FrameSpecs(**{name: np.concatenate([getattr(p, name) for p in parts])
                             for name in FrameSpecs.__dataclass_fields__})

    def rows(self, rows: np.ndarray | slice) -> "FrameSpecs":
        return FrameSpecs(**{name: getattr(self, name)[rows] for name in FrameSpecs.__dataclass_fields__})


def _random_expression(rng: np.random.Generator, count: int) -> np.ndarray:
    out = np.zeros((count, NUM_EXPRESSION))
    for k, ((low, high), p) in enumerate(zip(EXPRESSION_RANGES, EXPRESSION_PROBABILITY)):
        active = rng.uniform(size=count) < p
        out[:, k] = np.where(active, rng.uniform(low, high, count), 0.0)
    out[:, 12:] = 0.5 * rng.standard_normal((count, NUM_EXPRESSION - 12))
    return out


def _lighting(rng: np.random.Generator, R: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Lights from the camera's front hemisphere, expressed in world space."""
    azimuth = np.radians(rng.uniform(-65, 65, count))
    elevation = np.radians(rng.uniform(-15, 65, count))
    # OpenCV camera frame: x right, y down, z forward; a light "towards the camera" has -z
    direction_cam = np.stack([np.sin(azimuth) * np.cos(elevation), -np.sin(elevation),
                              -np.cos(azimuth) * np.cos(elevation)], -1)
    direction = np.einsum("nji,nj->ni", R, direction_cam)
    tint = 1.0 + rng.uniform(-0.12, 0.12, (count, 1)) * np.array([1.0, 0.1, -1.0])
    return {"light": direction, "light_colour": tint, "ambient": rng.uniform(0.25, 0.5, count),
            "diffuse": rng.uniform(0.55, 0.9, count), "specular": rng.uniform(0.03, 0.25, count)}


def synthetic_views(rng: np.random.Generator, count: int, resolution: int) -> FrameSpecs:
    """Multi-view samples: random expression, jaw, gaze, neck; orbit cameras over wide yaw/pitch."""
    expression = _random_expression(rng, count)
    pose = np.zeros((count, 5, 3))
    pose[:, 1] = rng.uniform(-1, 1, (count, 3)) * np.array([0.15, 0.2, 0.08])            # neck
    open_jaw = rng.uniform(size=count) < 0.6
    pose[:, 2, 0] = np.where(open_jaw, rng.uniform(0.05, 0.32, count), rng.uniform(0.0, 0.03, count))
    pose[:, 2, 1:] = rng.uniform(-0.03, 0.03, (count, 2))
    gaze = rng.uniform(-1, 1, (count, 3)) * np.array([0.2, 0.3, 0.0])
    pose[:, 3] = gaze
    pose[:, 4] = gaze
    yaw = rng.uniform(-SYNTHETIC_YAW, SYNTHETIC_YAW, count)
    pitch = rng.uniform(-SYNTHETIC_PITCH, SYNTHETIC_PITCH, count)
    distance = DISTANCE * rng.uniform(0.92, 1.1, count)
    target = TARGET + rng.uniform(-1, 1, (count, 3)) * np.array([0.006, 0.006, 0.006])
    cameras = [orbit_camera(y, p, d, c) for y, p, d, c in zip(yaw, pitch, distance, target)]
    R = np.stack([c[0] for c in cameras])
    t = np.stack([c[1] for c in cameras])
    fov = FOV_Y * rng.uniform(0.95, 1.05, count)
    K = np.stack([intrinsics_from_fov(f, resolution, resolution) for f in fov])
    return FrameSpecs(expression=expression, pose=pose, translation=np.zeros((count, 3)), K=K, R=R, t=t,
                      **_lighting(rng, R, count), label=np.full(count, LABEL_SYNTHETIC),
                      noise_seed=rng.integers(0, 2**62, count))


def _smooth_curve(rng: np.random.Generator, frames: int, channels: int, low, high, keys: int | None = None) -> np.ndarray:
    """[frames, channels] smooth random motion: random keys, smoothstep-eased between them."""
    keys = keys or max(2, frames // 5 + 1)
    values = rng.uniform(low, high, (keys, channels))
    position = np.linspace(0.0, keys - 1.0, frames)
    index = np.minimum(np.floor(position).astype(int), keys - 2)
    s = position - index
    s = s * s * (3.0 - 2.0 * s)
    return values[index] * (1 - s[:, None]) + values[index + 1] * s[:, None]


def real_sequence(rng: np.random.Generator, frames: int, resolution: int) -> FrameSpecs:
    """A clean continuous clip: smooth expression, jaw, gaze (with blinks), neck and head motion."""
    expression = np.zeros((frames, NUM_EXPRESSION))
    for k, ((low, high), p) in enumerate(zip(EXPRESSION_RANGES, EXPRESSION_PROBABILITY)):
        if k in (EYES_CLOSED, WINK_L, WINK_R) or rng.uniform() > p + 0.15:
            continue
        expression[:, k] = _smooth_curve(rng, frames, 1, low, high)[:, 0]
    expression[:, 12:] = _smooth_curve(rng, frames, NUM_EXPRESSION - 12, -0.5, 0.5)
    # blinks: a ~3-frame pulse of "eyes closed"
    for _ in range(rng.poisson(0.12 * frames)):
        centre = rng.uniform(0, frames - 1)
        width = rng.uniform(0.9, 1.6)
        expression[:, EYES_CLOSED] = np.maximum(expression[:, EYES_CLOSED],
                                                np.exp(-0.5 * ((np.arange(frames) - centre) / width) ** 2))
    pose = np.zeros((frames, 5, 3))
    pose[:, 0] = _smooth_curve(rng, frames, 3, -1, 1) * np.array([0.12, 0.25, 0.06])     # head
    pose[:, 1] = _smooth_curve(rng, frames, 3, -1, 1) * np.array([0.08, 0.12, 0.05])     # neck
    jaw = _smooth_curve(rng, frames, 1, -0.1, 0.3)[:, 0]
    pose[:, 2, 0] = np.clip(jaw, 0.0, None)
    gaze = _smooth_curve(rng, frames, 2, -1, 1) * np.array([0.18, 0.28])
    pose[:, 3, :2] = gaze
    pose[:, 4, :2] = gaze
    start, end = rng.uniform(-1, 1, (2, 2)) * np.array([REAL_YAW, REAL_PITCH])
    end = start + np.clip(end - start, -6.0, 6.0)  # a slow drift
    s = np.linspace(0.0, 1.0, frames)[:, None]
    angles = start * (1 - s) + end * s
    distance = DISTANCE * rng.uniform(0.95, 1.05)
    cameras = [orbit_camera(y, p, distance) for y, p in angles]
    R = np.stack([c[0] for c in cameras])
    t = np.stack([c[1] for c in cameras])
    K = np.repeat(intrinsics_from_fov(FOV_Y, resolution, resolution)[None], frames, axis=0)
    light = _lighting(rng, R[:1], 1)
    drift = _lighting(rng, R[:1], 1)
    light = {name: value * (1 - s.reshape((-1,) + (1,) * (value.ndim - 1)))
             + drift[name] * s.reshape((-1,) + (1,) * (value.ndim - 1)) for name, value in light.items()}
    light["light"] = light["light"] / np.linalg.norm(light["light"], axis=-1, keepdims=True)
    return FrameSpecs(expression=expression, pose=pose, translation=np.zeros((frames, 3)), K=K, R=R, t=t, **light,
                      label=np.full(frames, LABEL_REAL), noise_seed=rng.integers(0, 2**62, frames))


# ---------------------------------------------------------------------------------------------
# The renderer


@dataclass
class RenderOutput:
    images: np.ndarray          # [B, R, R, 3] uint8
    head_mask: np.ndarray       # [B, R, R] float coverage of the head
    artefact_mask: np.ndarray   # [B, R, R] float coverage of the artefact regions (ears, mouth interior)


_TEXEL_CACHE: dict = {}


class ProceduralRenderer:
    """Renders FrameSpecs of one identity with its Appearance (batched, CPU)."""

    def __init__(self, asset, supersample: int = SUPERSAMPLE) -> None:
        from flamediff.flame.model import FlameModel

        self.asset = asset
        self.model = FlameModel(asset)
        self.regions = HeadRegions(asset)
        self.supersample = supersample
        self.faces = torch.as_tensor(np.asarray(asset.faces), dtype=torch.long)
        self.rest = torch.as_tensor(self.regions.rest, dtype=torch.float32)
        self.corner_uv = torch.as_tensor(np.asarray(asset.uv)[np.asarray(asset.faces_uv)], dtype=torch.float32)
        self.eye_face = torch.as_tensor(self.regions.eye_face)
        self._texels = None

    # region masks on canonical (rest) coordinates P [..., 3]
    def _ear_mask(self, P: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(P.shape[:-1])
        for centre in self.regions.ear_centres:
            d = (P - torch.as_tensor(centre, dtype=P.dtype)) / torch.tensor([0.016, 0.026, 0.02])
            total = total + torch.exp(-0.5 * (d * d).sum(-1))
        return _smoothstep(0.25, 0.45, total)

    def _brow_mask(self, P: torch.Tensor, thickness: float) -> torch.Tensor:
        total = torch.zeros(P.shape[:-1])
        for brow in self.regions.brows:
            cx, cy = float(brow[:, 0].mean()), float(brow[:, 1].mean())
            half = float(brow[:, 0].max() - brow[:, 0].min()) * 0.55
            u = (P[..., 0] - cx) / half
            centre_y = cy + 0.003 * (1.0 - u * u) - 0.001
            band = 1.0 - _smoothstep(thickness * 0.6, thickness, (P[..., 1] - centre_y).abs() * (1.0 + 0.5 * u.abs()))
            total = total + band * (1.0 - _smoothstep(0.85, 1.05, u.abs()))
        front = _smoothstep(float(self.regions.brows[0][:, 2].min()) - 0.02, float(self.regions.brows[0][:, 2].min()), P[..., 2])
        return total.clamp(0, 1) * front

    def _lip_mask(self, P: torch.Tensor) -> torch.Tensor:
        centre = torch.as_tensor(self.regions.mouth_centre, dtype=P.dtype)
        hx, hy = self.regions.mouth_half
        d = ((P[..., 0] - centre[0]) / hx) ** 2 + ((P[..., 1] - centre[1]) / hy) ** 2
        return (1.0 - _smoothstep(0.7, 1.0, d)) * _smoothstep(float(centre[2]) - 0.02, float(centre[2]) - 0.008, P[..., 2])

    def _hair_mask(self, P: torch.Tensor, look: Appearance) -> torch.Tensor:
        front = _smoothstep(-0.01, 0.07, P[..., 2])
        front_y = self.regions.brow_y + look.hairline_front
        back_y = look.hairline_back if not look.cap else self.regions.eye_y + 0.03
        if look.cap:
            front_y = self.regions.brow_y + 0.03
        height = back_y + (front_y - back_y) * front
        # temples: the hairline rises at the sides of the forehead
        height = height + 0.02 * _smoothstep(0.02, 0.05, P[..., 0].abs()) * front
        return _smoothstep(-0.002, 0.004, P[..., 1] - height)

    def _texel_positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rest position [T, T, 3], eye flag [T, T] and coverage [T, T] of every texel of the UV
        layout (the mesh rasterised in UV space), computed once."""
        if self._texels is None:
            key = (self.asset.identity()["hash"], TEXTURE_UV_SIZE)
            if key in _TEXEL_CACHE:
                self._texels = _TEXEL_CACHE[key]
                return self._texels
            size = TEXTURE_UV_SIZE
            uv = torch.as_tensor(np.asarray(self.asset.uv), dtype=torch.float32)
            points = torch.cat([uv, torch.ones(len(uv), 1)], -1)[None]
            K = torch.tensor([[size, 0.0, 0.0], [0.0, -size, size], [0.0, 0.0, 1.0]])
            faces_uv = torch.as_tensor(np.asarray(self.asset.faces_uv), dtype=torch.long)
            frags = rasterize(points, faces_uv, K, torch.eye(3), torch.zeros(3), size, size)
            position = interpolate(frags, self.rest, self.faces)[0]
            eye = self.eye_face[frags.face_id.clamp(min=0)][0] & frags.mask[0]
            self._texels = (position, eye, frags.mask[0])
            _TEXEL_CACHE.clear()
            _TEXEL_CACHE[key] = self._texels
        return self._texels

    def bake_texture(self, look: Appearance) -> torch.Tensor:
        """[C, T, T] UV texture of one identity: clean albedo RGB, then ear, hair and eye masks."""
        P, eye, covered = self._texel_positions()
        size = P.shape[0]
        pattern = F.interpolate(look.texture[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        pattern = pattern.permute(1, 2, 0)
        skin = torch.as_tensor(look.skin, dtype=torch.float32)
        albedo = skin * pattern[..., 0:3]
        lips = self._lip_mask(P)[..., None]
        albedo = albedo * (1 - lips) + torch.as_tensor(look.lips, dtype=torch.float32) * pattern[..., 0:3] * lips
        brows = (self._brow_mask(P, look.brow_thickness) * 0.85)[..., None]
        albedo = albedo * (1 - brows) + torch.as_tensor(look.brow_colour, dtype=torch.float32) * brows
        ears = self._ear_mask(P) * (~eye).float()
        hair = (self._hair_mask(P, look) * (1.0 - ears) * (~eye).float())[..., None]
        strands = pattern[..., 3:4]
        hair_albedo = torch.as_tensor(look.hair_colour, dtype=torch.float32) * (
            (0.92 + 0.08 * strands) if look.cap else (0.7 + 0.45 * strands.clamp(-1, 1)))
        albedo = albedo * (1 - hair) + hair_albedo * hair
        # eyes: sclera, iris, pupil from the direction out of the rest eyeball centre
        centres = torch.as_tensor(self.regions.eye_centres, dtype=torch.float32)
        which = (P[..., 0:1] < 0).float()                          # the left eye has +x
        centre = centres[0] * (1 - which) + centres[1] * which
        cosine = F.normalize(P - centre, dim=-1, eps=1e-9)[..., 2:3]
        iris = _smoothstep(math.cos(math.radians(30)), math.cos(math.radians(27)), cosine)
        pupil = _smoothstep(math.cos(math.radians(12)), math.cos(math.radians(10)), cosine)
        ring = 0.75 + 0.35 * _smoothstep(math.cos(math.radians(27)), math.cos(math.radians(15)), cosine)
        eye_albedo = torch.tensor([0.88, 0.85, 0.82]) * (1 - iris) + torch.as_tensor(look.iris, dtype=torch.float32) * ring * iris
        eye_albedo = eye_albedo * (1 - pupil) + 0.03 * pupil
        albedo = torch.where(eye[..., None], eye_albedo, albedo)
        texture = torch.cat([albedo, ears[..., None], hair, eye[..., None].float()], -1).permute(2, 0, 1)
        return _dilate(texture, covered)

    def render(self, look: Appearance, specs: FrameSpecs, resolution: int, texture: torch.Tensor | None = None) -> RenderOutput:
        """Render ``specs`` (one identity); ``texture`` is ``bake_texture(look)`` (baked if not given)."""
        with torch.no_grad():
            if texture is None:
                texture = self.bake_texture(look)
            return self._render(look, specs, resolution, texture)

    def _render(self, look: Appearance, specs: FrameSpecs, resolution: int, texture: torch.Tensor) -> RenderOutput:
        batch = len(specs.label)
        s = self.supersample
        size = resolution * s
        f32 = torch.float32
        shape = torch.as_tensor(look.shape, dtype=f32)[None].expand(batch, -1)
        flame = self.model(shape=shape, expression=torch.as_tensor(specs.expression, dtype=f32),
                           pose=torch.as_tensor(specs.pose, dtype=f32),
                           translation=torch.as_tensor(specs.translation, dtype=f32))
        vertices = flame.vertices
        K = torch.as_tensor(specs.K, dtype=f32).clone()
        K[:, :2] *= s
        R = torch.as_tensor(specs.R, dtype=f32)
        t = torch.as_tensor(specs.t, dtype=f32)
        frags = rasterize(vertices, self.faces, K, R, t, size, size)
        # shade only the covered pixels
        flat = torch.nonzero(frags.face_id.view(-1) >= 0, as_tuple=True)[0]
        b = flat // (size * size)
        face = frags.face_id.view(-1)[flat]
        bary = frags.bary.view(-1, 3)[flat].to(f32)[..., None]
        front = frags.front.view(-1)[flat]
        corners = self.faces[face]                                  # [M, 3]
        normals = vertex_normals(vertices, self.faces)
        world = (vertices[b[:, None], corners] * bary).sum(1)
        N = F.normalize((normals[b[:, None], corners] * bary).sum(1), dim=-1, eps=1e-9)
        uv = (self.corner_uv[face] * bary).sum(1)
        tex = sample_texture(texture, uv[None, None])[0, 0]        # [M, C]
        albedo, ears, hair, eye = tex[:, 0:3], tex[:, 3], tex[:, 4:5], tex[:, 5:6]
        synthetic = torch.as_tensor(specs.label == LABEL_SYNTHETIC)[b]
        seeds = specs.noise_seed

        # synthetic artefact 1: noisy saturated colour blotches on the ears
        artefact_ears = ears * front.to(f32)
        if bool(synthetic.any()):
            blotch = sample_texture(_artefact_noise(), _scramble_uv(uv, seeds, b, 0)[None, None])[0, 0]
            colour = _noise_colours(blotch)
            weight = (artefact_ears * synthetic.to(f32))[:, None] * 0.9
            albedo = albedo * (1 - weight) + colour * weight

        # lighting: ambient + Lambert + Blinn-Phong, a tinted light per frame
        def per_frame(values) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values), dtype=f32)[b]
        L = per_frame(specs.light)
        camera_centre = -torch.einsum("bji,bj->bi", R, t)[b]
        V = F.normalize(camera_centre - world, dim=-1, eps=1e-9)
        H = F.normalize(L + V, dim=-1, eps=1e-9)
        n_dot_l = (N * L).sum(-1, keepdim=True).clamp(min=0)
        n_dot_h = (N * H).sum(-1, keepdim=True).clamp(min=0)
        ambient, diffuse, specular = (per_frame(v)[:, None] for v in (specs.ambient, specs.diffuse, specs.specular))
        tint = per_frame(specs.light_colour)
        shininess = 18.0 + 62.0 * eye
        strength = specular * (1.0 - 0.7 * hair) * (1 - eye) + (specular * 3.0 + 0.2) * eye
        colour = albedo * tint * (ambient + diffuse * n_dot_l) + strength * tint * n_dot_h.pow(shininess)

        # the inside of the head (back faces): mouth interior near the projected mouth, dark elsewhere
        mouth = flame.landmarks[:, 43:51].mean(1)                   # [B, 3] inner lips, posed
        mouth_cam = torch.einsum("bij,bj->bi", R, mouth) + t
        mouth_pix = torch.einsum("bij,bj->bi", K, mouth_cam)
        mouth_pix = mouth_pix[:, :2] / mouth_pix[:, 2:3]
        radius = 0.032 * K[:, 0, 0] / mouth_cam[:, 2]
        px = (flat % size).to(f32) + 0.5
        py = ((flat // size) % size).to(f32) + 0.5
        near_mouth = ((px - mouth_pix[b, 0]) ** 2 + (py - mouth_pix[b, 1]) ** 2) < radius[b] ** 2
        back = ~front
        in_mouth = back & near_mouth
        depth = frags.depth.view(-1)[flat].to(f32)
        nearest = frags.depth.view(batch, -1).amin(dim=1).to(f32)[b]
        depth_shade = (1.0 - 3.5 * (depth - nearest).clamp(0, 0.2))[:, None]
        skin = torch.as_tensor(look.skin, dtype=f32)
        interior = torch.where(in_mouth[:, None], torch.tensor([0.30, 0.07, 0.08]) * (0.8 + ambient),
                               skin * 0.25 * (0.5 + ambient)) * depth_shade
        artefact_mouth = in_mouth.to(f32)
        if bool((synthetic & in_mouth).any()):
            noise = sample_texture(_artefact_noise(), _scramble_uv(uv, seeds, b, 1)[None, None])[0, 0, :, :1]
            hue = torch.as_tensor(np.asarray([_seed_fraction(int(x)) for x in seeds]), dtype=f32)[b]
            bright = _hue_colour(hue) * (0.8 + 0.4 * noise).clamp(0, 1)
            interior = torch.where((synthetic & in_mouth)[:, None], bright, interior)
        colour = torch.where(back[:, None], interior, colour).clamp(0, 1)

        # background gradient, composition, supersampling
        rows = (torch.arange(size, dtype=f32) + 0.5) / size
        top = torch.as_tensor(look.background[0], dtype=f32)
        bottom = torch.as_tensor(look.background[1], dtype=f32)
        bg = top * (1 - rows[:, None]) + bottom * rows[:, None]
        frame_ambient = torch.as_tensor(np.asarray(specs.ambient), dtype=f32)
        image = (bg[None, :, None, :] * (0.9 + 0.2 * frame_ambient)[:, None, None, None]).expand(batch, size, size, 3)
        image = image.reshape(-1, 3).clone()
        image[flat] = colour
        extra = torch.zeros(batch * size * size, 2)
        extra[flat, 0] = 1.0
        extra[flat, 1] = (artefact_ears + artefact_mouth).clamp(0, 1)
        image = downsample(image.view(batch, size, size, 3), s)
        extra = downsample(extra.view(batch, size, size, 2), s)
        images = (image * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        return RenderOutput(images=images, head_mask=extra[..., 0].numpy(), artefact_mask=extra[..., 1].numpy())


def region_masks(renderer: ProceduralRenderer, clip, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, R, R]`` head and artefact-region coverage of annotated samples, whatever their label:
    where a synthetic frame would be corrupted (ears, mouth interior). The regions depend on
    geometry and camera only, so any appearance with the sample's shape gives them."""
    look = make_appearance(0, 0, renderer.regions)
    texture = renderer.bake_texture(look)
    pose = np.stack([clip.global_pose, clip.neck_pose, clip.jaw_pose, clip.left_eye_pose, clip.right_eye_pose], 1)
    count = clip.num_frames
    K = square_crop_intrinsics(clip.K, clip.image_size, resolution) if clip.image_size else clip.K
    specs = FrameSpecs(expression=clip.expression[:, :NUM_EXPRESSION], pose=pose, translation=clip.translation,
                       K=K, R=clip.R, t=clip.t, light=np.tile([0.0, 0.0, 1.0], (count, 1)),
                       light_colour=np.ones((count, 3)), ambient=np.ones(count), diffuse=np.zeros(count),
                       specular=np.zeros(count), label=np.zeros(count, np.int64), noise_seed=np.zeros(count, np.int64))
    heads, artefacts = np.zeros((2, count, resolution, resolution), np.float32)
    shapes, group = np.unique(np.asarray(clip.shape, np.float64), axis=0, return_inverse=True)
    for which, shape in enumerate(shapes):
        rows = np.nonzero(group.reshape(-1) == which)[0]
        look.shape = np.zeros(NUM_SHAPE)
        look.shape[:min(NUM_SHAPE, len(shape))] = shape[:NUM_SHAPE]
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            out = renderer.render(look, specs.rows(chunk), resolution, texture=texture)
            heads[chunk], artefacts[chunk] = out.head_mask, out.artefact_mask
    return heads, artefacts


def _dilate(texture: torch.Tensor, covered: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Grow the texture's islands by ``steps`` texels so bilinear lookups at their edges stay clean."""
    value = texture * covered.float()
    weight = covered.float()[None]
    for _ in range(steps):
        grown = F.avg_pool2d(value[None], 3, 1, 1)[0]
        count = F.avg_pool2d(weight[None], 3, 1, 1)[0]
        fill = (weight == 0) & (count > 0)
        value = torch.where(fill, grown / count.clamp(min=1e-6), value)
        weight = torch.where(fill, torch.ones_like(weight), weight)
    return value


_NOISE: torch.Tensor | None = None


def _artefact_noise() -> torch.Tensor:
    """[2, 256, 256] fixed smooth noise (channel 0 blotch hue, 1 grain) the artefacts sample from,
    at a per-sample random offset and scale (so the pattern changes per sample, deterministically)."""
    global _NOISE
    if _NOISE is None:
        generator = torch.Generator().manual_seed(20261121)
        hue = _smooth_noise(generator, 1, (14, 14), 256)
        grain = _smooth_noise(generator, 1, (64, 64), 256)
        _NOISE = torch.cat([hue, grain], 0)
    return _NOISE


def _seed_fraction(seed: int, salt: int = 0) -> float:
    return float(np.random.default_rng([seed, salt]).uniform())


def _scramble_uv(uv: torch.Tensor, seeds: np.ndarray, frame: torch.Tensor, salt: int) -> torch.Tensor:
    """uv mapped through a per-sample random scale and offset, folded back into [0, 1]."""
    params = np.stack([np.random.default_rng([int(x), salt, 3]).uniform([0.7, 0.7, 0, 0], [1.4, 1.4, 1, 1])
                       for x in seeds])
    params = torch.as_tensor(params, dtype=uv.dtype)[frame]
    folded = uv * params[:, :2] + params[:, 2:]
    folded = folded % 2.0
    return torch.where(folded > 1.0, 2.0 - folded, folded)


def _hue_colour(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated colours [M, 3] of hues in [0, 1)."""
    angle = hue[:, None] * 2.0 * math.pi - torch.tensor([0.0, 2.0 * math.pi / 3, 4.0 * math.pi / 3])
    colour = torch.cos(angle) * 0.5 + 0.5
    low, high = colour.amin(-1, keepdim=True), colour.amax(-1, keepdim=True)
    return (colour - low) / (high - low + 1e-6)


def _noise_colours(noise: torch.Tensor) -> torch.Tensor:
    """Saturated colour blotches [M, 3] from the two noise channels [M, 2]."""
    colour = _hue_colour((noise[:, 0] * 2.5) % 1.0)
    return colour * (0.55 + 0.45 * (noise[:, 1:2] * 2.0).clamp(-1, 1))


# ---------------------------------------------------------------------------------------------
# The dataset


def split_identities(identities: int, seed: int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic train / held-out split by identity (at least one of each when possible)."""
    order = np.random.default_rng([seed, 7]).permutation(identities)
    heldout = int(round(heldout_fraction * identities))
    if identities >= 2 and heldout_fraction > 0:
        heldout = min(max(heldout, 1), identities - 1)
    return sorted(order[heldout:].tolist()), sorted(order[:heldout].tolist())


@dataclass
class _Plan:
    looks: list[Appearance]
    specs: list[FrameSpecs]        # per identity
    identity: np.ndarray
    label: np.ndarray
    sequence: np.ndarray
    frame_in_sequence: np.ndarray


def plan_dataset(regions: HeadRegions, identities: int, views_per_identity: int, sequences_per_identity: int,
                 frames_per_sequence: int, resolution: int, seed: int, persons: list[int] | None = None) -> _Plan:
    """Per-identity looks and frame specs; each identity's are drawn from its own seed, so a
    subset of ``persons`` gets exactly the samples the whole dataset gives them."""
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
        looks.append(look)
        specs.append(block)
        identity += [person] * len(block.label)
        label += block.label.tolist()
    return _Plan(looks=looks, specs=specs, identity=np.asarray(identity, np.int64), label=np.asarray(label, np.int64),
                 sequence=np.asarray(sequence, np.int64), frame_in_sequence=np.asarray(frame_in_sequence, np.int64))


def render_identity(renderer: ProceduralRenderer, look: Appearance, specs: FrameSpecs, resolution: int) -> np.ndarray:
    """All frames ``[N, R, R, 3]`` uint8 of one identity, in batches of ``BATCH``."""
    texture = renderer.bake_texture(look)
    count = len(specs.label)
    return np.concatenate([renderer.render(look, specs.rows(np.arange(start, min(start + BATCH, count))), resolution,
                                           texture=texture).images for start in range(0, count, BATCH)])


_WORKER: dict = {}


def _worker_init(asset, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["renderer"] = ProceduralRenderer(asset)


def _worker_render(task: tuple[Appearance, FrameSpecs, int]) -> np.ndarray:
    look, specs, resolution = task
    return render_identity(_WORKER["renderer"], look, specs, resolution)


class _LazyFrames:
    """The frames of a plan, rendered identity by identity (in this process or in ``workers``
    processes) while ``write_dataset`` saves them in order."""

    def __init__(self, renderer: ProceduralRenderer, plan: _Plan, resolution: int, progress=None,
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

    def _identities(self):
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

    def __iter__(self):
        done = 0
        for images in self._identities():
            yield from images
            done += len(images)
            if self.progress is not None:
                self.progress(done, self.total)


def generate_procedural_dataset(out_dir: str, identities: int, views_per_identity: int, sequences_per_identity: int,
                                frames_per_sequence: int = 14, resolution: int = 128, seed: int = 0,
                                heldout_fraction: float = 0.2, asset=None, progress=None,
                                threads: int | None = 1, workers: int = 1, only_split: str | None = None) -> DatasetIndex:
    """Render and write a procedural dataset to ``out_dir`` (see the module docstring); returns its
    index. ``asset`` defaults to :func:`flamediff.assets.load_asset` (the procedural head);
    ``progress(done, total)`` is called after every rendered batch. ``threads``: torch CPU threads
    while rendering (restored afterwards; None leaves torch's setting). One thread is the default:
    the renderer's many small ops gain little from a second thread, and on a busy 2-core machine
    OpenMP threads fighting for cores made it 6x slower (measured). ``workers`` > 1 renders
    identities in that many worker processes (spawned; ``threads`` torch threads each); the
    output is byte-identical to ``workers=1``. ``only_split`` ("train" or "heldout") renders only
    that split's identities, with exactly the samples the whole dataset gives them."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _generate(out_dir, identities, views_per_identity, sequences_per_identity, frames_per_sequence,
                         resolution, seed, heldout_fraction, asset, progress, workers, threads or 1, only_split)
    finally:
        torch.set_num_threads(previous)


def _generate(out_dir: str, identities: int, views_per_identity: int, sequences_per_identity: int,
              frames_per_sequence: int, resolution: int, seed: int, heldout_fraction: float, asset,
              progress, workers: int = 1, threads: int = 1, only_split: str | None = None) -> DatasetIndex:
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
                        persons=None if only_split is None else {"train": train, "heldout": heldout}[only_split])
    specs = FrameSpecs.concatenate(plan.specs)
    shape = np.concatenate([np.repeat(look.shape[None], len(block.label), axis=0)
                            for look, block in zip(plan.looks, plan.specs)])
    pose = specs.pose
    clip = make_clip(len(plan.identity), num_shape=NUM_SHAPE, num_expression=NUM_EXPRESSION,
                     camera=(specs.K, specs.R, specs.t), image_size=(resolution, resolution),
                     flame_asset=asset.identity(), shape=shape, expression=specs.expression,
                     global_pose=pose[:, 0], neck_pose=pose[:, 1], jaw_pose=pose[:, 2], left_eye_pose=pose[:, 3],
                     right_eye_pose=pose[:, 4], translation=specs.translation)
    frames = _LazyFrames(renderer, plan, resolution, progress, workers=workers, threads=threads)
    index = write_dataset(out_dir, frames, clip, plan.identity, plan.label, plan.sequence, plan.frame_in_sequence,
                          description=DESCRIPTION)
    splits = {"seed": seed, "heldout_fraction": heldout_fraction, "train": train, "heldout": heldout}
    with open(os.path.join(out_dir, "splits.json"), "w", encoding="utf-8") as handle:
        json.dump(splits, handle, indent=2)
    return index


def read_splits(folder: str) -> dict[str, list[int]]:
    """``{"train": [...], "heldout": [...]}`` identity ids of a procedural dataset."""
    with open(os.path.join(folder, "splits.json"), encoding="utf-8") as handle:
        return json.load(handle)


# ---------------------------------------------------------------------------------------------
# Command line: flamediff dataset procedural ...


def cmd(args: argparse.Namespace) -> int:
    from flamediff.assets import load_asset

    asset = load_asset(args.flame_asset)
    start = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 5.0 or done == total:
            last[0] = now
            elapsed = now - start
            print(f"  {done}/{total} frames, {elapsed:.0f} s, {elapsed / max(done, 1) * 1000:.0f} ms/frame", flush=True)

    index = generate_procedural_dataset(args.out, args.identities, args.views_per_identity, args.sequences_per_identity,
                                        frames_per_sequence=args.frames_per_sequence, resolution=args.resolution,
                                        seed=args.seed, heldout_fraction=args.heldout_fraction, asset=asset,
                                        progress=progress, threads=args.threads or None, workers=args.workers,
                                        only_split=args.only_split)
    splits = read_splits(args.out)
    elapsed = time.perf_counter() - start
    print(f"wrote {len(index)} frames ({int((index.label == 1).sum())} synthetic, {int((index.label == 0).sum())} real) "
          f"of {len(np.unique(index.identity))} identities to {args.out} in {elapsed:.1f} s; held-out identities: {splits['heldout']}")
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``dataset procedural`` to an argparse subparsers object; returns the ``dataset`` parser."""
    dataset = subparsers.add_parser("dataset", help="make training datasets")
    commands = dataset.add_subparsers(dest="dataset_command", metavar="{procedural}")
    procedural = commands.add_parser(
        "procedural", help="render the procedural head dataset (multi-view synthetic + real clips)",
        description=DESCRIPTION)
    procedural.add_argument("--out", required=True, metavar="DIR", help="output folder")
    procedural.add_argument("--identities", type=int, default=100, help="number of identities (default 100)")
    procedural.add_argument("--views-per-identity", type=int, default=20,
                            help="synthetic multi-view frames per identity (default 20)")
    procedural.add_argument("--sequences-per-identity", type=int, default=2,
                            help="real continuous clips per identity (default 2)")
    procedural.add_argument("--frames-per-sequence", type=int, default=14, help="frames per clip (default 14)")
    procedural.add_argument("--resolution", type=int, default=128, help="square frame size in pixels (default 128)")
    procedural.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    procedural.add_argument("--heldout-fraction", type=float, default=0.2,
                            help="fraction of identities held out of training (default 0.2)")
    procedural.add_argument("--only-split", choices=("train", "heldout"), default=None,
                            help="render only this split's identities (their samples are the same as in the "
                                 "whole dataset): e.g. the held-out set for evaluation")
    procedural.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads while rendering (default 1; 0 = torch's default)")
    procedural.add_argument("--workers", type=int, default=1,
                            help="render identities in this many processes (default 1; try 2 on an idle 2-core machine)")
    procedural.add_argument("--flame-asset", metavar="DIR", default=None,
                            help="FLAME asset folder; default: $FLAMEDIFF_FLAME_ASSET or the procedural head")
    procedural.set_defaults(func=cmd)
    return dataset
