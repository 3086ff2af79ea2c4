"""Coordinate and camera conventions, written once for the backend and the add-on.

- FLAME space: metres, Y up, the face looks down +Z.
- Blender world: metres, Z up. A rig is FLAME space rotated +90 degrees about X, so
  Blender (x, y, z) = (x_f, -z_f, y_f).
- Cameras in files and in the backend: OpenCV (x right, y down, z forward), world-to-camera
  ``R | t`` in FLAME space, intrinsics ``K`` in pixels where the image's top-left corner is
  (0, 0) and the centre of pixel (i, j) is (i + 0.5, j + 0.5) (the convention of gsplat and
  of Blender's ``world_to_camera_view``).
- Blender cameras look down their local -Z with +Y up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Rotation taking FLAME (Y-up) coordinates to Blender (Z-up) coordinates: +90 deg about X.
FLAME_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
#: Axis flip between a Blender camera's local frame and an OpenCV camera frame.
BLENDER_CAMERA_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def flame_to_blender_points(points: np.ndarray) -> np.ndarray:
    """Map ``[..., 3]`` FLAME-space points to Blender world coordinates."""
    return np.asarray(points, dtype=np.float64) @ FLAME_TO_BLENDER.T


def blender_to_flame_points(points: np.ndarray) -> np.ndarray:
    """Map ``[..., 3]`` Blender world points to FLAME space (inverse of the above)."""
    return np.asarray(points, dtype=np.float64) @ FLAME_TO_BLENDER


def _homogeneous(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    matrix = np.zeros(rotation.shape[:-2] + (4, 4))
    matrix[..., :3, :3] = rotation
    matrix[..., :3, 3] = translation
    matrix[..., 3, 3] = 1.0
    return matrix


def view_matrices(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` world-to-camera matrices from OpenCV ``R [..., 3, 3]`` and ``t [..., 3]``
    (what the splatter and the rasteriser take as ``viewmats``)."""
    return _homogeneous(np.asarray(R, np.float64), np.asarray(t, np.float64))


def blender_camera_to_opencv(matrix_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera OpenCV ``(R, t)`` in FLAME space from a Blender camera's ``matrix_world``.

    Accepts ``[4, 4]`` or ``[T, 4, 4]``. Object scale is dropped, as Blender's projection
    ignores it.
    """
    matrix_world = np.array(matrix_world, dtype=np.float64)
    matrix_world[..., :3, :3] /= np.linalg.norm(matrix_world[..., :3, :3], axis=-2, keepdims=True)
    flame_to_world = _homogeneous(FLAME_TO_BLENDER, np.zeros(3))
    world_to_blcam = np.linalg.inv(matrix_world)
    blcam_to_cv = _homogeneous(BLENDER_CAMERA_TO_OPENCV, np.zeros(3))
    world_to_cv = blcam_to_cv @ world_to_blcam @ flame_to_world
    return world_to_cv[..., :3, :3], world_to_cv[..., :3, 3]


def opencv_to_blender_camera(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Blender camera ``matrix_world`` from a FLAME-space world-to-camera OpenCV ``(R, t)``."""
    world_to_cv = _homogeneous(np.asarray(rotation, np.float64), np.asarray(translation, np.float64))
    blender_to_flame = _homogeneous(FLAME_TO_BLENDER.T, np.zeros(3))
    cv_to_blcam = _homogeneous(BLENDER_CAMERA_TO_OPENCV, np.zeros(3))
    world_to_blcam = cv_to_blcam @ world_to_cv @ blender_to_flame
    return np.linalg.inv(world_to_blcam)


@dataclass(frozen=True)
class BlenderCameraIntrinsics:
    """The Blender camera and render settings that decide a camera's pixel intrinsics."""

    lens_mm: float
    sensor_width_mm: float = 36.0
    sensor_height_mm: float = 24.0
    sensor_fit: str = "AUTO"  # AUTO | HORIZONTAL | VERTICAL
    shift_x: float = 0.0
    shift_y: float = 0.0
    resolution_x: int = 512
    resolution_y: int = 512
    resolution_percentage: int = 100
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0

    def image_size(self) -> tuple[int, int]:
        """Rendered ``(width, height)`` in pixels, after the resolution percentage."""
        scale = self.resolution_percentage / 100.0
        return int(self.resolution_x * scale), int(self.resolution_y * scale)

    def to_opencv(self) -> tuple[np.ndarray, tuple[int, int]]:
        """OpenCV ``K`` (pixels) and ``(width, height)``, honouring sensor fit, shift and aspect."""
        width, height = self.image_size()
        fit = self.sensor_fit
        if fit == "AUTO":
            fit = "HORIZONTAL" if width * self.pixel_aspect_x >= height * self.pixel_aspect_y else "VERTICAL"
            sensor_mm = self.sensor_width_mm
        elif fit == "HORIZONTAL":
            sensor_mm = self.sensor_width_mm
        elif fit == "VERTICAL":
            sensor_mm = self.sensor_height_mm
        else:
            raise ValueError(f"sensor_fit must be AUTO, HORIZONTAL or VERTICAL, not {self.sensor_fit!r}")
        pixel_aspect = self.pixel_aspect_y / self.pixel_aspect_x
        view_px = width if fit == "HORIZONTAL" else height * pixel_aspect
        fx = self.lens_mm / sensor_mm * view_px
        fy = fx / pixel_aspect
        cx = width / 2.0 - self.shift_x * view_px
        cy = height / 2.0 + self.shift_y * view_px / pixel_aspect
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return K, (width, height)

    @classmethod
    def from_opencv(cls, K: np.ndarray, width: int, height: int,
                    sensor_width_mm: float = 36.0) -> "BlenderCameraIntrinsics":
        """Blender settings reproducing ``K`` at ``width`` x ``height`` (square-pixel focal ratio
        is expressed through the pixel aspect, principal point through the shift)."""
        K = np.asarray(K, dtype=np.float64)
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        pixel_aspect = fx / fy  # = pixel_aspect_y / pixel_aspect_x
        aspect_x, aspect_y = (1.0, pixel_aspect) if pixel_aspect >= 1.0 else (1.0 / pixel_aspect, 1.0)
        view_px = width
        return cls(
            lens_mm=fx * sensor_width_mm / view_px,
            sensor_width_mm=sensor_width_mm,
            sensor_height_mm=sensor_width_mm * height / width,
            sensor_fit="HORIZONTAL",
            shift_x=(width / 2.0 - cx) / view_px,
            shift_y=(cy - height / 2.0) * pixel_aspect / view_px,
            resolution_x=int(width),
            resolution_y=int(height),
            resolution_percentage=100,
            pixel_aspect_x=aspect_x,
            pixel_aspect_y=aspect_y,
        )


def refit_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """``K`` (``[..., 3, 3]``) of a ``from_size`` image re-expressed for a ``to_size`` frame with
    the same framing: the whole source image fitted inside the frame (scaled by the smaller
    ratio of sides), centred, so a tracker's camera keeps the face's size and place when the
    scene keeps its own resolution."""
    (width, height), (to_width, to_height) = from_size, to_size
    scale = min(to_width / width, to_height / height)
    out = np.array(K, dtype=np.float64)
    out[..., 0, 2] = (out[..., 0, 2] - width / 2.0) * scale + to_width / 2.0
    out[..., 1, 2] = (out[..., 1, 2] - height / 2.0) * scale + to_height / 2.0
    out[..., 0, 0] *= scale
    out[..., 1, 1] *= scale
    out[..., 0, 1] *= scale
    return out


def project_points(points: np.ndarray, K: np.ndarray, rotation: np.ndarray,
                   translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``[N, 3]`` world points to pixels ``[N, 2]`` and camera depths ``[N]`` (OpenCV)."""
    cam = np.asarray(points, np.float64) @ np.asarray(rotation, np.float64).T + translation
    pix = cam @ np.asarray(K, np.float64).T
    return pix[:, :2] / pix[:, 2:3], cam[:, 2]


def look_at_opencv(eye: np.ndarray, target: np.ndarray,
                   up: np.ndarray | tuple[float, float, float] = (0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera OpenCV ``(R, t)`` for a camera at ``eye`` looking at ``target`` (FLAME space)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return rotation, -rotation @ eye


def intrinsics_from_fov(fov_y_degrees: float, width: int, height: int) -> np.ndarray:
    """Pinhole ``K`` with square pixels and a centred principal point."""
    fy = 0.5 * height / math.tan(math.radians(fov_y_degrees) / 2.0)
    return np.array([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


def axis_angle_to_quaternion(axis_angle: np.ndarray) -> np.ndarray:
    """``[..., 3]`` axis-angle (files) to ``[..., 4]`` unit quaternions ``(w, x, y, z)`` (Blender bones).

    The half-angle sine is divided out with a series near zero so tiny rotations stay exact.
    """
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(axis_angle, axis=-1, keepdims=True)
    half = 0.5 * angle
    small = angle < 1e-6
    scale = np.where(small, 0.5 - angle**2 / 48.0, np.sin(half) / np.where(small, 1.0, angle))
    return np.concatenate([np.cos(half), axis_angle * scale], axis=-1)


def quaternion_to_axis_angle(quaternion: np.ndarray) -> np.ndarray:
    """``[..., 4]`` quaternions ``(w, x, y, z)``, not necessarily unit (Blender interpolates
    components), to ``[..., 3]`` axis-angle with the angle in ``[0, pi]``."""
    q = np.asarray(quaternion, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., :1] < 0.0, -q, q)  # same rotation, shortest angle
    w, vector = q[..., :1], q[..., 1:]
    sine = np.linalg.norm(vector, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sine, w)
    small = sine < 1e-8
    scale = np.where(small, 2.0 / np.where(w > 0, w, 1.0), angle / np.where(small, 1.0, sine))
    return vector * scale


def square_fit_intrinsics(K: np.ndarray, image_size: tuple[int, int], resolution: int) -> np.ndarray:
    """Intrinsics for the whole ``(width, height)`` image centred in a square of side
    ``max(width, height)`` (letterboxed), resized to ``resolution`` pixels: a 16:9 camera keeps
    its whole framing, where :func:`square_crop_intrinsics` would zoom into its centre square.
    Works on ``[..., 3, 3]``."""
    width, height = image_size
    side = max(width, height)
    out = np.array(K, dtype=np.float64)
    out[..., 0, 2] += (side - width) / 2.0
    out[..., 1, 2] += (side - height) / 2.0
    out[..., :2, :] *= resolution / side
    return out


def fitted_frame(image_size: tuple[int, int], resolution: int) -> tuple[slice, slice]:
    """``(rows, columns)`` of a ``resolution`` square rendered with :func:`square_fit_intrinsics`
    that the ``(width, height)`` image covers: crop them to get frames of the camera's aspect."""
    width, height = image_size
    side = max(width, height)
    out_width = max(1, round(resolution * width / side))
    out_height = max(1, round(resolution * height / side))
    top, left = (resolution - out_height) // 2, (resolution - out_width) // 2
    return slice(top, top + out_height), slice(left, left + out_width)


#: How the procedural training set frames a head, measured on the "real" samples of the
#: seed-20261130 set (``docs/RESULTS.md``): the square's side over the diameter of the head's
#: projected bounding sphere (median; p10-p90 0.79-0.93), and the square centre's offset from the
#: projected vertex centroid in sides (x right, y down: the face sits a little above centre).
HEAD_SQUARE_SCALE = 0.874
HEAD_SQUARE_OFFSET = (-0.006, 0.120)


def head_squares(vertices: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[F, 3]`` squares ``(left, top, side)`` in image pixels that frame each frame's head the
    way the training set does. ``vertices`` ``[F, V, 3]`` in FLAME space, cameras OpenCV.

    The side comes from the head's bounding sphere (centroid and farthest vertex), not its
    outline, so it does not breathe as the head turns, and each frame's square depends on that
    frame alone (a subset render frames a frame exactly as the full render does)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    centre = vertices.mean(axis=1)
    radius = np.linalg.norm(vertices - centre[:, None], axis=-1).max(axis=1)
    camera = np.einsum("fij,fj->fi", np.asarray(R, np.float64), centre) + np.asarray(t, np.float64)
    depth = np.maximum(camera[:, 2], 1e-6)
    pixel = np.einsum("fij,fj->fi", np.asarray(K, np.float64), camera)[:, :2] / depth[:, None]
    side = 2.0 * HEAD_SQUARE_SCALE * np.asarray(K, np.float64)[:, 0, 0] * radius / depth
    middle = pixel + np.asarray(HEAD_SQUARE_OFFSET) * side[:, None]
    return np.stack([middle[:, 0] - side / 2, middle[:, 1] - side / 2, side], axis=1)


def square_region_intrinsics(K: np.ndarray, squares: np.ndarray, resolution: int) -> np.ndarray:
    """Intrinsics ``[F, 3, 3]`` that render the ``(left, top, side)`` square of each frame's
    image at ``resolution`` pixels."""
    out = np.array(K, dtype=np.float64)
    squares = np.asarray(squares, dtype=np.float64)
    out[..., 0, 2] -= squares[:, 0]
    out[..., 1, 2] -= squares[:, 1]
    out[..., :2, :] *= (resolution / squares[:, 2])[:, None, None]
    return out


def square_crop_intrinsics(K: np.ndarray, image_size: tuple[int, int], resolution: int) -> np.ndarray:
    """Intrinsics for the centred square crop of a ``(width, height)`` image, resized to
    ``resolution`` pixels (models render square frames). Works on ``[..., 3, 3]``."""
    width, height = image_size
    side = min(width, height)
    scale = resolution / side
    out = np.array(K, dtype=np.float64)
    out[..., 0, 2] -= (width - side) / 2.0
    out[..., 1, 2] -= (height - side) / 2.0
    out[..., :2, :] *= scale
    return out
