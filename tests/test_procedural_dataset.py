"""The rasteriser (backend/geometry/rasterizer.py) and the procedural dataset (backend/data/procedural.py)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch

from flamediff.data.dataset import read_dataset
from flamediff.geometry.rasterizer import interpolate, rasterize

IDENTITY_CAMERA = (torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def _covered(vertices, faces, size, **kwargs):
    K, R, t = IDENTITY_CAMERA
    frags = rasterize(torch.as_tensor(vertices, dtype=torch.float64)[None], torch.as_tensor(faces), K, R, t,
                      size, size, **kwargs)
    return frags


# ---------------------------------------------------------------------------------------------
# Rasteriser


def test_pixel_centre_convention():
    # K = identity and z = 1: world x, y are pixel coordinates; pixel (i, j) has its centre at (i+.5, j+.5)
    frags = _covered([[0.0, 0.0, 1.0], [4.2, 0.0, 1.0], [0.0, 4.2, 1.0]], [[0, 1, 2]], 8)
    expected = np.zeros((8, 8), bool)
    for j in range(8):
        for i in range(8):
            expected[j, i] = i + j <= 3   # (i + .5) + (j + .5) <= 4.2
    assert np.array_equal(frags.mask[0].numpy(), expected)
    # a square from (1, 1) to (3, 3): exactly pixels 1..2 in x and y
    square = [[1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [3.0, 3.0, 1.0], [1.0, 3.0, 1.0]]
    frags = _covered(square, [[0, 1, 2], [0, 2, 3]], 5)
    expected = np.zeros((5, 5), bool)
    expected[1:3, 1:3] = True
    assert np.array_equal(frags.mask[0].numpy(), expected)


def _brute_force(vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, size: int):
    """Per pixel centre, every triangle: screen barycentrics, perspective depth, nearest wins."""
    pix = vertices_cam @ K.T
    xy = pix[:, :2] / pix[:, 2:3]
    face_id = -np.ones((size, size), int)
    depth = np.full((size, size), np.inf)
    bary = np.zeros((size, size, 3))
    for j in range(size):
        for i in range(size):
            p = np.array([i + 0.5, j + 0.5])
            for f, (a, b, c) in enumerate(faces):
                m = np.array([[xy[a, 0] - xy[c, 0], xy[b, 0] - xy[c, 0]], [xy[a, 1] - xy[c, 1], xy[b, 1] - xy[c, 1]]])
                l0, l1 = np.linalg.solve(m, p - xy[c])
                lam = np.array([l0, l1, 1 - l0 - l1])
                if (lam < 0).any():
                    continue
                zinv = (lam / vertices_cam[[a, b, c], 2]).sum()
                if 1.0 / zinv < depth[j, i]:
                    depth[j, i] = 1.0 / zinv
                    face_id[j, i] = f
                    bary[j, i] = lam / vertices_cam[[a, b, c], 2] / zinv
    return face_id, depth, bary


def test_rasteriser_matches_brute_force_reference():
    rng = np.random.default_rng(3)
    size = 24
    K = np.array([[30.0, 0.0, 12.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]])
    # six random, interpenetrating, strongly slanted triangles in front of the camera
    vertices = np.concatenate([rng.uniform([-0.5, -0.5, 1.0], [0.5, 0.5, 3.0], (18, 3))])
    faces = np.arange(18).reshape(6, 3)
    face_id, depth, bary = _brute_force(vertices, faces, K, size)
    assert (face_id >= 0).sum() > 100 and len(np.unique(face_id)) >= 4
    frags = rasterize(torch.as_tensor(vertices)[None], torch.as_tensor(faces), torch.as_tensor(K),
                      torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), size, size)
    assert np.array_equal(frags.face_id[0].numpy(), face_id)
    covered = face_id >= 0
    assert np.allclose(frags.depth[0].numpy()[covered], depth[covered], rtol=1e-6)
    assert np.allclose(frags.bary[0].numpy()[covered], bary[covered], atol=1e-6)


def test_perspective_correct_interpolation_and_depth_order():
    # a strongly slanted quad: interpolated camera-space positions must lie on each pixel's ray
    size = 32
    K = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    quad = torch.tensor([[-0.5, -0.4, 0.8], [0.5, -0.4, 3.0], [0.5, 0.4, 3.0], [-0.5, 0.4, 0.8]], dtype=torch.float64)
    behind = quad.clone() + torch.tensor([0.1, 0.0, 0.5], dtype=torch.float64)  # a second quad further away
    vertices = torch.cat([behind, quad])[None]
    faces = torch.tensor([[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6]])
    eye3, zero3 = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    frags = rasterize(vertices, faces, K, eye3, zero3, size, size)
    mask = frags.mask[0]
    assert mask.sum() > 300
    position = interpolate(frags, vertices, faces)[0]
    projected = position @ K.T
    projected = projected[..., :2] / projected[..., 2:3]
    jj, ii = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.stack([ii + 0.5, jj + 0.5], -1).to(torch.float64)
    assert torch.allclose(projected[mask], centres[mask], atol=1e-6)
    assert torch.allclose(position[..., 2][mask], frags.depth[0][mask], atol=1e-9)
    # where both quads overlap the nearer one (faces 2, 3) wins
    only_near = rasterize(vertices[:, 4:], faces[2:] - 4, K, eye3, zero3, size, size).mask[0]
    assert (frags.face_id[0][only_near] >= 2).all()
    # linear (not perspective-correct) interpolation would be far off on this slant
    screen = frags.bary[0][mask]
    assert screen.min() >= -1e-9 and torch.allclose(screen.sum(-1), torch.ones(int(mask.sum()), dtype=torch.float64))


def test_back_faces_flagged_or_culled():
    triangle = [[0.0, 0.0, 1.0], [6.0, 0.0, 1.0], [0.0, 6.0, 1.0]]
    # seen from +z looking down +z (OpenCV), counter-clockwise in x-right/y-down pixels faces the camera
    # exactly when its normal points towards the camera (-z)
    frags = _covered(triangle, [[0, 1, 2]], 8)
    normal = np.cross(np.subtract(triangle[1], triangle[0]), np.subtract(triangle[2], triangle[0]))
    assert bool(frags.front[0][frags.mask[0]].all()) == (normal[2] < 0)
    flipped = _covered(triangle, [[0, 2, 1]], 8)
    assert bool(flipped.front[0][flipped.mask[0]].any()) == (normal[2] >= 0)
    culled_a = _covered(triangle, [[0, 1, 2]], 8, cull_backfaces=True).mask.sum()
    culled_b = _covered(triangle, [[0, 2, 1]], 8, cull_backfaces=True).mask.sum()
    assert {int(culled_a), int(culled_b)} == {0, int(frags.mask.sum())}


def test_head_renders_front_faces_from_the_front(head_asset):
    from flamediff.flame.model import FlameModel
    from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv

    vertices = FlameModel(head_asset)().vertices
    R, t = look_at_opencv([0.0, 0.0, 0.65], [0.0, 0.0, 0.0])
    K = intrinsics_from_fov(26.0, 64, 64)
    frags = rasterize(vertices, torch.as_tensor(head_asset.faces), torch.as_tensor(K).float(),
                      torch.as_tensor(R).float(), torch.as_tensor(t).float(), 64, 64)
    assert 0.2 < frags.mask.float().mean() < 0.7
    assert frags.front[frags.mask].float().mean() > 0.97   # the outside of the head, the mouth slit aside


# ---------------------------------------------------------------------------------------------
# The procedural dataset


@pytest.fixture(scope="module")
def mini_dataset(tmp_path_factory, head_asset):
    from flamediff.data.procedural import generate_procedural_dataset

    folder = str(tmp_path_factory.mktemp("procedural") / "a")
    generate_procedural_dataset(folder, identities=3, views_per_identity=2, sequences_per_identity=1,
                                frames_per_sequence=4, resolution=32, seed=5, asset=head_asset)
    return folder


def test_mini_dataset_reads_back(mini_dataset):
    index = read_dataset(mini_dataset)
    assert index.source == "procedural"   # a checkpoint trained on it warns about real photos
    assert len(index) == 3 * (2 + 4) and index.resolution == 32
    assert set(index.label.tolist()) == {0, 1}
    assert index.annotations.has_camera and index.annotations.K.shape == (18, 3, 3)
    assert index.annotations.image_size == (32, 32)
    for person in range(3):
        rows = index.samples_of_identity(person)
        assert len(rows) == 6
        assert (index.label[rows] == 1).sum() == 2 and (index.label[rows] == 0).sum() == 4
        assert len(np.unique(index.annotations.shape[rows], axis=0)) == 1   # one shape per identity
    sequences = index.sequences()
    assert len(sequences) == 3 * 3   # two single-view sequences + one clip per identity
    for rows in sequences:
        assert len(np.unique(index.identity[rows])) == 1 and len(np.unique(index.label[rows])) == 1
        assert index.frame_in_sequence[rows].tolist() == list(range(len(rows)))
        if index.label[rows[0]] == 1:
            assert len(rows) == 1
        else:
            assert len(rows) == 4
    # synthetic views span a wide yaw range; real clips are near-frontal
    forward = index.annotations.R[:, 2]          # camera z axis in FLAME space
    yaw = np.degrees(np.arctan2(-forward[:, 0], -forward[:, 2]))
    assert np.abs(yaw[index.label == 0]).max() < 30.0
    frame = index.load_frame(0)
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.std() > 5


def test_splits_by_identity(mini_dataset):
    with open(os.path.join(mini_dataset, "splits.json"), encoding="utf-8") as handle:
        splits = json.load(handle)
    assert not set(splits["train"]) & set(splits["heldout"])
    assert sorted(splits["train"] + splits["heldout"]) == [0, 1, 2]
    assert len(splits["heldout"]) == 1


def test_identities_look_different(mini_dataset):
    index = read_dataset(mini_dataset)
    means = []
    for person in range(3):
        rows = index.samples_of_identity(person)
        frames = np.stack([index.load_frame(int(r)) for r in rows]).astype(float)
        means.append(frames.mean(axis=(0, 1, 2)))
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(means[a] - means[b]).max() > 3.0


def test_same_seed_same_bytes(mini_dataset, tmp_path, head_asset):
    from flamediff.data.procedural import generate_procedural_dataset

    # the same seed in two worker processes: the same bytes as the single-process run
    again = str(tmp_path / "again")
    generate_procedural_dataset(again, identities=3, views_per_identity=2, sequences_per_identity=1,
                                frames_per_sequence=4, resolution=32, seed=5, asset=head_asset, workers=2)
    names = sorted(os.listdir(os.path.join(mini_dataset, "frames")))
    assert names == sorted(os.listdir(os.path.join(again, "frames")))
    for name in names:
        with open(os.path.join(mini_dataset, "frames", name), "rb") as a, open(os.path.join(again, "frames", name), "rb") as b:
            assert a.read() == b.read(), name
    a, b = read_dataset(mini_dataset), read_dataset(again)
    assert np.array_equal(a.annotations.expression, b.annotations.expression)
    assert np.array_equal(a.annotations.R, b.annotations.R)
    with open(os.path.join(mini_dataset, "splits.json")) as x, open(os.path.join(again, "splits.json")) as y:
        assert x.read() == y.read()
    # another seed: other identities, other frames
    other = str(tmp_path / "other")
    generate_procedural_dataset(other, identities=3, views_per_identity=2, sequences_per_identity=1,
                                frames_per_sequence=4, resolution=32, seed=6, asset=head_asset)
    assert not np.array_equal(read_dataset(other).annotations.shape, a.annotations.shape)
    assert not np.array_equal(read_dataset(other).load_frame(0), a.load_frame(0))


def test_artefacts_only_in_their_regions(head_asset):
    from flamediff.data import procedural as P

    renderer = P.ProceduralRenderer(head_asset)
    look = P.make_appearance(0, 0, renderer.regions)
    rng = np.random.default_rng(0)
    specs = P.synthetic_views(rng, 2, 64)
    # the same pose: open jaw, seen from the side (an ear visible) and from the front (the mouth)
    specs.expression[:] = 0.0
    specs.pose[:] = 0.0
    specs.pose[:, 2, 0] = 0.3
    for k, yaw in enumerate((70.0, 0.0)):
        specs.R[k], specs.t[k] = P.orbit_camera(yaw, 5.0)
    synthetic = renderer.render(look, specs, 64)
    specs.label[:] = P.LABEL_REAL
    real = renderer.render(look, specs, 64)
    assert np.array_equal(real.head_mask, synthetic.head_mask)
    difference = np.abs(real.images.astype(float) - synthetic.images.astype(float)).max(-1)
    region = real.artefact_mask > 0
    assert region[0].sum() > 10 and region[1].sum() > 5    # an ear and the mouth interior are visible
    assert (difference[~region] == 0).all()                 # clean everywhere else
    for k in range(2):
        assert difference[k][region[k]].mean() > 20.0
    # the real mouth interior is dark; the synthetic one is bright and saturated
    mouth = real.artefact_mask[1] > 0.99
    assert real.images[1][mouth].mean() < 60 and synthetic.images[1][mouth].max(-1).mean() > 150


def test_cli_registers_and_runs(tmp_path, head_folder, head_asset, monkeypatch):
    import flamediff.assets
    from flamediff.data.cli import register_cli

    monkeypatch.setattr(flamediff.assets, "load_asset", lambda path=None: head_asset)

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    out = str(tmp_path / "cli")
    args = parser.parse_args(["dataset", "procedural", "--out", out, "--identities", "2", "--views-per-identity", "1",
                              "--sequences-per-identity", "1", "--frames-per-sequence", "2", "--resolution", "16",
                              "--seed", "1", "--flame-asset", head_folder])
    assert args.func(args) == 0
    index = read_dataset(out)
    assert len(index) == 6 and index.resolution == 16


def test_identity_lighting_keeps_geometry_and_shares_one_light(head_asset):
    from flamediff.data import procedural as P
    from flamediff.data.dataset import DatasetError
    from flamediff.data.procedural.generate import plan_dataset

    regions = P.ProceduralRenderer(head_asset).regions
    args = (4, 3, 2, 5, 32, 7)
    frame, identity = (plan_dataset(regions, *args, lighting=mode) for mode in ("frame", "identity"))
    assert np.array_equal(frame.identity, identity.identity)
    for a, b in zip(frame.specs, identity.specs):
        for name in ("expression", "pose", "K", "R", "t", "label", "noise_seed"):   # the same frames' geometry
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.ptp(a.ambient) > 0.01 and np.ptp(a.light, axis=0).max() > 0.05   # per frame: varies
        for name in ("light", "light_colour", "ambient", "diffuse", "specular"):    # per identity: one light
            assert np.ptp(getattr(b, name), axis=0).max() == 0.0, name
    lights = np.stack([b.light[0] for b in identity.specs])
    assert np.ptp(lights, axis=0).max() > 0.05                                        # drawn per identity
    assert np.allclose(np.linalg.norm(lights, axis=1), 1.0)
    subset = plan_dataset(regions, *args, persons=[2], lighting="identity")           # a subset: the same light
    assert np.array_equal(subset.specs[0].light, identity.specs[2].light)
    with pytest.raises(DatasetError, match="lighting must be one of"):
        plan_dataset(regions, *args, lighting="studio")
