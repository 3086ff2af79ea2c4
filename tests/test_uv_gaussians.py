"""UV binding of texels to the FLAME surface and the learnable Gaussian field on it."""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flamediff.flame.model import FlameModel
from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv
from flamediff.gaussians import uv_binding as ub
from flamediff.gaussians.field import GaussianFrame, UVGaussianField
from flamediff.gaussians.uv_binding import (UVBinding, bind_points, compute_uv_binding,
                                          load_or_compute_uv_binding, local_triangle_scale)

JAW = 2  # FLAME joint order: global, neck, jaw, left eye, right eye


@pytest.fixture(scope="module")
def binding64(head_asset) -> UVBinding:
    return compute_uv_binding(head_asset, 64)


@pytest.fixture(scope="module")
def binding128(head_asset) -> UVBinding:
    return compute_uv_binding(head_asset, 128)


def _uv_triangles(asset) -> np.ndarray:
    return np.asarray(asset.uv, dtype=np.float64)[np.asarray(asset.faces_uv)]  # [F, 3, 2]


def _uv_area(asset) -> float:
    t = _uv_triangles(asset)
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return float(0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum())


def _solve_barycentrics(tri: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Barycentrics of ``point`` in the 2D triangle ``tri`` [3, 2] by a 3x3 linear solve."""
    system = np.vstack([tri.T, np.ones(3)])
    return np.linalg.solve(system, np.array([point[0], point[1], 1.0]))


def _rest_vertices(asset, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(asset.v_template, dtype=dtype)[None]


# ---------------------------------------------------------------------------------------------
# binding


@pytest.mark.parametrize("resolution", [64, 128])
def test_coverage_matches_uv_area(head_asset, resolution):
    binding = compute_uv_binding(head_asset, resolution)
    n = binding.num_texels
    expected = _uv_area(head_asset) * resolution ** 2
    assert n > 0.5 * resolution ** 2
    assert abs(n - expected) < 0.05 * expected, (n, expected)
    assert binding.resolution == resolution
    assert binding.texel_ij.shape == (n, 2) and binding.face_ids.shape == (n,)
    assert binding.barycentrics.shape == (n, 3) and binding.face_uv_area.shape == (n,)
    # one row per texel, row-major, inside the image; faces valid
    flat = binding.texel_ij[:, 0] * resolution + binding.texel_ij[:, 1]
    assert np.all(np.diff(flat) > 0)
    assert binding.texel_ij.min() >= 0 and binding.texel_ij.max() < resolution
    assert binding.face_ids.min() >= 0 and binding.face_ids.max() < len(head_asset.faces)
    assert binding.asset_hash == head_asset.content_hash


def test_square_layout_covers_every_texel_once():
    """Two triangles (opposite windings) tiling the unit square: all R^2 texels, no duplicates,
    texel centres on the shared diagonal included once; an overlapping copy changes nothing."""
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 3, 2]])  # second one wound clockwise
    square = SimpleNamespace(uv=uv, faces_uv=faces, faces=faces, content_hash="square")
    binding = compute_uv_binding(square, 16)
    assert binding.num_texels == 16 * 16
    np.testing.assert_allclose(binding.face_uv_area, 0.5)
    # centres with u > v are in face 0 (below the diagonal), u < v in face 1
    u, v = binding.texel_uv().T
    assert np.all(binding.face_ids[u > v + 1e-12] == 0) and np.all(binding.face_ids[u < v - 1e-12] == 1)
    overlapping = SimpleNamespace(uv=uv, faces_uv=np.vstack([faces, faces]),
                                  faces=np.vstack([faces, faces]), content_hash="square2")
    again = compute_uv_binding(overlapping, 16)
    assert np.array_equal(again.texel_ij, binding.texel_ij)
    assert np.array_equal(again.face_ids, binding.face_ids)  # ties go to the lower face id


def test_chunked_rasterisation_is_identical(head_asset, binding64, monkeypatch):
    monkeypatch.setattr(ub, "_CANDIDATES_PER_CHUNK", 997)
    chunked = compute_uv_binding(head_asset, 64)
    for name in ("texel_ij", "face_ids", "barycentrics", "face_uv_area"):
        assert np.array_equal(getattr(chunked, name), getattr(binding64, name)), name


def test_barycentrics_are_valid(binding128):
    bary = binding128.barycentrics
    assert bary.min() >= 0.0 and bary.max() <= 1.0
    np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-12)


def test_texels_lie_in_their_uv_triangle(head_asset, binding64):
    """Independent check: a linear solve gives the same barycentrics for the texel centres."""
    rng = np.random.default_rng(0)
    tris = _uv_triangles(head_asset)
    uv = binding64.texel_uv()
    for k in rng.choice(binding64.num_texels, 200, replace=False):
        solved = _solve_barycentrics(tris[binding64.face_ids[k]], uv[k])
        assert solved.min() > -1e-9
        np.testing.assert_allclose(binding64.barycentrics[k], solved, atol=1e-9)


def test_uncovered_texels_are_outside_every_triangle(head_asset, binding64):
    r = binding64.resolution
    covered = np.zeros((r, r), bool)
    covered[binding64.texel_ij[:, 0], binding64.texel_ij[:, 1]] = True
    rows, cols = np.nonzero(~covered)
    pick = np.random.default_rng(1).choice(len(rows), min(300, len(rows)), replace=False)
    points = np.stack([(cols[pick] + 0.5) / r, 1.0 - (rows[pick] + 0.5) / r], -1)  # [P, 2]
    t = _uv_triangles(head_asset)[None]  # [1, F, 3, 2]
    p = points[:, None]

    def cross(a, b):
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    d = cross(t[..., 1, :] - t[..., 0, :], t[..., 2, :] - t[..., 0, :])
    w = np.stack([cross(t[..., (i + 1) % 3, :] - p, t[..., (i + 2) % 3, :] - p) / d for i in range(3)], -1)
    assert not np.any(np.all(w >= 1e-9, -1))


def test_bound_points_at_rest_are_surface_points(head_asset, binding128):
    points = bind_points(binding128, _rest_vertices(head_asset), head_asset.faces)
    assert points.shape == (1, binding128.num_texels, 3)
    rng = np.random.default_rng(2)
    tris = _uv_triangles(head_asset)
    uv = binding128.texel_uv()
    for k in rng.choice(binding128.num_texels, 100, replace=False):
        f = binding128.face_ids[k]
        weights = _solve_barycentrics(tris[f], uv[k])
        expected = weights @ head_asset.v_template[head_asset.faces[f]]
        np.testing.assert_allclose(points[0, k].numpy(), expected, atol=1e-9)


def test_local_triangle_scale(head_asset, binding64):
    verts = _rest_vertices(head_asset)
    scale = local_triangle_scale(verts, head_asset.faces, binding64.face_ids)
    f = binding64.face_ids[:50]
    a, b, c = (head_asset.v_template[head_asset.faces[f, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1)
    np.testing.assert_allclose(scale[0, :50].numpy(), np.sqrt(area), rtol=1e-10)
    doubled = local_triangle_scale(2.0 * verts, torch.as_tensor(head_asset.faces), binding64.face_ids)
    np.testing.assert_allclose(doubled.numpy(), 2.0 * scale.numpy(), rtol=1e-10)


def test_cache_round_trip(head_asset, tmp_path, monkeypatch):
    cache = str(tmp_path / "uv")
    first = load_or_compute_uv_binding(head_asset, 32, cache)
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].endswith(".npz")

    def fail(*args, **kwargs):
        raise AssertionError("the cached binding should have been loaded")

    with monkeypatch.context() as patch:
        patch.setattr(ub, "compute_uv_binding", fail)
        second = load_or_compute_uv_binding(head_asset, 32, cache)
    for name in ("texel_ij", "face_ids", "barycentrics", "face_uv_area"):
        a, b = getattr(first, name), getattr(second, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert second.resolution == 32 and second.asset_hash == head_asset.content_hash

    load_or_compute_uv_binding(head_asset, 48, cache)  # new resolution: new file
    assert len(os.listdir(cache)) == 2
    other = dataclasses.replace(head_asset, v_template=head_asset.v_template * 1.01, _hash=None)
    assert other.content_hash != head_asset.content_hash
    moved = load_or_compute_uv_binding(other, 32, cache)  # new asset hash: new file
    assert moved.asset_hash == other.content_hash
    assert len(os.listdir(cache)) == 3
    assert not [name for name in os.listdir(cache) if not name.endswith(".npz")]  # no temp files

    # a damaged file is recomputed, not trusted
    with open(os.path.join(cache, files[0]), "wb") as handle:
        handle.write(b"not an npz")
    again = load_or_compute_uv_binding(head_asset, 32, cache)
    assert np.array_equal(again.barycentrics, first.barycentrics)


def test_jaw_open_moves_jaw_texels_only(head_asset, binding128):
    weights = np.asarray(head_asset.weights)[np.asarray(head_asset.faces)[binding128.face_ids]]  # [N, 3, J]
    jaw_weight = weights[..., JAW]
    rest = bind_points(binding128, _rest_vertices(head_asset, torch.float32), head_asset.faces)[0].numpy()
    jaw = jaw_weight.min(-1) > 0.9
    top = rest[:, 1] > np.quantile(rest[:, 1], 0.8)  # upper fifth of the head
    forehead = top & (rest[:, 2] > 0.0) & (jaw_weight.max(-1) == 0.0)
    assert jaw.sum() > 20 and forehead.sum() > 20

    model = FlameModel(head_asset)
    pose = torch.zeros(1, 5, 3)
    pose[0, JAW, 0] = 0.35  # open the mouth
    with torch.no_grad():
        verts = model(pose=pose).vertices
        rest_verts = model().vertices
    posed = bind_points(binding128, verts, model.faces)[0].numpy()
    at_rest = bind_points(binding128, rest_verts, model.faces)[0].numpy()
    moved = np.linalg.norm(posed - at_rest, axis=-1)
    assert np.median(moved[jaw]) > 5e-3  # metres
    assert moved[forehead].max() < 1e-5


# ---------------------------------------------------------------------------------------------
# field


def _camera(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rotation, translation = look_at_opencv([0.0, 0.0, 0.65], [0.0, -0.005, 0.0])
    viewmat = torch.eye(4, dtype=torch.float32)
    viewmat[:3, :3] = torch.as_tensor(rotation)
    viewmat[:3, 3] = torch.as_tensor(translation)
    K = torch.as_tensor(intrinsics_from_fov(26.0, size, size), dtype=torch.float32)
    return viewmat[None], K[None]


def test_field_parameters_and_frame(head_asset, binding64):
    torch.manual_seed(0)
    field = UVGaussianField(binding64, feature_dim=8)
    n = binding64.num_texels
    assert field.features.shape == (n, 8) and field.features.abs().max() < 0.1
    assert field.opacity_logits.shape == (n,) and field.log_scales.shape == (n,)
    np.testing.assert_allclose(field.opacities().detach().numpy(), 0.9, rtol=1e-6)
    verts = FlameModel(head_asset)().vertices.expand(2, -1, -1)
    frame = field(verts, head_asset.faces)
    assert isinstance(frame, GaussianFrame)
    assert frame.means.shape == (2, n, 3) and frame.scales.shape == (2, n)
    assert frame.opacities.shape == (n,) and frame.features.shape == (n, 8)
    # the initial scale is about one texel's footprint: compare with the spacing of neighbours
    image = np.full((64, 64), -1)
    image[binding64.texel_ij[:, 0], binding64.texel_ij[:, 1]] = np.arange(n)
    left, right = image[:, :-1].ravel(), image[:, 1:].ravel()
    pair = (left >= 0) & (right >= 0)
    means = frame.means[0].detach().numpy()
    spacing = np.linalg.norm(means[left[pair]] - means[right[pair]], axis=-1)
    ratio = frame.scales[0].detach().numpy()[left[pair]] / np.maximum(spacing, 1e-9)
    assert 0.5 < np.median(ratio) < 2.0, np.median(ratio)


def test_field_config_and_state_dict(binding64):
    field = UVGaussianField(binding64, feature_dim=4)
    with torch.no_grad():
        field.features.add_(1.0)
    config = field.config()
    assert config["resolution"] == 64 and config["feature_dim"] == 4
    assert config["num_texels"] == binding64.num_texels
    state = field.state_dict()
    assert set(state) == {"features", "opacity_logits", "log_scales"}
    rebuilt = UVGaussianField.from_config(config, binding64)
    rebuilt.load_state_dict(state)
    for name in state:
        assert torch.equal(getattr(rebuilt, name), getattr(field, name))
    bad = dict(config, num_texels=config["num_texels"] + 1)
    with pytest.raises(ValueError, match="texels"):
        UVGaussianField.from_config(bad, binding64)


def test_render_head_and_gradients(head_asset, binding64):
    torch.manual_seed(0)
    field = UVGaussianField(binding64, feature_dim=16)
    verts = FlameModel(head_asset)().vertices.detach()
    viewmats, Ks = _camera(64)
    feature_map, alpha = field.render(verts, head_asset.faces, viewmats, Ks, 64, 64)
    assert feature_map.shape == (1, 64, 64, 16) and alpha.shape == (1, 64, 64, 1)
    assert torch.isfinite(feature_map).all()
    assert feature_map.abs().sum(-1)[0, 24:40, 24:40].min() > 0  # features everywhere on the face
    assert alpha[0, 24:40, 24:40].min() > 0.95
    for corner in (alpha[0, :4, :4], alpha[0, :4, -4:], alpha[0, -4:, :4], alpha[0, -4:, -4:]):
        assert corner.max() < 1e-3
    feature_map.sum().backward()
    for name in ("features", "opacity_logits", "log_scales"):
        grad = getattr(field, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
