"""A licence-free, procedurally generated head in FLAME's file format.

Every path of flamediff runs on it without the licensed FLAME files: a head-and-neck surface
with a mouth that opens with the jaw joint, separate eyeballs skinned to the eye joints and
eye openings with lids, 300 shape components that change head proportions smoothly, 100
expression components whose first ones have a visible meaning (``EXPRESSION_NAMES``), 36 pose
correctives, a sparse joint regressor, skinning weights, a UV layout and 51 landmarks.
It is written as ``FLAME_NEUTRAL.pkl`` + ``head_template.obj`` + ``flame_static_embedding.pkl``,
so ``smplx.FLAME(model_path=folder)`` and any other FLAME tool load it unchanged.

The surface and its topology are built in :mod:`.procedural_mesh`; this module rigs that mesh
(joints, skinning, components, correctives, landmarks) and writes and caches the asset.

Deterministic: numpy's legacy ``RandomState`` streams are stable across numpy versions and the
asset's identity is a quantised content hash (see ``FlameAsset.content_hash``).
Pure numpy + stdlib: the add-on generates it too.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np

from .flame_asset import write_flame_pickle, write_obj
from .procedural_mesh import (
    CENTRE,
    Y_BOTTOM,
    FaceAnchors,
    Mesh,
    ProceduralHeadSpec,
    build_mesh,
    bump,
    mirror,
    outward,
    smoothstep,
)

GENERATOR_VERSION = 1
NAME = "procedural-head"
EXPRESSION_NAMES = (
    "smile", "mouth open", "brows up", "frown", "eyes closed", "brow furrow", "lips pucker",
    "cheeks puff", "sneer", "left eye wink", "right eye wink", "lips stretch",
)
SHAPE_NAMES = ("head size", "head width", "head height", "head depth", "jaw width", "nose size",
               "forehead slope", "chin forward", "cheek fullness", "eye spacing")
#: The shipped head's resolution and seed (the asset every path uses by default).
DEFAULT_SPEC = ProceduralHeadSpec()


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# ---------------------------------------------------------------------------------------------
# Joints and skinning


def _joint_regressor(mesh: Mesh, lm: FaceAnchors) -> np.ndarray:
    """Sparse [5, V] regressor: root = neck-cut ring, neck = ring at the skull base, jaw = the two
    points below the ears, eyes = eyeball vertices (centroid = eyeball centre)."""
    regressor = np.zeros((5, len(mesh.vertices)))
    rows, cols = mesh.grid.shape
    regressor[0, mesh.grid[-1]] = 1.0 / cols
    neck_row = int(np.argmin(np.abs(mesh.vertices[mesh.grid[:, 0], 1] - (Y_BOTTOM + 0.075))))
    regressor[1, mesh.grid[neck_row]] = 1.0 / cols
    jaw_row = int(np.argmin(np.abs(mesh.theta[:, 0] - np.radians(lm.eye_theta + 21.0))))
    regressor[2, mesh.grid[jaw_row, [cols // 4, 3 * cols // 4]]] = 0.5
    for joint, first in ((3, mesh.head_count), (4, mesh.head_count + mesh.eye_count)):
        regressor[joint, first:first + mesh.eye_count] = 1.0 / mesh.eye_count
    return regressor


def _jaw_weight(mesh: Mesh, lm: FaceAnchors) -> np.ndarray:
    rows, cols = mesh.grid.shape
    row_index = np.repeat(np.arange(rows)[:, None], cols, axis=1)
    azimuth = np.abs(np.degrees(np.repeat(mesh.azimuth[None, :], rows, axis=0)))
    hard = (row_index > mesh.mouth_row).astype(np.float64)
    soft = smoothstep(mesh.mouth_row - 1.5, mesh.mouth_row + 3.5, row_index)
    outside = smoothstep(lm.mouth_half_width, lm.mouth_half_width + 14.0, azimuth)
    vertical = hard * (1.0 - outside) + soft * outside
    lateral = 1.0 - smoothstep(40.0, 88.0, azimuth)
    y = mesh.vertices[mesh.grid, 1]
    chin_y = lm.point(lm.chin_theta, 0.0)[1]
    throat = smoothstep(chin_y - 0.035, chin_y - 0.008, y)
    weight = np.zeros(len(mesh.vertices))
    weight[mesh.grid] = vertical * lateral * throat
    return weight


def _skinning_weights(mesh: Mesh, lm: FaceAnchors, regressor: np.ndarray) -> np.ndarray:
    joints = regressor @ mesh.vertices
    y = mesh.vertices[:, 1]
    on_head = smoothstep(Y_BOTTOM + 0.02, joints[1, 1] + 0.012, y)
    jaw = _jaw_weight(mesh, lm) * on_head
    weights = np.zeros((len(mesh.vertices), 5))
    weights[:, 0], weights[:, 1], weights[:, 2] = 1.0 - on_head, on_head - jaw, jaw
    eyes = mesh.head_count
    weights[eyes:] = 0.0
    weights[eyes:eyes + mesh.eye_count, 3] = 1.0
    weights[eyes + mesh.eye_count:, 4] = 1.0
    return weights


# ---------------------------------------------------------------------------------------------
# Blend shapes


class _Fields:
    """Displacement fields on the head vertices; eyeballs move rigidly with their centres."""

    def __init__(self, mesh: Mesh, lm: FaceAnchors, rng: np.random.RandomState) -> None:
        self.mesh, self.lm, self.rng = mesh, lm, rng
        self.head = mesh.vertices[: mesh.head_count]
        self.eye_left = slice(mesh.head_count, mesh.head_count + mesh.eye_count)
        self.eye_right = slice(mesh.head_count + mesh.eye_count, len(mesh.vertices))

    def full(self, field_fn: Callable[[np.ndarray], np.ndarray], rigid_eyes: bool = True) -> np.ndarray:
        """Evaluate ``field_fn(points) -> [N, 3]`` on the head (and eye centres when rigid)."""
        out = np.zeros_like(self.mesh.vertices)
        out[: self.mesh.head_count] = field_fn(self.head)
        if rigid_eyes:
            centres = field_fn(self.mesh.eye_centres)
            out[self.eye_left], out[self.eye_right] = centres[0], centres[1]
        return out

    def random_smooth(self, points: np.ndarray, wavelength: float, amplitude: float, waves: int = 4) -> np.ndarray:
        directions = self.rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        frequencies = 2.0 * np.pi / wavelength * (0.7 + 0.6 * self.rng.uniform(size=waves))
        phases = self.rng.uniform(0.0, 2.0 * np.pi, size=waves)
        amplitudes = self.rng.normal(size=(waves, 3))
        waves_at = np.sin(points @ (directions * frequencies[:, None]).T + phases)  # [N, waves]
        return amplitude / np.sqrt(waves) * waves_at @ amplitudes


def _shape_components(fields: _Fields, count: int) -> np.ndarray:
    lm = fields.lm
    chin, nose = lm.point(lm.chin_theta, 0.0), lm.point(lm.nose_theta - 4.0, 0.0)
    jaw_area = lm.point(lm.mouth_theta + 8.0, 0.0)
    cheek = lm.point(lm.eye_theta + 14.0, lm.eye_azimuth + 16.0)
    forehead = lm.point(lm.eye_theta - 30.0, 0.0)
    eye = lm.point(lm.eye_theta, lm.eye_azimuth)

    def radial(weight_fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        return lambda p: weight_fn(p)[:, None] * outward(p)

    designed = [
        lambda p: 0.05 * (p - CENTRE),
        lambda p: np.stack([0.07 * p[:, 0], 0 * p[:, 0], 0 * p[:, 0]], -1),
        lambda p: np.stack([0 * p[:, 0], 0.06 * (p[:, 1] - CENTRE[1]), 0 * p[:, 0]], -1),
        lambda p: np.stack([0 * p[:, 0], 0 * p[:, 0], 0.06 * p[:, 2]], -1),
        lambda p: np.stack([0.12 * p[:, 0] * bump(p, jaw_area, (0.08, 0.03, 0.08)), 0 * p[:, 0], 0 * p[:, 0]], -1),
        radial(lambda p: 0.005 * bump(p, nose, (0.012, 0.02, 0.03))),
        lambda p: np.stack([0 * p[:, 0], 0 * p[:, 0], -0.008 * bump(p, forehead, (0.06, 0.03, 0.05))], -1),
        lambda p: np.stack([0 * p[:, 0], 0 * p[:, 0], 0.007 * bump(p, chin, (0.025, 0.02, 0.03))], -1),
        radial(lambda p: 0.005 * mirror(bump, p, cheek, (0.02, 0.02, 0.03))),
        lambda p: np.stack([0.004 * np.tanh(p[:, 0] / 0.01) * mirror(bump, p, eye, (0.02, 0.02, 0.04)),
                            0 * p[:, 0], 0 * p[:, 0]], -1),
    ]
    components = [fields.full(fn) for fn in designed]
    for k in range(len(designed), count):
        amplitude = 0.003 * (k + 1) ** -0.6
        wavelength = 0.25 / (1.0 + 0.02 * k)
        components.append(fields.full(lambda p: fields.random_smooth(p, wavelength, amplitude)))  # noqa: B023 (called now)
    return np.stack(components[:count], axis=-1)


def _lid_field(fields: _Fields, eye_index: int, angle: float) -> np.ndarray:
    """Head-vertex field: upper lid swung down about the eye centre (the 'eye closing' motion)."""
    centre = fields.mesh.eye_centres[eye_index]
    d = fields.head - centre
    above = (d[:, 1] > 0.0) & (d[:, 2] > 0.0)
    falloff = (1.0 - smoothstep(0.0085, 0.018, d[:, 1])) * (1.0 - smoothstep(0.014, 0.022, np.abs(d[:, 0])))
    closed = d @ _rot_x(angle).T - d
    out = closed * (falloff * above)[:, None]
    lower = (d[:, 1] <= 0.0) & (d[:, 2] > 0.0)
    lower_falloff = (1.0 - smoothstep(0.008, 0.014, -d[:, 1])) * (1.0 - smoothstep(0.014, 0.02, np.abs(d[:, 0])))
    out[:, 1] += 0.0015 * lower_falloff * lower
    return out


def _expression_components(fields: _Fields, count: int) -> np.ndarray:
    lm = fields.lm
    corner = lm.point(lm.mouth_theta, lm.mouth_half_width)
    mouth = lm.point(lm.mouth_theta, 0.0)
    upper_lip = lm.point(lm.mouth_theta - 3.0, 0.0)
    lower_lip = lm.point(lm.mouth_theta + 4.0, 0.0)
    brow = lm.point(lm.eye_theta - 10.0, lm.eye_azimuth)
    inner_brow = lm.point(lm.eye_theta - 9.0, 9.0)
    cheek = lm.point(lm.eye_theta + 20.0, lm.eye_azimuth + 12.0)
    nose_side = lm.point(lm.nose_theta - 3.0, 7.0)

    def vec(p: np.ndarray, wx: float = 0.0, wy: float = 0.0, wz: float = 0.0, mirror_x: bool = False) -> np.ndarray:
        x = np.tanh(p[:, 0] / 0.004) if mirror_x else 1.0
        return np.stack([wx * x * np.ones(len(p)), wy * np.ones(len(p)), wz * np.ones(len(p))], -1)

    def m(p: np.ndarray, c: np.ndarray, s: Sequence[float]) -> np.ndarray:
        return mirror(bump, p, c, s)[:, None]

    designed = [
        lambda p: m(p, corner, (0.012, 0.01, 0.03)) * vec(p, 0.004, 0.007, -0.004, True)
        + m(p, cheek, (0.018, 0.014, 0.03)) * vec(p, 0.0, 0.003, 0.002),
        lambda p: bump(p, lower_lip, (0.025, 0.006, 0.03))[:, None] * vec(p, 0.0, -0.007, 0.001)
        + bump(p, upper_lip, (0.022, 0.004, 0.03))[:, None] * vec(p, 0.0, 0.0025, 0.0),
        lambda p: m(p, brow, (0.022, 0.012, 0.04)) * vec(p, 0.0, 0.007, 0.0),
        lambda p: m(p, corner, (0.012, 0.01, 0.03)) * vec(p, 0.001, -0.006, -0.001, True),
        lambda p: _lid_field(fields, 0, np.radians(62.0)) + _lid_field(fields, 1, np.radians(62.0)),
        lambda p: m(p, inner_brow, (0.014, 0.01, 0.03)) * vec(p, -0.003, -0.004, 0.001, True),
        lambda p: bump(p, mouth, (0.02, 0.012, 0.03))[:, None]
        * np.stack([-0.3 * p[:, 0], 0.0 * p[:, 0], 0.009 + 0.0 * p[:, 0]], -1),
        lambda p: m(p, cheek, (0.018, 0.016, 0.03)) * 0.008 * outward(p),
        lambda p: m(p, nose_side, (0.008, 0.01, 0.03)) * vec(p, 0.0, 0.003, 0.0)
        + bump(p, upper_lip, (0.02, 0.005, 0.03))[:, None] * vec(p, 0.0, 0.002, 0.0),
        lambda p: _lid_field(fields, 0, np.radians(62.0)),
        lambda p: _lid_field(fields, 1, np.radians(62.0)),
        lambda p: m(p, corner, (0.012, 0.012, 0.03)) * vec(p, 0.006, 0.0, -0.002, True),
    ]
    components = [fields.full(fn, rigid_eyes=False) for fn in designed]
    face = lm.point(lm.eye_theta + 18.0, 0.0)
    for k in range(len(designed), count):
        amplitude = 0.0025 * (k - len(designed) + 2) ** -0.5
        centre = face + fields.rng.normal(scale=(0.025, 0.03, 0.005))
        components.append(fields.full(  # the field is evaluated at once, so the loop's values are current
            lambda p: bump(p, centre, (0.03, 0.03, 0.06))[:, None] * fields.random_smooth(p, 0.06, amplitude),  # noqa: B023
            rigid_eyes=False))
    return np.stack(components[:count], axis=-1)


def _pose_correctives(fields: _Fields, weights: np.ndarray) -> np.ndarray:
    """[V, 3, 36] correctives: entries (R - I) of neck, jaw, left eye, right eye, row-major."""
    lm = fields.lm
    posedirs = np.zeros(fields.mesh.vertices.shape + (36,))
    # a little localised shaping for every entry, around each joint's skinning seam
    for joint in range(1, 5):
        seam = weights[:, joint] * (1.0 - weights[:, joint]) * 4.0
        for entry in range(9):
            column = 9 * (joint - 1) + entry
            posedirs[:, :, column] = seam[:, None] * fields.random_smooth(fields.mesh.vertices, 0.08, 0.002)
    throat = lm.point(lm.chin_theta + 22.0, 0.0)
    under_chin = fields.full(lambda p: 0.012 * bump(p, throat, (0.03, 0.015, 0.02))[:, None] * outward(p), False)
    posedirs[:, :, 0 * 9 + 7] += under_chin      # neck pitch (R21 = sin): double chin looking down
    posedirs[:, :, 1 * 9 + 7] += 0.5 * under_chin  # jaw open: soft tissue under the chin bulges
    for eye_joint, eye_index in ((3, 0), (4, 1)):
        lid = fields.full(lambda p: _lid_field(fields, eye_index, np.radians(62.0)), rigid_eyes=False)  # noqa: B023
        posedirs[:, :, 9 * (eye_joint - 1) + 5] = -0.45 * lid  # R12 = -sin: lids follow the gaze down
    return posedirs


# ---------------------------------------------------------------------------------------------
# Landmarks (FLAME's 51 static ones: brows, nose, eyes, mouth)


def _landmark_targets(lm: FaceAnchors) -> list[np.ndarray]:
    et, ea, mt, mw = lm.eye_theta, lm.eye_azimuth, lm.mouth_theta, lm.mouth_half_width
    points = [lm.point(et - 10.0 - 2.0 * np.cos(np.radians(k * 45.0)), -(ea + 16.0) + 8.0 * k) for k in range(5)]
    points += [lm.point(et - 10.0 - 2.0 * np.cos(np.radians(k * 45.0)), (ea - 16.0) + 8.0 * k) for k in range(5)]
    points += [lm.point(t, 0.0) for t in (70.0, 76.0, 82.0, 88.0)]
    points += [lm.point(lm.nose_theta + 5.0, a) for a in (-8.0, -4.0, 0.0, 4.0, 8.0)]
    for side in (-1.0, 1.0):
        centre = side * ea
        ring = [(0.0, -9.0), (-3.0, -3.5), (-3.0, 3.5), (0.0, 9.0), (3.0, 3.5), (3.0, -3.5)]
        points += [lm.point(et + dt, centre + side * da) for dt, da in ring]
    outer = [(0.0, -mw), (-2.5, -10.0), (-3.5, -4.0), (-3.0, 0.0), (-3.5, 4.0), (-2.5, 10.0), (0.0, mw),
             (4.0, 10.0), (5.5, 4.0), (6.0, 0.0), (5.5, -4.0), (4.0, -10.0)]
    inner = [(0.5, -mw + 3.0), (-1.0, -5.0), (-1.0, 0.0), (-1.0, 5.0), (0.5, mw - 3.0), (3.5, 5.0), (3.5, 0.0), (3.5, -5.0)]
    points += [lm.point(mt + dt, da) for dt, da in outer + inner]
    return points


def _embed_points(points: list[np.ndarray], vertices: np.ndarray, faces: np.ndarray,
                  allowed_faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest allowed face and the barycentrics of the closest point on it (clamped inside)."""
    corners = vertices[faces[allowed_faces]]
    centroids = corners.mean(axis=1)
    face_ids, barycentrics = [], []
    for point in points:
        best = int(np.argmin(np.linalg.norm(centroids - point, axis=1)))
        a, b, c = corners[best]
        matrix = np.stack([b - a, c - a], axis=1)
        uv, *_ = np.linalg.lstsq(matrix, point - a, rcond=None)
        bary = np.clip(np.array([1.0 - uv.sum(), uv[0], uv[1]]), 0.0, None)
        face_ids.append(allowed_faces[best])
        barycentrics.append(bary / bary.sum())
    return np.array(face_ids, np.int64), np.array(barycentrics)


# ---------------------------------------------------------------------------------------------
# Assembly and files


def build_procedural_head(spec: ProceduralHeadSpec = DEFAULT_SPEC) -> dict:
    """All arrays of the procedural head: FLAME model keys plus ``uv``/``faces_uv`` and landmarks."""
    lm = FaceAnchors()
    mesh = build_mesh(spec, lm)
    rng = np.random.RandomState(spec.seed)
    fields = _Fields(mesh, lm, rng)
    regressor = _joint_regressor(mesh, lm)
    weights = _skinning_weights(mesh, lm, regressor)
    shapedirs = np.concatenate([_shape_components(fields, 300), _expression_components(fields, 100)], axis=-1)
    posedirs = _pose_correctives(fields, weights)
    head_faces = np.nonzero(np.all(mesh.faces < mesh.head_count, axis=1))[0]
    lmk_faces, lmk_bary = _embed_points(_landmark_targets(lm), mesh.vertices, mesh.faces, head_faces)
    return {
        "v_template": mesh.vertices,
        "f": mesh.faces.astype(np.uint32),
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": regressor @ mesh.vertices,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "uv": mesh.uv,
        "faces_uv": mesh.faces_uv,
        "lmk_face_idx": lmk_faces,
        "lmk_b_coords": lmk_bary,
    }


def write_procedural_head(folder: str, spec: ProceduralHeadSpec = DEFAULT_SPEC) -> str:
    """Write the asset folder (model pickle, UV OBJ, landmark embedding, asset.json)."""
    os.makedirs(folder, exist_ok=True)
    data = build_procedural_head(spec)
    model_keys = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table",
                  "J", "bs_style", "bs_type")
    write_flame_pickle(os.path.join(folder, "FLAME_NEUTRAL.pkl"), {k: data[k] for k in model_keys})
    write_obj(os.path.join(folder, "head_template.obj"), data["v_template"], data["f"].astype(np.int64),
              data["uv"], data["faces_uv"])
    buffer = io.BytesIO()
    pickle.dump({"lmk_face_idx": data["lmk_face_idx"].astype(np.uint32), "lmk_b_coords": data["lmk_b_coords"]},
                buffer, protocol=2)
    with open(os.path.join(folder, "flame_static_embedding.pkl"), "wb") as handle:
        handle.write(buffer.getvalue())
    metadata = {
        "name": NAME, "generator_version": GENERATOR_VERSION, "spec": asdict(spec),
        "expression_names": list(EXPRESSION_NAMES), "shape_names": list(SHAPE_NAMES),
        "licence": "CC0-1.0 (generated by flamediff; not derived from FLAME data)",
    }
    with open(os.path.join(folder, "asset.json"), "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2)
    return folder


def ensure_procedural_head(cache_root: str, spec: ProceduralHeadSpec = DEFAULT_SPEC) -> str:
    """The cached asset folder under ``cache_root``, generated on first use (atomically, so two
    processes racing never see half an asset)."""
    folder = os.path.join(cache_root, f"{NAME}-v{GENERATOR_VERSION}-{spec.rows}x{spec.columns}-s{spec.seed}")
    if os.path.isfile(os.path.join(folder, "asset.json")):
        return folder
    os.makedirs(cache_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".procedural-head-", dir=cache_root)
    try:
        write_procedural_head(staging, spec)
        try:
            os.replace(staging, folder)
        except OSError:  # another process won the race; its folder is complete
            if not os.path.isfile(os.path.join(folder, "asset.json")):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
