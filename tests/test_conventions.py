"""Y-up <-> Z-up and OpenCV <-> Blender camera conversions, both ways."""

from __future__ import annotations

import numpy as np
import pytest

from flamediff.formats.conventions import (BlenderCameraIntrinsics, blender_camera_to_opencv, blender_to_flame_points,
                                         flame_to_blender_points, intrinsics_from_fov, look_at_opencv,
                                         opencv_to_blender_camera, project_points)


def test_flame_blender_points_round_trip():
    points = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_allclose(blender_to_flame_points(flame_to_blender_points(points)), points, atol=1e-15)
    up_in_flame = np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(flame_to_blender_points(up_in_flame), [0.0, 0.0, 1.0])
    face_forward = np.array([0.0, 0.0, 1.0])  # FLAME faces +Z; in Blender the face looks down -Y
    np.testing.assert_allclose(flame_to_blender_points(face_forward), [0.0, -1.0, 0.0], atol=1e-15)


def _random_rigid(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = q, rng.normal(size=3)
    return matrix


def test_camera_round_trip_and_axes():
    rng = np.random.default_rng(1)
    for _ in range(10):
        matrix_world = _random_rigid(rng)
        R, t = blender_camera_to_opencv(matrix_world)
        np.testing.assert_allclose(opencv_to_blender_camera(R, t), matrix_world, atol=1e-12)
    # a Blender camera at +5 on Blender's -Y axis, looking at the origin (rotation X = 90 deg)
    matrix_world = np.eye(4)
    matrix_world[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    matrix_world[:3, 3] = [0.0, -5.0, 0.0]
    R, t = blender_camera_to_opencv(matrix_world)
    origin_cam = R @ np.zeros(3) + t
    np.testing.assert_allclose(origin_cam, [0.0, 0.0, 5.0], atol=1e-12)  # straight ahead, 5 m
    flame_up = R @ np.array([0.0, 1.0, 0.0]) + t  # FLAME +Y (Blender +Z) is up: OpenCV -y
    assert flame_up[1] < 0


def test_look_at_puts_target_on_principal_point():
    R, t = look_at_opencv([0.3, 0.1, 0.5], [0.0, 0.02, 0.0])
    K = intrinsics_from_fov(30.0, 200, 100)
    pixels, depth = project_points(np.array([[0.0, 0.02, 0.0]]), K, R, t)
    np.testing.assert_allclose(pixels[0], [100.0, 50.0], atol=1e-9)
    assert depth[0] > 0
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("settings", [
    dict(lens_mm=50, resolution_x=640, resolution_y=480),
    dict(lens_mm=35, sensor_fit="VERTICAL", resolution_x=300, resolution_y=500, shift_x=0.1, shift_y=-0.05),
    dict(lens_mm=85, resolution_x=512, resolution_y=512, pixel_aspect_x=2.0, shift_y=0.2),
    dict(lens_mm=24, resolution_x=400, resolution_y=800, pixel_aspect_y=3.0, resolution_percentage=50),
])
def test_blender_intrinsics_round_trip(settings):
    K, size = BlenderCameraIntrinsics(**settings).to_opencv()
    back = BlenderCameraIntrinsics.from_opencv(K, *size)
    K2, size2 = back.to_opencv()
    assert size2 == size
    np.testing.assert_allclose(K2, K, rtol=1e-12, atol=1e-9)


def test_horizontal_fit_focal_length():
    K, size = BlenderCameraIntrinsics(lens_mm=50, sensor_width_mm=36, resolution_x=1920, resolution_y=1080).to_opencv()
    assert size == (1920, 1080)
    np.testing.assert_allclose(K[0, 0], 50 / 36 * 1920)
    np.testing.assert_allclose(K[:2, 2], [960, 540])
    with pytest.raises(ValueError, match="sensor_fit"):
        BlenderCameraIntrinsics(lens_mm=50, sensor_fit="DIAGONAL").to_opencv()
