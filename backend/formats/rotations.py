"""Rotation conversions in numpy: axis-angle, 3x3 matrices, quaternions and 6D.

numpy only, because the tracker reader runs inside Blender (no torch there) and evaluation
compares clips without building graphs; the differentiable torch version for the FLAME forward is
:mod:`flamediff.geometry.rotations`. The axis-angle <-> quaternion pair (Blender's bone
convention) lives in :mod:`.conventions`. Checked against scipy and pytorch3d's 6D convention in
tests/test_trackers.py.
"""

from __future__ import annotations

import numpy as np

from .animation import AnimationFormatError
from .conventions import quaternion_to_axis_angle


class RotationError(AnimationFormatError):
    """An array named as rotations that holds none (a general matrix, a degenerate 6D pair)."""


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """``[..., 3]`` axis-angle to ``[..., 3, 3]`` matrices (Rodrigues, series near zero)."""
    v = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1)[..., None, None]
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = np.zeros_like(x)
    skew = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(v.shape[:-1] + (3, 3))
    small = angle < 1e-6
    safe = np.where(small, 1.0, angle)
    a = np.where(small, 1.0 - angle**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - angle**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * skew + b * (skew @ skew)


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` rotation matrices to unit quaternions ``(w, x, y, z)``; each row of the
    candidates is 4 q_i q, so the largest q_i is taken for accuracy at every angle."""
    m = np.asarray(matrix, dtype=np.float64)
    d0, d1, d2 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    s21, s02, s10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    p10, p02, p21 = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    candidates = np.stack([
        np.stack([1 + d0 + d1 + d2, s21, s02, s10], -1),
        np.stack([s21, 1 + d0 - d1 - d2, p10, p02], -1),
        np.stack([s02, p10, 1 - d0 + d1 - d2, p21], -1),
        np.stack([s10, p02, p21, 1 - d0 - d1 + d2], -1)], -2)
    best = np.argmax(np.stack([d0 + d1 + d2, d0, d1, d2], -1), -1)
    q = np.take_along_axis(candidates, best[..., None, None], -2)[..., 0, :]
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """``[..., 4]`` quaternions ``(w, x, y, z)`` (normalised here) to ``[..., 3, 3]`` matrices."""
    q = np.asarray(quaternion, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1
                    ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_axis_angle(matrix: np.ndarray, name: str = "rotation") -> np.ndarray:
    """``[..., 3, 3]`` rotation matrices to axis-angle (angle in [0, pi]); refuses non-rotations."""
    m = np.asarray(matrix, dtype=np.float64)
    error = np.abs(m @ np.swapaxes(m, -1, -2) - np.eye(3)).max(initial=0.0)
    if error > 1e-4 or (np.linalg.det(m) <= 0).any():
        raise RotationError(f"'{name}' holds 3x3 matrices that are not rotations (R R^T - I up to {error:.2g}, "
                                 "or a reflection): save rotations, not general matrices")
    return quaternion_to_axis_angle(matrix_to_quaternion(m))


def rotation_6d_to_matrix(d6: np.ndarray, name: str = "rotation") -> np.ndarray:
    """Zhou et al.'s 6D rotations as pytorch3d stores them (the first two ROWS of the matrix,
    Gram-Schmidt on them) to ``[..., 3, 3]``; used by metrical-tracker and FlashAvatar."""
    d6 = np.asarray(d6, dtype=np.float64)
    a1, a2 = d6[..., :3], d6[..., 3:]
    n1 = np.linalg.norm(a1, axis=-1, keepdims=True)
    b1 = a1 / np.where(n1 > 1e-12, n1, 1.0)
    b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    n2 = np.linalg.norm(b2, axis=-1, keepdims=True)
    if (n1 <= 1e-12).any() or (n2 <= 1e-12).any():
        raise RotationError(f"'{name}' holds a degenerate 6D rotation (a zero or parallel pair of rows)")
    b2 = b2 / n2
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-2)


def matrix_to_rotation_6d(matrix: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rotation_6d_to_matrix` (pytorch3d's ``matrix_to_rotation_6d``)."""
    m = np.asarray(matrix, dtype=np.float64)
    return m[..., :2, :].reshape(m.shape[:-2] + (6,))
