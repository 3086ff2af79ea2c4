"""Scene sampling: per-frame FLAME parameters, cameras and lighting of the procedural samples
(wide-pose synthetic views and smooth "real" clips), as :class:`FrameSpecs`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv

NUM_EXPRESSION = 50
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


LIGHTINGS = ("frame", "identity")  # lighting drawn per frame (per clip) | one light per identity
# One light per identity is the default: the reference then shows the lighting of the frames it
# drives, as in a capture, so its skin tone is observable. Per-frame lights make the head's colour
# unobservable from the reference (a lighting-blind oracle that knows the albedo is 13 levels off).
DEFAULT_LIGHTING = "identity"


def identity_lighting(rng: np.random.Generator, specs: FrameSpecs) -> FrameSpecs:
    """``specs`` with one lighting for every frame: a light fixed to the head (drawn for a frontal
    camera), as in a capture session, so a reference of the identity shows the lighting of its
    other frames."""
    frontal = orbit_camera(0.0, 0.0)[0][None]
    light = _lighting(rng, frontal, 1)
    count = len(specs.label)
    return replace(specs, **{name: np.repeat(value, count, axis=0) for name, value in light.items()})


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


def _smooth_curve(rng: np.random.Generator, frames: int, channels: int, low: float, high: float,
                  keys: int | None = None) -> np.ndarray:
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
