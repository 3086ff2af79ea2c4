"""The procedural head: FLAME's layout, deterministic, and it looks and moves like a head."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from flamediff.formats.flame_asset import load_flame_asset
from flamediff.formats.procedural_head import EXPRESSION_NAMES, ProceduralHeadSpec, build_procedural_head
from flamediff.flame.model import FlameModel


def test_flame_layout(head_asset, head_folder):
    a = head_asset
    assert a.num_shape == 300 and a.num_expression == 100
    assert a.posedirs.shape == (a.num_vertices, 3, 36)
    assert a.J_regressor.shape == (5, a.num_vertices) and np.count_nonzero(a.J_regressor) < 0.1 * a.J_regressor.size
    np.testing.assert_array_equal(a.parents, [-1, 0, 1, 1, 1])
    np.testing.assert_allclose(a.weights.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(a.J_regressor.sum(axis=1), 1.0, atol=1e-12)
    assert 2000 < a.num_vertices < 10000 and len(a.landmark_faces) == 51
    assert a.uv.min() >= 0.0 and a.uv.max() <= 1.0
    assert set(os.listdir(head_folder)) >= {"FLAME_NEUTRAL.pkl", "head_template.obj", "flame_static_embedding.pkl"}
    metadata = json.load(open(os.path.join(head_folder, "asset.json")))
    assert metadata["expression_names"][:3] == ["smile", "mouth open", "brows up"]


def test_deterministic():
    first = build_procedural_head(ProceduralHeadSpec(rows=20, columns=32))
    second = build_procedural_head(ProceduralHeadSpec(rows=20, columns=32))
    for key in ("v_template", "shapedirs", "posedirs", "weights", "lmk_b_coords"):
        np.testing.assert_array_equal(first[key], second[key])
    other = build_procedural_head(ProceduralHeadSpec(rows=20, columns=32, seed=1))
    assert not np.array_equal(first["shapedirs"][..., 50], other["shapedirs"][..., 50])


def _eye_vertices(asset, joint):
    return np.nonzero(asset.weights[:, joint] > 0.999)[0]


def test_eyeballs_are_separate_and_follow_eye_joints(head_asset):
    model = FlameModel(head_asset, dtype=torch.float64)
    left = _eye_vertices(head_asset, 3)
    right = _eye_vertices(head_asset, 4)
    assert len(left) == len(right) > 20
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 3, 1] = 0.4  # left eye looks sideways
    moved = (model(pose=pose).vertices[0] - model().vertices[0]).norm(dim=1).numpy()
    assert moved[left].max() > 1e-3
    assert moved[right].max() == 0.0
    centre = head_asset.J_regressor[3] @ head_asset.v_template
    radii = np.linalg.norm(head_asset.v_template[left] - centre, axis=1)
    np.testing.assert_allclose(radii, radii.mean(), rtol=1e-9)  # a sphere around its joint


def test_jaw_opens_the_mouth(head_asset):
    model = FlameModel(head_asset, dtype=torch.float64)
    landmarks_rest = model().landmarks[0].numpy()
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 2, 0] = 0.3
    landmarks_open = model(pose=pose).landmarks[0].numpy()
    upper_lip, lower_lip = 45, 49  # middle of the inner lips (iBUG-68 points 62 and 66, less 17)
    gap_rest = landmarks_rest[upper_lip, 1] - landmarks_rest[lower_lip, 1]
    gap_open = landmarks_open[upper_lip, 1] - landmarks_open[lower_lip, 1]
    assert gap_open > gap_rest + 0.01
    nose = 13
    np.testing.assert_allclose(landmarks_open[nose], landmarks_rest[nose], atol=1e-9)  # upper face stays


def test_expressions_have_their_meaning(head_asset):
    model = FlameModel(head_asset, dtype=torch.float64)
    rest = model().landmarks[0].numpy()

    def landmarks(component: int, value: float = 1.0):
        expression = torch.zeros(1, 100, dtype=torch.float64)
        expression[0, component] = value
        return model(expression=expression).landmarks[0].numpy()

    corners = [31, 37]  # outer mouth corners
    smile = landmarks(EXPRESSION_NAMES.index("smile"))
    assert (smile[corners, 1] - rest[corners, 1]).min() > 0.003
    frown = landmarks(EXPRESSION_NAMES.index("frown"))
    assert (frown[corners, 1] - rest[corners, 1]).max() < -0.003
    brows = landmarks(EXPRESSION_NAMES.index("brows up"))
    assert (brows[:10, 1] - rest[:10, 1]).min() > 0.002
    closed = landmarks(EXPRESSION_NAMES.index("eyes closed"))
    upper_lid, lower_lid = 19 + 1, 19 + 4  # right eye: upper and lower lid
    assert rest[upper_lid, 1] - rest[lower_lid, 1] > 0.005
    assert closed[upper_lid, 1] - closed[lower_lid, 1] < 0.4 * (rest[upper_lid, 1] - rest[lower_lid, 1])


def test_components_are_ordered_by_importance(head_asset):
    shape_norm = np.linalg.norm(head_asset.shapedirs, axis=(0, 1))
    assert shape_norm[0] > shape_norm[20] > shape_norm[100] > shape_norm[299]
    expression_norm = np.linalg.norm(head_asset.exprdirs, axis=(0, 1))
    assert expression_norm[12] > expression_norm[50] > expression_norm[99]


def test_shape_changes_proportions_smoothly(head_asset):
    model = FlameModel(head_asset, dtype=torch.float64)
    rest = model().vertices[0].numpy()
    wide = model(shape=torch.tensor([[0.0, 2.0]], dtype=torch.float64)).vertices[0].numpy()
    width = np.ptp(rest[:, 0])
    assert np.ptp(wide[:, 0]) > 1.1 * width
    neighbours = head_asset.faces[:, :2]
    edge_stretch = np.abs(np.linalg.norm(wide[neighbours[:, 0]] - wide[neighbours[:, 1]], axis=1)
                          / np.linalg.norm(rest[neighbours[:, 0]] - rest[neighbours[:, 1]], axis=1) - 1.0)
    assert edge_stretch.max() < 0.5


def test_written_asset_loads_unchanged(tmp_path):
    from flamediff.formats.procedural_head import write_procedural_head

    write_procedural_head(str(tmp_path), ProceduralHeadSpec(rows=20, columns=32))
    asset = load_flame_asset(str(tmp_path))
    assert asset.name == "procedural-head" and asset.num_vertices > 500
