"""Axis-angle (files) <-> quaternion (Blender bones) conversions in backend/formats/conventions.py."""

from __future__ import annotations

import numpy as np

from flamediff.formats.conventions import axis_angle_to_quaternion, quaternion_to_axis_angle


def test_quaternion_axis_angle_round_trip():
    rng = np.random.default_rng(1)
    axis_angle = np.concatenate([rng.normal(0, 1, (200, 3)), rng.normal(0, 1e-9, (5, 3)), np.zeros((1, 3))])
    axis_angle *= np.minimum(1.0, 3.0 / np.linalg.norm(axis_angle, axis=1, keepdims=True).clip(1e-300))
    quaternion = axis_angle_to_quaternion(axis_angle)
    np.testing.assert_allclose(np.linalg.norm(quaternion, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_axis_angle(quaternion), axis_angle, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_axis_angle(-2.5 * quaternion), axis_angle, atol=1e-12)


def test_quaternion_matches_rodrigues():
    rng = np.random.default_rng(2)
    axis_angle = rng.normal(0, 0.8, (50, 3))
    w, x, y, z = np.moveaxis(axis_angle_to_quaternion(axis_angle), -1, 0)
    from_quaternion = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                                2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                                2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    angle = np.linalg.norm(axis_angle, axis=1)[:, None, None]
    k = axis_angle[:, :, None] / angle
    skew = np.zeros((50, 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -k[:, 2, 0], k[:, 1, 0], -k[:, 0, 0]
    skew -= np.transpose(skew, (0, 2, 1))
    rodrigues = np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew
    np.testing.assert_allclose(from_quaternion.reshape(-1, 3, 3), rodrigues, atol=1e-12)
