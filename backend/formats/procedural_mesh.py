"""The procedural head's surface and topology: an ellipsoidal skull smoothly joined to an elliptic
neck, a face carved into it, eye openings and a mouth slit, two eyeballs, and the UV layout.

:mod:`.procedural_head` rigs this mesh in FLAME's terms (joints, skinning, shape and expression
components, pose correctives, landmarks) and writes the asset. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CENTRE = np.array([0.0, 0.015, 0.0])
Y_BOTTOM = -0.135  # neck cut
EYE_RADIUS = 0.0115


@dataclass(frozen=True)
class ProceduralHeadSpec:
    """Resolution and seed of the generated head; change either and the asset hash changes."""

    rows: int = 56
    columns: int = 96
    eye_rings: int = 8
    eye_segments: int = 12
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Small maths helpers


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def bump(points: np.ndarray, centre: np.ndarray, sigma: tuple[float, float, float]) -> np.ndarray:
    """Anisotropic Gaussian bump in space, 1 at ``centre``."""
    d = (points - centre) / np.asarray(sigma)
    return np.exp(-0.5 * np.sum(d * d, axis=-1))


def mirror(bump_fn: Callable[..., np.ndarray], points: np.ndarray, centre: np.ndarray,
           sigma: Sequence[float]) -> np.ndarray:
    """The same bump on both sides of the face (x and -x)."""
    flipped = centre * np.array([-1.0, 1.0, 1.0])
    return bump_fn(points, centre, sigma) + bump_fn(points, flipped, sigma)


def outward(points: np.ndarray) -> np.ndarray:
    """Unit directions from the head's centre to ``points``."""
    d = points - CENTRE
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The base surface: an ellipsoidal skull smoothly joined to an elliptic neck, plus features


def _direction(theta: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(theta) * np.sin(azimuth), np.cos(theta), np.sin(theta) * np.cos(azimuth)], -1)


def _base_radius(theta: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    d = _direction(theta, azimuth)
    depth = np.where(d[..., 2] > 0, 0.096, 0.104)
    r_head = 1.0 / np.sqrt((d[..., 0] / 0.077) ** 2 + (d[..., 1] / 0.118) ** 2 + (d[..., 2] / depth) ** 2)
    # elliptic neck cylinder centred behind the head centre, only for downward directions
    rho_x, rho_z, z_c = 0.052, 0.056, -0.012
    a2 = (d[..., 0] / rho_x) ** 2 + (d[..., 2] / rho_z) ** 2 + 1e-12
    b = -2.0 * d[..., 2] * z_c / rho_z ** 2
    c = (z_c / rho_z) ** 2 - 1.0
    r_neck = (-b + np.sqrt(b * b - 4.0 * a2 * c)) / (2.0 * a2)
    r_neck = r_neck * smoothstep(np.radians(95.0), np.radians(125.0), theta)
    return (r_head ** 8 + r_neck ** 8) ** (1.0 / 8.0)


def _base_points(theta: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    return CENTRE + _base_radius(theta, azimuth)[..., None] * _direction(theta, azimuth)


def _bottom_theta(azimuth: np.ndarray) -> np.ndarray:
    """Per column, the polar angle at which the surface reaches the neck cut (bisection)."""
    low = np.full_like(azimuth, np.radians(120.0))
    high = np.full_like(azimuth, np.radians(178.0))
    for _ in range(60):
        mid = 0.5 * (low + high)
        above = _base_points(mid, azimuth)[..., 1] > Y_BOTTOM
        low, high = np.where(above, mid, low), np.where(above, high, mid)
    return 0.5 * (low + high)


@dataclass
class FaceAnchors:
    """Where the face features sit on the base surface, as (polar, azimuth) angles in degrees."""

    eye_theta: float = 74.0
    eye_azimuth: float = 23.0
    mouth_theta: float = 103.5
    mouth_half_width: float = 17.0  # degrees of azimuth
    nose_theta: float = 90.0
    chin_theta: float = 121.0

    def point(self, theta_deg: float, azimuth_deg: float) -> np.ndarray:
        return _base_points(np.radians(np.float64(theta_deg)), np.radians(np.float64(azimuth_deg)))


def _feature_offset(points: np.ndarray, lm: FaceAnchors) -> np.ndarray:
    """Radial displacement (metres) that carves a face into the base surface."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    front = smoothstep(0.0, 0.05, z)
    nose_top, nose_tip = lm.point(68.0, 0.0), lm.point(lm.nose_theta, 0.0)
    along = np.clip((nose_top[1] - y) / (nose_top[1] - nose_tip[1]), 0.0, 1.15)
    nose_profile = np.where(along <= 1.0, 0.004 + 0.017 * along ** 1.5, 0.021 * np.exp(-((along - 1.0) / 0.08) ** 2))
    nose_width = 0.008 + 0.006 * along
    nose = nose_profile * np.exp(-0.5 * (x / nose_width) ** 2) * front * (y < nose_top[1] + 0.004)
    eye = lm.point(lm.eye_theta, lm.eye_azimuth)
    brow = lm.point(lm.eye_theta - 9.0, lm.eye_azimuth - 2.0)
    cheek = lm.point(lm.eye_theta + 14.0, lm.eye_azimuth + 16.0)
    mouth = lm.point(lm.mouth_theta, 0.0)
    chin = lm.point(lm.chin_theta, 0.0)
    ear = lm.point(lm.eye_theta + 12.0, 92.0)
    lower_face = smoothstep(lm.point(lm.eye_theta + 8, 0.0)[1], mouth[1], y) * front
    lower_face = np.where(y < mouth[1], smoothstep(chin[1] - 0.03, mouth[1], y) * front, lower_face)
    lower_face = lower_face * np.exp(-0.5 * (x / 0.045) ** 2)
    return (
        nose
        + 0.006 * mirror(bump, points, brow, (0.02, 0.006, 0.02))
        - 0.011 * mirror(bump, points, eye, (0.012, 0.009, 0.02))
        + 0.005 * mirror(bump, points, cheek, (0.015, 0.012, 0.02))
        + 0.010 * lower_face
        + 0.0035 * bump(points, mouth + [0, 0.004, 0], (0.02, 0.003, 0.02))
        + 0.0035 * bump(points, mouth - [0, 0.005, 0], (0.018, 0.003, 0.02))
        + 0.009 * bump(points, chin, (0.016, 0.01, 0.02))
        + 0.012 * mirror(bump, points, ear, (0.01, 0.022, 0.01))
    )


# ---------------------------------------------------------------------------------------------
# Mesh topology


@dataclass
class Mesh:
    vertices: np.ndarray        # [V, 3] rest positions
    faces: np.ndarray           # [F, 3]
    uv: np.ndarray              # [U, 2]
    faces_uv: np.ndarray        # [F, 3]
    grid: np.ndarray            # [rows, columns] head vertex ids (row 0 just below the crown)
    theta: np.ndarray           # [rows, columns] polar angles of the grid
    azimuth: np.ndarray         # [columns]
    mouth_row: int
    head_count: int             # vertices [0, head_count) are the head, then left eye, right eye
    eye_centres: np.ndarray     # [2, 3] left (+x), right (-x)
    eye_count: int


def _grid_angles(spec: ProceduralHeadSpec) -> tuple[np.ndarray, np.ndarray]:
    azimuth = -np.pi + 2.0 * np.pi * np.arange(spec.columns) / spec.columns
    upper_rows = int(round(spec.rows * 0.8))
    theta_knee = np.radians(125.0)
    upper = np.linspace(np.radians(3.2), theta_knee, upper_rows)
    bottom = _bottom_theta(azimuth)
    fractions = np.linspace(0.0, 1.0, spec.rows - upper_rows + 1)[1:]
    lower = theta_knee + (bottom[None, :] - theta_knee) * fractions[:, None]
    theta = np.concatenate([np.repeat(upper[:, None], spec.columns, axis=1), lower], axis=0)
    return theta, azimuth


def _eye_hole(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    d = points - centre
    return ((d[..., 0] / 0.0145) ** 2 + (d[..., 1] / 0.0078) ** 2 < 1.0) & (d[..., 2] > -0.004)


def _build_head_surface(spec: ProceduralHeadSpec, lm: FaceAnchors) -> tuple:
    theta, azimuth = _grid_angles(spec)
    base = _base_points(theta, azimuth[None, :])
    points = base + _feature_offset(base, lm)[..., None] * outward(base)
    crown = CENTRE + _base_radius(np.array(0.0), np.array(0.0)) * np.array([0.0, 1.0, 0.0])
    mouth_row = int(np.argmin(np.abs(theta[:, 0] - np.radians(lm.mouth_theta))))
    return theta, azimuth, points, crown, mouth_row


def _eye_centres(lm: FaceAnchors) -> np.ndarray:
    surface = lm.point(lm.eye_theta, lm.eye_azimuth)
    left = surface - outward(surface) * (EYE_RADIUS * 0.45) - np.array([0.0, 0.0, 0.0045])
    return np.stack([left, left * np.array([-1.0, 1.0, 1.0])])


def _sphere(centre: np.ndarray, spec: ProceduralHeadSpec, uv_centre: tuple[float, float],
            first_vertex: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV sphere whose front pole looks down +Z, with an azimuthal (seamless) UV island."""
    polar = np.linspace(0.0, np.pi, spec.eye_rings + 1)[1:-1]
    around = 2.0 * np.pi * np.arange(spec.eye_segments) / spec.eye_segments
    p, a = np.meshgrid(polar, around, indexing="ij")
    ring = np.stack([np.sin(p) * np.cos(a), np.sin(p) * np.sin(a), np.cos(p)], -1).reshape(-1, 3)
    unit = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]])
    radius_uv = np.concatenate([[0.0], (p / np.pi).reshape(-1), [1.0]]) * 0.06
    angle_uv = np.concatenate([[0.0], a.reshape(-1), [0.0]])
    uv = np.stack([uv_centre[0] + radius_uv * np.cos(angle_uv), uv_centre[1] + radius_uv * np.sin(angle_uv)], -1)
    s, last = spec.eye_segments, len(unit) - 1
    ids = 1 + np.arange(len(polar) * s).reshape(len(polar), s)
    faces = [[0, ids[0, k], ids[0, (k + 1) % s]] for k in range(s)]
    for r in range(len(polar) - 1):
        for k in range(s):
            a0, a1, b0, b1 = ids[r, k], ids[r, (k + 1) % s], ids[r + 1, k], ids[r + 1, (k + 1) % s]
            faces += [[a0, b0, b1], [a0, b1, a1]]
    faces += [[last, ids[-1, (k + 1) % s], ids[-1, k]] for k in range(s)]
    return centre + EYE_RADIUS * unit, np.array(faces) + first_vertex, uv


def build_mesh(spec: ProceduralHeadSpec, lm: FaceAnchors) -> Mesh:
    theta, azimuth, points, crown, mouth_row = _build_head_surface(spec, lm)
    rows, cols = theta.shape
    grid = 1 + np.arange(rows * cols).reshape(rows, cols)
    vertices = np.concatenate([crown[None], points.reshape(-1, 3)])
    # close the lips: pull the two rows around the mouth line together inside the mouth span
    in_mouth = np.abs(np.degrees(azimuth)) <= lm.mouth_half_width
    taper = np.clip(1.0 - (np.degrees(azimuth) / lm.mouth_half_width) ** 2, 0.0, 1.0)
    upper_ids, lower_ids = grid[mouth_row, in_mouth], grid[mouth_row + 1, in_mouth]
    middle = 0.5 * (vertices[upper_ids] + vertices[lower_ids])
    pull = 0.42 * taper[in_mouth, None]
    vertices[upper_ids] += pull * (middle - vertices[upper_ids])
    vertices[lower_ids] += pull * (middle - vertices[lower_ids])
    # head faces (grid quads + crown fan), with UVs; the seam column gets its own vt
    head_u = 0.84
    uv = [[head_u * (j + 0.5) / cols, 1.0] for j in range(cols)]
    uv_grid = len(uv) + np.arange(rows * (cols + 1)).reshape(rows, cols + 1)
    uv += [[head_u * j / cols, 1.0 - (i + 1) / rows] for i in range(rows) for j in range(cols + 1)]
    faces, faces_uv = [], []
    for j in range(cols):
        faces.append([0, grid[0, j], grid[0, (j + 1) % cols]])
        faces_uv.append([j, uv_grid[0, j], uv_grid[0, j + 1]])
    eye_centres = _eye_centres(lm)
    for i in range(rows - 1):
        for j in range(cols):
            if i == mouth_row and in_mouth[j] and in_mouth[(j + 1) % cols]:
                continue  # the mouth slit
            quad = [grid[i, j], grid[i + 1, j], grid[i + 1, (j + 1) % cols], grid[i, (j + 1) % cols]]
            quad_uv = [uv_grid[i, j], uv_grid[i + 1, j], uv_grid[i + 1, j + 1], uv_grid[i, j + 1]]
            centroid = vertices[quad].mean(axis=0)
            if any(_eye_hole(centroid, c) for c in eye_centres):
                continue
            faces += [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
            faces_uv += [[quad_uv[0], quad_uv[1], quad_uv[2]], [quad_uv[0], quad_uv[2], quad_uv[3]]]
    head_count = len(vertices)
    all_vertices, all_faces, all_uv, all_faces_uv = [vertices], [np.array(faces)], [np.array(uv)], [np.array(faces_uv)]
    uv_offset = len(uv)
    for centre, uv_centre in zip(eye_centres, ((0.92, 0.62), (0.92, 0.38))):
        first = sum(len(v) for v in all_vertices)
        sphere_vertices, sphere_faces, sphere_uv = _sphere(centre, spec, uv_centre, first)
        all_vertices.append(sphere_vertices)
        all_faces.append(sphere_faces)
        all_faces_uv.append(sphere_faces - first + uv_offset)
        all_uv.append(sphere_uv)
        uv_offset += len(sphere_uv)
    return Mesh(
        vertices=np.concatenate(all_vertices), faces=np.concatenate(all_faces).astype(np.int64),
        uv=np.concatenate(all_uv), faces_uv=np.concatenate(all_faces_uv).astype(np.int64), grid=grid,
        theta=theta, azimuth=azimuth, mouth_row=mouth_row, head_count=head_count,
        eye_centres=eye_centres, eye_count=len(all_vertices[1]),
    )
