"""Tests for backend.gaussians.splatting (feature splatter of the Gaussian embedding)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flamediff.gaussians.splatting import (
    splat_features,
    splat_features_gsplat,
    splat_features_numba,
    splat_features_torch,
)

DT = torch.float64
CPU_BACKENDS = {"torch": splat_features_torch, "numba": splat_features_numba}


# --------------------------------------------------------------------------
# brute-force reference


def _project_one(mean: Tensor, scale: Tensor, viewmat: Tensor, K: Tensor,
                 width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
    """Textbook EWA projection of one Gaussian: (camera point, 2D mean, 2D covariance)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = R @ mean + t
    x, y, z = p[0], p[1], p[2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x = (-(cx / fx + 0.3 * 0.5 * width / fx), (width - cx) / fx + 0.3 * 0.5 * width / fx)
    lim_y = (-(cy / fy + 0.3 * 0.5 * height / fy), (height - cy) / fy + 0.3 * 0.5 * height / fy)
    xc = z * torch.clamp(x / z, lim_x[0], lim_x[1])
    yc = z * torch.clamp(y / z, lim_y[0], lim_y[1])
    zero = torch.zeros((), dtype=mean.dtype)
    J = torch.stack([torch.stack([fx / z, zero, -fx * xc / z**2]),
                     torch.stack([zero, fy / z, -fy * yc / z**2])])
    cov3 = R @ (scale**2 * torch.eye(3, dtype=mean.dtype)) @ R.T
    cov2 = J @ cov3 @ J.T + 0.3 * torch.eye(2, dtype=mean.dtype)
    mean2 = torch.stack([fx * x / z + cx, fy * y / z + cy])
    return p, mean2, cov2


def splat_features_reference(
    means: Tensor, scales: Tensor, opacities: Tensor, features: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int,
    near: float = 0.01, far: float = 100.0, pixels: list[tuple[int, int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per pixel, walk every Gaussian in depth order with gsplat's rules. Tiny scenes only.

    With ``pixels`` [(x, y), ...] only those pixels are walked: ([F, P, D], [F, P, 1]), so a
    large image is checked at a sample of its pixels."""
    F, N, _ = means.shape
    scales = scales.expand(F, N)
    opacities = opacities.expand(F, N)
    feats_all = features.expand(F, *features.shape[-2:])
    images, alphas = [], []
    for f in range(F):
        splats = []
        for n in range(N):
            p, m2, cov2 = _project_one(means[f, n], scales[f, n], viewmats[f], Ks[f], width, height)
            if near <= p[2].item() <= far:
                prec = torch.linalg.inv(cov2)
                splats.append((p[2].item(), m2, prec, opacities[f, n], feats_all[f, n]))
        splats.sort(key=lambda s: s[0])
        walk = pixels or [(px, py) for py in range(height) for px in range(width)]
        composited = [_composite_pixel(px, py, splats, features.shape[-1], means.dtype) for px, py in walk]
        image = torch.stack([acc for acc, _ in composited])
        alpha = torch.stack([a for _, a in composited])[..., None]
        images.append(image if pixels else image.view(height, width, -1))
        alphas.append(alpha if pixels else alpha.view(height, width, 1))
    return torch.stack(images), torch.stack(alphas)


def _composite_pixel(px: int, py: int, splats: list, dim: int, dtype) -> tuple[Tensor, Tensor]:
    """(features [D], alpha) of pixel (px, py): depth-sorted splats, gsplat's rules."""
    pix = torch.tensor([px + 0.5, py + 0.5], dtype=dtype)
    T = torch.ones((), dtype=dtype)
    acc = torch.zeros(dim, dtype=dtype)
    for _, m2, prec, o, c in splats:
        d = pix - m2
        power = 0.5 * d @ prec @ d
        a = torch.clamp(o * torch.exp(-power), max=0.999)
        if power.item() < 0 or a.item() < 1 / 255:
            continue
        if (T * (1 - a)).item() <= 1e-4:
            break
        acc = acc + T * a * c
        T = T * (1 - a)
    return acc, 1 - T


# --------------------------------------------------------------------------
# scenes


def _camera(F: int, width: int, height: int, fov_deg: float = 60.0, dtype=DT,
            seed: int = 0) -> tuple[Tensor, Tensor]:
    """F cameras looking roughly down +z at the origin from z = -2, slightly rotated."""
    g = torch.Generator().manual_seed(seed)
    viewmats = torch.zeros(F, 4, 4, dtype=dtype)
    for f in range(F):
        ang = (torch.rand(3, generator=g, dtype=dtype) - 0.5) * 0.3
        kx = torch.tensor([[0, -ang[2], ang[1]], [ang[2], 0, -ang[0]], [-ang[1], ang[0], 0]],
                          dtype=dtype)
        viewmats[f, :3, :3] = torch.linalg.matrix_exp(kx)
        viewmats[f, :3, 3] = torch.tensor([0.0, 0.0, 2.0], dtype=dtype)
        viewmats[f, 3, 3] = 1.0
    fx = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1]], dtype=dtype)
    return viewmats, K.expand(F, 3, 3).clone()


def _scene(N: int, F: int = 1, D: int = 3, seed: int = 0, dtype=DT, spread: float = 0.6):
    """N random Gaussians in a cube of half-size ``spread`` around the origin."""
    g = torch.Generator().manual_seed(seed)
    means = ((torch.rand(N, 3, generator=g, dtype=dtype) - 0.5) * 2 * spread)
    means = means.expand(F, N, 3).clone()
    scales = 0.03 + 0.12 * torch.rand(N, generator=g, dtype=dtype)
    opac = 0.2 + 0.75 * torch.rand(N, generator=g, dtype=dtype)
    feats = torch.randn(N, D, generator=g, dtype=dtype)
    return means, scales, opac, feats


def _with_specials(means, scales, opac, feats):
    """Append Gaussians behind the camera, beyond far, partly off-screen, and far off-screen.

    The last one sits outside gsplat's 1.3x FOV guard, so its Jacobian is clamped.
    """
    extra = torch.tensor([[0.0, 0.0, -2.5],     # z_cam = -0.5: behind the camera
                          [0.0, 0.0, 200.0],    # beyond far = 100
                          [1.25, 0.1, 0.0],     # centre just right of the image (60 deg fov)
                          [-1.8, -0.2, 0.0]],   # x/z = -0.9: clamped Jacobian, tail visible
                         dtype=means.dtype)
    F = means.shape[0]
    means = torch.cat([means, extra.expand(F, 4, 3)], 1)
    scales = torch.cat([scales, torch.tensor([0.3, 0.3, 0.25, 0.6], dtype=scales.dtype)])
    opac = torch.cat([opac, torch.tensor([0.9, 0.9, 0.9, 0.9], dtype=opac.dtype)])
    g = torch.Generator().manual_seed(123)
    feats = torch.cat([feats, torch.randn(4, feats.shape[1], dtype=feats.dtype, generator=g)])
    return means, scales, opac, feats


# --------------------------------------------------------------------------
# correctness against the reference


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seed,N,W,H",
                         [(0, 12, 12, 10), (1, 20, 16, 16), (2, 8, 9, 13), (3, 16, 16, 8)])
def test_matches_reference(seed, N, W, H, backend):
    means, scales, opac, feats = _with_specials(*_scene(N, seed=seed))
    viewmats, Ks = _camera(1, W, H, seed=seed)
    _check_against_reference(means, scales, opac, feats, viewmats, Ks, W, H, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_reference_general_intrinsics(backend):
    """fx != fy and an off-centre principal point (clamp limits are asymmetric)."""
    means, scales, opac, feats = _with_specials(*_scene(14, seed=9))
    viewmats, Ks = _camera(1, 15, 11, seed=9)
    Ks[:, 0, 0] *= 1.2
    Ks[:, 0, 2] += 1.7
    Ks[:, 1, 2] -= 2.2
    _check_against_reference(means, scales, opac, feats, viewmats, Ks, 15, 11, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_reference_when_pixels_saturate(backend):
    """Stacks of nearly opaque Gaussians: the 0.999 cap and the T <= 1e-4 stop both fire."""
    means, scales, opac, feats = _scene(16, seed=4, spread=0.25)
    opac = torch.full_like(opac, 0.97)
    opac[:3] = 0.9995  # capped at 0.999
    viewmats, Ks = _camera(1, 12, 12, fov_deg=20, seed=4)
    ref_a = _check_against_reference(means, 3 * scales, opac, feats, viewmats, Ks, 12, 12, backend)
    assert (ref_a > 0.999).float().mean() > 0.5  # most pixels reach the stopping regime


def _check_against_reference(means, scales, opac, feats, viewmats, Ks, W, H, backend="torch") -> Tensor:
    splat = CPU_BACKENDS[backend]
    ref_img, ref_a = splat_features_reference(means, scales, opac, feats, viewmats, Ks, W, H)
    img, a = splat(means, scales, opac, feats, viewmats, Ks, W, H, tile_size=4)
    assert img.shape == (1, H, W, feats.shape[1]) and a.shape == (1, H, W, 1)
    assert ref_a.max() > 0.5, "scene should be visibly covered"
    torch.testing.assert_close(img, ref_img, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(a, ref_a, atol=1e-10, rtol=1e-9)
    # float32 agrees with the float64 reference to float rounding
    inputs32 = (t.float() for t in (means, scales, opac, feats, viewmats, Ks))
    img32, a32 = splat(*inputs32, W, H)
    assert (img32.double() - ref_img).abs().max() < 1e-5
    assert (a32.double() - ref_a).abs().max() < 1e-5
    return ref_a


def test_culled_gaussians_do_not_contribute():
    means, scales, opac, feats = _scene(10, seed=4)
    viewmats, Ks = _camera(1, 12, 12, seed=4)
    base = splat_features_torch(means, scales, opac, feats, viewmats, Ks, 12, 12)
    m2, s2, o2, f2 = _with_specials(means, scales, opac, feats)
    keep = [0, 1]  # behind camera and beyond far only
    idx = list(range(10)) + [10 + k for k in keep]
    with_culled = splat_features_torch(m2[:, idx], s2[idx], o2[idx], f2[idx], viewmats, Ks, 12, 12)
    torch.testing.assert_close(with_culled[0], base[0])
    torch.testing.assert_close(with_culled[1], base[1])


def test_partly_offscreen_gaussian_is_drawn():
    viewmats, Ks = _camera(1, 16, 16)
    viewmats[0, :3, :3] = torch.eye(3, dtype=DT)
    # centre 2 px right of the image edge, sigma ~ 2.7 px: its left tail is visible
    fx = Ks[0, 0, 0].item()
    x = (8 + 2) / fx * 2.0
    means = torch.tensor([[[x, 0.0, 0.0]]], dtype=DT)
    args = (means, torch.tensor([0.35], dtype=DT), torch.tensor([0.9], dtype=DT),
            torch.ones(1, 1, dtype=DT), viewmats, Ks, 16, 16)
    img, a = splat_features_torch(*args)
    ref, ref_a = splat_features_reference(*args)
    assert a[0, 8, 15, 0] > 0.1 and a[0, 8, 0, 0] == 0
    torch.testing.assert_close(img, ref)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_match_reference(backend):
    means, scales, opac, feats = _with_specials(*_scene(7, seed=5, spread=0.4))
    viewmats, Ks = _camera(1, 8, 8, fov_deg=50, seed=5)
    leaves = [t.clone().requires_grad_(True) for t in (means, scales, opac, feats)]
    w = torch.randn(1, 8, 8, 3, dtype=DT, generator=torch.Generator().manual_seed(0))

    def loss(fn, **kw):
        img, a = fn(*leaves, viewmats, Ks, 8, 8, **kw)
        return (img * w).sum() + (a * w[..., :1]).sum()

    g_ref = torch.autograd.grad(loss(splat_features_reference), leaves)
    g_torch = torch.autograd.grad(loss(CPU_BACKENDS[backend], tile_size=4), leaves)
    for name, gr, gt in zip(("means", "scales", "opacities", "features"), g_ref, g_torch):
        assert gr.abs().max() > 0, name
        torch.testing.assert_close(gt, gr, atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_tiny_scene(backend):
    means, scales, opac, feats = _scene(3, D=2, seed=6, spread=0.3)
    viewmats, Ks = _camera(1, 6, 6, fov_deg=40, seed=6)
    leaves = tuple(t.clone().requires_grad_(True) for t in (means, scales, opac, feats))

    def fn(*ts):
        img, a = CPU_BACKENDS[backend](*ts, viewmats, Ks, 6, 6, tile_size=4)
        return img, a

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, fast_mode=True)


# --------------------------------------------------------------------------
# compositing order, invariances, batching


def _two_gaussians(z_red: float, z_blue: float) -> tuple:
    """A red and a blue nearly opaque Gaussian on the optical axis at the given depths."""
    viewmats, Ks = _camera(1, 8, 8)
    viewmats[0, :3, :3] = torch.eye(3, dtype=DT)
    means = torch.tensor([[[0.0, 0.0, z_red - 2.0], [0.0, 0.0, z_blue - 2.0]]], dtype=DT)
    scales = torch.tensor([0.5, 0.5], dtype=DT)
    opac = torch.tensor([0.99, 0.99], dtype=DT)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    return means, scales, opac, feats, viewmats, Ks, 8, 8


def test_front_to_back_order():
    near_red, _ = splat_features_torch(*_two_gaussians(1.0, 3.0))
    near_blue, _ = splat_features_torch(*_two_gaussians(3.0, 1.0))
    c = near_red[0, 4, 4]
    assert c[0] > 0.9 and c[1] < 0.1  # the near, nearly opaque one hides the far one
    torch.testing.assert_close(near_blue[..., [1, 0]], near_red)  # swapping depths swaps
    torch.testing.assert_close(near_red, splat_features_reference(*_two_gaussians(1.0, 3.0))[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_alpha_cap_at_0999(backend):
    """A Gaussian centred on a pixel centre with opacity ~1 gives alpha 0.999 there, flat in o."""
    viewmats, Ks = _camera(1, 9, 9)
    viewmats[0, :3, :3] = torch.eye(3, dtype=DT)  # principal point (4.5, 4.5): pixel (4, 4)
    opac = torch.tensor([0.99999], dtype=DT, requires_grad=True)
    args = (torch.zeros(1, 1, 3, dtype=DT), torch.tensor([0.1], dtype=DT), opac,
            torch.ones(1, 1, dtype=DT), viewmats, Ks, 9, 9)
    img, a = CPU_BACKENDS[backend](*args)
    assert abs(a[0, 4, 4, 0].item() - 0.999) < 1e-12 and a[0, 4, 5, 0] < 0.999
    (g,) = torch.autograd.grad(a[0, 4, 4, 0], opac)
    assert g.item() == 0.0
    torch.testing.assert_close(a, splat_features_reference(*args)[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tile_size_invariance(backend):
    means, scales, opac, feats = _with_specials(*_scene(40, F=2, D=5, seed=7))
    viewmats, Ks = _camera(2, 37, 29, seed=7)
    outs = [CPU_BACKENDS[backend](means, scales, opac, feats, viewmats, Ks, 37, 29, tile_size=ts)
            for ts in (4, 5, 16, 64)]
    for img, a in outs[1:]:
        torch.testing.assert_close(img, outs[0][0], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(a, outs[0][1], atol=1e-12, rtol=1e-10)


def test_small_chunks_match(monkeypatch):
    """Tiny compositing blocks: transmittance carried across K blocks, and early exit."""
    import flamediff.gaussians.splatting as sp

    means, scales, opac, feats = _scene(60, D=4, seed=8, spread=0.3)
    opac = torch.full_like(opac, 0.95)  # dense and opaque: every pixel stops early
    viewmats, Ks = _camera(1, 16, 16, fov_deg=20, seed=8)
    w = torch.randn(1, 16, 16, 5, dtype=DT, generator=torch.Generator().manual_seed(1))

    def run():
        leaves = [t.clone().requires_grad_(True) for t in (means, 3 * scales, opac, feats)]
        img, a = splat_features_torch(*leaves, viewmats, Ks, 16, 16, tile_size=8)
        (torch.cat([img, a], -1) * w).sum().backward()
        return [img, a] + [t.grad for t in leaves]

    big = run()
    calls = []
    block = sp._composite_block
    monkeypatch.setattr(sp, "_composite_block", lambda *a: calls.append(1) or block(*a))
    monkeypatch.setattr(sp, "CHUNK_ELEMS", 64 * 5)  # one 8x8 tile, 5 Gaussians per block
    small = run()
    n_blocks = len(calls) // 2  # each block runs again in backward (checkpointing)
    assert big[1].min() > 0.99 and n_blocks < 4 * 60 // 5  # stopped before the last block
    for x, y in zip(small, big):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_frames_batch_equals_per_frame(backend):
    F = 3
    means, scales, opac, feats = _scene(25, F=F, D=4, seed=9)
    means = means + 0.05 * torch.randn_like(means)  # per-frame deformation
    scales_f = scales.expand(F, -1) * torch.linspace(0.8, 1.2, F, dtype=DT)[:, None]
    feats_f = feats.expand(F, -1, -1) + 0.1 * torch.randn(F, *feats.shape, dtype=DT)
    viewmats, Ks = _camera(F, 14, 11, seed=9)
    splat = CPU_BACKENDS[backend]
    img, a = splat(means, scales_f, opac, feats_f, viewmats, Ks, 14, 11)
    for f in range(F):
        i1, a1 = splat(means[f:f + 1], scales_f[f], opac, feats_f[f],
                                      viewmats[f:f + 1], Ks[f:f + 1], 14, 11)
        torch.testing.assert_close(img[f:f + 1], i1)
        torch.testing.assert_close(a[f:f + 1], a1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_broadcast_N_vs_FN(backend):
    F = 2
    splat = CPU_BACKENDS[backend]
    means, scales, opac, feats = _scene(15, F=F, D=3, seed=10)
    viewmats, Ks = _camera(F, 10, 10, seed=10)
    leaves_n = [t.clone().requires_grad_(True) for t in (scales, opac, feats)]
    img_n, a_n = splat(means, *leaves_n[:2], leaves_n[2], viewmats, Ks, 10, 10)
    img_f, a_f = splat(means, scales.expand(F, -1), opac.expand(F, -1),
                                      feats.expand(F, -1, -1), viewmats, Ks, 10, 10)
    torch.testing.assert_close(img_n, img_f)
    torch.testing.assert_close(a_n, a_f)
    (img_n.sum() + a_n.sum()).backward()
    assert [tuple(t.grad.shape) for t in leaves_n] == [(15,), (15,), (15, 3)]


def test_auto_backend_on_cpu_uses_numba(monkeypatch):
    import flamediff.gaussians.splatting as sp

    means, scales, opac, feats = _scene(10, seed=11)
    viewmats, Ks = _camera(1, 8, 8)
    calls = []
    monkeypatch.setattr(sp, "splat_features_numba", lambda *a, **k: calls.append(1) or splat_features_numba(*a, **k))
    a = splat_features(means, scales, opac, feats, viewmats, Ks, 8, 8)
    b = splat_features_torch(means, scales, opac, feats, viewmats, Ks, 8, 8)
    torch.testing.assert_close(a[0], b[0])
    assert calls == [1] and sp.auto_backend(torch.device("cpu")) == "numba"
    monkeypatch.setattr(sp, "_importable", lambda module: False)  # numba missing: the torch path
    assert sp.auto_backend(torch.device("cpu")) == "torch"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_all_culled_still_differentiable(backend):
    means, scales, opac, feats = _scene(4, seed=12)
    viewmats, Ks = _camera(1, 8, 8)
    leaves = [t.clone().requires_grad_(True) for t in (means - 10.0, scales, opac, feats)]
    img, a = CPU_BACKENDS[backend](*leaves, viewmats, Ks, 8, 8)  # everything behind the camera
    (img.sum() + a.sum()).backward()
    assert not img.any() and all(t.grad is not None and not t.grad.any() for t in leaves)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_scene_and_float32_dtype(backend):
    viewmats, Ks = _camera(2, 8, 6, dtype=torch.float32)
    img, a = CPU_BACKENDS[backend](torch.zeros(2, 0, 3), torch.zeros(0), torch.zeros(0),
                                   torch.zeros(0, 5), viewmats, Ks, 8, 6)
    assert img.shape == (2, 6, 8, 5) and a.shape == (2, 6, 8, 1)
    assert img.dtype == torch.float32 and not img.any() and not a.any()


# --------------------------------------------------------------------------
# input validation


def _good_args():
    means, scales, opac, feats = _scene(5, F=2, D=3)
    viewmats, Ks = _camera(2, 8, 8)
    return dict(means=means, scales=scales, opacities=opac, features=feats,
                viewmats=viewmats, Ks=Ks, width=8, height=8)


@pytest.mark.parametrize("name,bad", [
    ("means", lambda a: a["means"][0]),
    ("means", lambda a: a["means"][..., :2]),
    ("scales", lambda a: a["scales"][:4]),
    ("scales", lambda a: a["scales"].expand(3, -1)),
    ("opacities", lambda a: a["opacities"][None, None]),
    ("features", lambda a: a["features"][:4]),
    ("features", lambda a: a["features"][0]),
    ("viewmats", lambda a: a["viewmats"][:, :3]),
    ("viewmats", lambda a: a["viewmats"][:1]),
    ("Ks", lambda a: a["Ks"][0]),
    ("width", lambda a: 0),
    ("height", lambda a: -4),
    ("width", lambda a: 8.0),
])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_input_raises_value_error(name, bad, backend):
    args = _good_args()
    args[name] = bad(args)
    with pytest.raises(ValueError, match=name):
        splat_features(**args, backend=backend)


def test_bad_backend_and_tile_size():
    with pytest.raises(ValueError, match="backend"):
        splat_features(**_good_args(), backend="cuda")
    with pytest.raises(ValueError, match="tile_size"):
        splat_features(**_good_args(), tile_size=0)
    with pytest.raises(ValueError, match="near"):
        splat_features(**_good_args(), near=2.0, far=1.0)


def test_gsplat_backend_errors_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="gsplat|CUDA"):
        splat_features(**_good_args(), backend="gsplat")
    with pytest.raises(RuntimeError, match="backend='torch'"):
        splat_features_gsplat(**_good_args())


# --------------------------------------------------------------------------
# gsplat parity (GPU only)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat")
def test_gsplat_parity():
    pytest.importorskip("gsplat")
    g = torch.Generator().manual_seed(0)
    N, D, W, H, F = 2000, 16, 96, 80, 2
    dirs = torch.nn.functional.normalize(torch.randn(N, 3, generator=g), dim=-1)
    means = (0.1 * dirs + 0.01 * torch.randn(N, 3, generator=g)).expand(F, N, 3).clone()
    scales = 0.002 + 0.004 * torch.rand(N, generator=g)
    opac = 0.1 + 0.85 * torch.rand(N, generator=g)
    feats = torch.randn(N, D, generator=g)
    viewmats, Ks = _camera(F, W, H, fov_deg=50, dtype=torch.float32)
    viewmats[:, 2, 3] = 0.6
    inputs = [t.cuda() for t in (means, scales, opac, feats)]
    w = torch.randn(F, H, W, D, generator=g).cuda()
    results = {}
    for backend in ("torch", "gsplat"):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        img, a = splat_features(*leaves, viewmats.cuda(), Ks.cuda(), W, H, backend=backend)
        ((img * w).sum() + a.sum()).backward()
        results[backend] = (img.detach(), a.detach(), [t.grad for t in leaves])
    (i_t, a_t, g_t), (i_g, a_g, g_g) = results["torch"], results["gsplat"]
    print(f"\nmax|d feature map| = {(i_t - i_g).abs().max().item():.3e}, "
          f"max|d alpha| = {(a_t - a_g).abs().max().item():.3e}")
    for name, gt, gg in zip(("means", "scales", "opacities", "features"), g_t, g_g):
        rel = ((gt - gg).norm() / gg.norm().clamp(min=1e-12)).item()
        print(f"grad {name}: max|d| = {(gt - gg).abs().max().item():.3e}, rel L2 = {rel:.3e}")
        assert rel < 1e-2, name
    # float32 rounding (gsplat uses __expf) may flip a rare alpha ~ 1/255 decision: one such
    # contribution is ~0.004 * |feature|, so bound the mean tightly and the max loosely.
    assert (i_t - i_g).abs().mean() < 1e-5 and (i_t - i_g).abs().max() < 5e-2
    assert (a_t - a_g).abs().mean() < 1e-6 and (a_t - a_g).abs().max() < 1e-2


# --------------------------------------------------------------------------
# the compiled CPU path against the torch path on real posed heads


def _posed_head_field(head_asset, resolution: int, frames: int = 1):
    """A Gaussian field with random features, opacities and scales on posed procedural heads,
    seen by the demo's portrait camera at ``resolution`` px (float32, as training runs)."""
    from flamediff.demo import demo_animation
    from flamediff.flame.model import FlameModel
    from flamediff.formats.conventions import view_matrices
    from flamediff.gaussians.field import UVGaussianField
    from flamediff.gaussians.uv_binding import load_or_compute_uv_binding

    g = torch.Generator().manual_seed(resolution)
    field = UVGaussianField(load_or_compute_uv_binding(head_asset, 128), 16, generator=g)
    with torch.no_grad():
        field.features.normal_(generator=g)
        field.opacity_logits.add_(torch.randn(field.num_texels, generator=g))
        field.log_scales.add_(0.3 * torch.randn(field.num_texels, generator=g))
    flame = FlameModel(head_asset)
    clip = demo_animation(head_asset, num_frames=24, resolution=resolution).take_rows(
        list(range(0, 24, 24 // frames))[:frames])
    with torch.no_grad():
        vertices = flame.forward_clip(clip).vertices
    viewmats = torch.as_tensor(view_matrices(clip.R, clip.t), dtype=torch.float32)
    return field, vertices, flame.faces, viewmats, torch.as_tensor(clip.K, dtype=torch.float32)


@pytest.mark.parametrize("resolution,frames,tile_size", [
    (64, 3, 8), (64, 1, 64), (128, 2, 8), (128, 1, 128),  # tile = image: one tile, no tiling
    (512, 1, 8), (512, 1, 128)])  # one 512 px tile costs the torch path minutes: 16 tiles instead
def test_numba_matches_torch_on_posed_heads(head_asset, resolution, frames, tile_size):
    """Control maps within 1e-5, gradients to features, opacities and scales within 1e-4 relative."""
    field, vertices, faces, viewmats, Ks = _posed_head_field(head_asset, resolution, frames)
    weights = torch.randn(frames, resolution, resolution, 17, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("torch", "numba"):
        field.zero_grad(set_to_none=True)
        image, alpha = field.render(vertices, faces, viewmats, Ks, resolution, resolution,
                                    backend=backend, tile_size=tile_size)
        (torch.cat([image, alpha], -1) * weights).sum().backward()
        results[backend] = (image.detach(), alpha.detach(),
                            [p.grad.clone() for p in (field.features, field.opacity_logits, field.log_scales)])
    (i_t, a_t, g_t), (i_n, a_n, g_n) = results["torch"], results["numba"]
    assert a_t.mean() > 0.05  # the head is in view
    assert (i_t - i_n).abs().max() < 1e-5 and (a_t - a_n).abs().max() < 1e-5
    for name, gt, gn in zip(("features", "opacities", "scales"), g_t, g_n):
        assert gt.abs().max() > 0, name
        assert ((gt - gn).norm() / gt.norm()) < 1e-4, name


def test_compiled_tile_lists_equal_the_torch_ones(head_asset):
    """The counting sort gives the torch path's lists exactly: by tile, then by depth."""
    import flamediff.gaussians.splatting as sp
    from flamediff.gaussians.compositing_cpu import list_tiles

    field, vertices, faces, viewmats, Ks = _posed_head_field(head_asset, 128, 2)
    with torch.no_grad():
        g = field(vertices, faces)
        means2d, _, cov_diag, depths, in_range = sp._project(
            g.means, g.scales.expand(2, -1), viewmats, Ks, 128, 128, 0.01, 100.0)
        opacities = g.opacities.expand(2, -1)
        expected = sp._intersect_tiles(means2d, cov_diag, opacities, depths, in_range, 128, 128, 8)
        t0, span, counts, _ = sp._tile_rects(means2d, cov_diag, opacities, in_range, 128, 128, 8)
        listed = list_tiles(torch.argsort(depths.reshape(-1), stable=True), t0, span, counts, 16, 16)
    assert expected[0].numel() > 10_000
    for want, got in zip(expected, listed):
        assert torch.equal(want, got)


def test_compiled_surface_frame_matches_the_torch_one(head_asset):
    """The field's compiled means (float32, no gradient) equal ``surface_points``' (exactly
    where its batched matmul sums in order without fused multiply-adds, as on x86-64 Linux) and
    its triangle scales ``local_triangle_scale``'s within float32 rounding, for one mesh and for
    batches (a degenerate triangle's clamp included), and the compiled set-up gives the torch
    set-up's tile counts and rows."""
    import flamediff.gaussians.splatting as sp
    from flamediff.gaussians.projection_cpu import project, surface_frame_cpu
    from flamediff.gaussians.uv_binding import local_triangle_scale
    from flamediff.geometry.mesh import as_index, surface_points

    field, vertices, faces, viewmats, Ks = _posed_head_field(head_asset, 128, 3)
    index = as_index(faces, vertices.device)
    triangles = index[field.face_ids]
    collapsed = vertices.clone()
    collapsed[0, index[field.face_ids[0]]] = vertices[0, index[field.face_ids[0], 0]]  # zero area
    for batch in (vertices[:1], vertices, vertices * 1.7 + 0.01, collapsed):
        points, scales = surface_frame_cpu(batch, triangles, field.barycentrics)
        torch.testing.assert_close(points, surface_points(batch, triangles, field.barycentrics), rtol=0, atol=1e-7)
        torch.testing.assert_close(scales, local_triangle_scale(batch, faces, field.face_ids), rtol=1e-6, atol=0)
    assert float(surface_frame_cpu(collapsed, triangles, field.barycentrics)[1][0, 0]) == pytest.approx(1e-10)
    with torch.no_grad():
        g = field(vertices, faces)
        scales, opacities = g.scales, g.opacities.expand(3, -1)
        rows, depths, radii, t0, span, counts = sp._torch_setup(
            g.means, scales, opacities, g.features, viewmats, Ks, 128, 128, 0.01, 100.0, 8)
        compiled = project(g.means, scales, opacities, viewmats, Ks, 128, 128, 8, sp.box_extend,
                           (0.01, 100.0, sp.EPS2D, sp.FOV_GUARD, sp.ALPHA_MIN))
    assert counts.sum() > 10_000 and torch.equal(compiled[5], counts)
    assert torch.allclose(compiled[0], rows, rtol=1e-5, atol=1e-4) and torch.allclose(compiled[1], depths)


def test_numba_backend_refuses_other_devices():
    from flamediff.gaussians.compositing_cpu import composite_tiles

    with pytest.raises(ValueError, match="CPU tensors"):
        composite_tiles(torch.zeros(1, 6, device="meta"), torch.zeros(1, 2), torch.zeros(1, 2), (torch.zeros(0),) * 3,
                        (1, 1, 8, 8, 8, 1), (0.0, 0.0, 0.0, 0.0))


def test_shipped_checkpoint_frames_unchanged_by_the_compiled_splatter(head_asset, monkeypatch):
    """The demo checkpoint renders the same frames (within 1 level of 255) with either CPU splatter."""
    import functools

    import numpy as np

    import flamediff.gaussians.field as field_module
    from flamediff.demo import demo_animation
    from flamediff.flame.model import FlameModel
    from flamediff.models import FlameDiffModel
    from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings
    from flamediff.server.checkpoints import SHIPPED_DIR

    model = FlameDiffModel.from_pretrained(f"{SHIPPED_DIR}/demo", asset=head_asset)
    pipeline = FlameDiffPipeline(model, FlameModel(head_asset))
    clip = demo_animation(head_asset, num_frames=3, resolution=128)
    from PIL import Image

    reference = np.asarray(Image.open(f"{SHIPPED_DIR}/demo/reference.png").convert("RGB"))
    frames = {}
    for backend in ("torch", "numba"):
        monkeypatch.setattr(field_module, "splat_features", functools.partial(splat_features, backend=backend))
        frames[backend] = np.stack(pipeline(reference, clip, RenderSettings(seed=3, frames_per_batch=8, framing="camera")).frames).astype(int)
    assert np.abs(frames["torch"] - frames["numba"]).max() <= 1


# --------------------------------------------------------------------------
# both CPU paths against the brute-force reference at training and inference sizes


def _sample_pixels(means: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                   extra: int = 16) -> list[tuple[int, int]]:
    """Pixels under the Gaussians' projected centres (where they overlap and compete) and a few
    random ones: the brute-force reference walks these instead of the whole image."""
    cam = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    keep = (cam[:, 2] > 0.01) & (uv >= 0).all(-1) & (uv[:, 0] < width) & (uv[:, 1] < height)
    pixels = {(int(u), int(v)) for u, v in uv[keep].tolist()}
    g = torch.Generator().manual_seed(width)
    pixels |= {(int(x), int(y)) for x, y in zip(torch.randint(width, (extra,), generator=g).tolist(),
                                                torch.randint(height, (extra,), generator=g).tolist())}
    return sorted(pixels)


def _check_sampled_parity(means, scales, opac, feats, viewmats, Ks, size: int, tile_size: int) -> None:
    """float32 control maps within 1e-5 and gradients to features, opacities and scales within 1e-4
    relative of the float64 brute-force reference at sampled pixels, for both CPU paths; and the two
    paths within 1e-5 of each other on the whole image."""
    pixels = _sample_pixels(means[0].double(), viewmats[0].double(), Ks[0].double(), size, size)
    xs, ys = torch.tensor([p[0] for p in pixels]), torch.tensor([p[1] for p in pixels])
    w = torch.randn(1, len(pixels), feats.shape[1] + 1, dtype=DT, generator=torch.Generator().manual_seed(2))

    def loss_and_grads(fn, dtype, **kw):
        leaves = [t.to(dtype).clone().requires_grad_(True) for t in (scales, opac, feats)]
        img, a = fn(means.to(dtype), *leaves, viewmats.to(dtype), Ks.to(dtype), size, size, **kw)
        if kw:  # a whole image from a fast path: the sampled pixels
            img, a = img[:, ys, xs], a[:, ys, xs]
        maps = torch.cat([img, a], -1)
        grads = torch.autograd.grad((maps * w.to(dtype)).sum(), leaves)
        return maps.detach().double(), [g.double() for g in grads]

    ref_maps, ref_grads = loss_and_grads(lambda *a: splat_features_reference(*a, pixels=pixels), DT)
    assert ref_maps[..., -1].max() > 0.5, "the sampled pixels should be covered"
    for name, fn in CPU_BACKENDS.items():
        maps, grads = loss_and_grads(fn, torch.float32, tile_size=tile_size)
        assert (maps - ref_maps).abs().max() < 1e-5, name
        for what, g, gr in zip(("scales", "opacities", "features"), grads, ref_grads):
            assert gr.abs().max() > 0, what
            assert (g - gr).norm() / gr.norm() < 1e-4, f"{name}: {what}"
    args = (means, scales, opac, feats, viewmats, Ks, size, size)
    whole = [fn(*(t.float() for t in args[:6]), size, size, tile_size=tile_size) for fn in CPU_BACKENDS.values()]
    assert all((x - y).abs().max() < 1e-5 for x, y in zip(*whole))


SIZES_AND_TILES = [(size, tile) for size in (64, 128, 512) for tile in (8, size)]  # tile = image: no tiling


@pytest.mark.parametrize("size,tile_size", SIZES_AND_TILES)
def test_random_fields_match_reference_at_training_and_inference_sizes(size, tile_size):
    means, scales, opac, feats = _with_specials(*_scene(14, D=4, seed=size + tile_size))
    viewmats, Ks = _camera(1, size, size, seed=size)
    _check_sampled_parity(means, scales, opac, feats, viewmats, Ks, size, tile_size)


@pytest.mark.parametrize("size,tile_size", SIZES_AND_TILES)
def test_posed_head_patch_matches_reference(head_asset, size, tile_size):
    """A patch of the real posed head's Gaussians (the 40 nearest the camera's closest one:
    overlapping, so order and the early stop matter) with the field's scales."""
    field, vertices, faces, viewmats, Ks = _posed_head_field(head_asset, size)
    with torch.no_grad():
        g = field(vertices, faces)
        depth = (g.means[0] @ viewmats[0, :3, :3].T + viewmats[0, :3, 3])[:, 2]
        closest = g.means[0, depth.argmin()]
        patch = (g.means[0] - closest).norm(dim=-1).argsort()[:40]
    _check_sampled_parity(g.means[:, patch].double(), g.scales[:, patch].double(), g.opacities[patch].double(),
                          g.features[patch].double(), viewmats.double(), Ks.double(), size, tile_size)
