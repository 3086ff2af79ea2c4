"""Feature splatting for flamediff's learnable Gaussian embedding.

Isotropic 3D Gaussians, each carrying a D-dimensional neural feature, are
rendered into a D-channel feature map by front-to-back alpha compositing
(3D Gaussian Splatting with features in place of colours).

Three interchangeable backends, one contract:

* ``torch``: pure PyTorch on any device, differentiable through autograd. It
  is the readable statement of the maths and the fallback everywhere.
* ``numba``: the same projection and tile lists in torch, composited by
  Numba-compiled CPU loops with a hand-written backward
  (``compositing_cpu.py``); the fast CPU path.
* ``gsplat``: ``gsplat.rasterization`` on CUDA, for speed.

The torch path follows gsplat 1.5's "classic" 3DGS pipeline so that the two
agree to float rounding:

* EWA projection ``Sigma2d = J Sigma3d J^T`` with the perspective Jacobian
  evaluated at the camera-space centre whose x/z and y/z are clamped to 1.3x
  the image half-extent (the projected mean itself is not clamped);
  ``eps2d = 0.3`` is added to the diagonal, without antialias compensation.
* Gaussians are culled when camera depth z is outside [near, far], when
  opacity < 1/255, or when their bounding box misses the image.  gsplat 1.5's
  box is the opacity-aware rectangle
  ``r_x = ceil(e * sqrt(Sigma2d_xx))``, ``e = min(3.33, sqrt(2 ln(255 o)))``,
  which contains every pixel where alpha >= 1/255; the tiling is therefore an
  optimisation and never changes the result.
* Pixel centres sit at (x + 0.5, y + 0.5);
  ``alpha = min(0.999, o * exp(-0.5 d^T Sigma2d^-1 d))``; contributions with
  alpha < 1/255 are skipped; Gaussians are composited in increasing camera z,
  and a pixel stops, excluding the Gaussian that would do it, once
  transmittance would drop to 1e-4 or below.  gsplat also skips a negative
  exponent, a rounding guard that cannot fire for isotropic Gaussians.

The torch path evaluates alpha as ``exp(clamp(log o - sigma))``, which differs
from gsplat's ``o * __expf(-sigma)`` only by float rounding.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["splat_features", "splat_features_torch", "splat_features_numba", "splat_features_gsplat"]

EPS2D = 0.3  # low-pass blur added to the 2D covariance (gsplat default)
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
ALPHA_MAX = 0.999  # per-Gaussian alpha cap, keeps 1 - alpha away from 0
T_MIN = 1e-4  # a pixel stops once transmittance would fall to this
FOV_GUARD = 0.3  # Jacobian clamp: 1.3x the image half-extent
BOX_EXTEND = 3.33  # cap on the box half-size in standard deviations
LOG_ALPHA_MAX = math.log(ALPHA_MAX)
LOG_ALPHA_FLOOR = -20.0  # exp(-20) < 1/255: lower exponents can only be skipped
CHUNK_ELEMS = 1 << 20  # [tiles, pixels, K] elements per compositing block
_BACKENDS = ("auto", "torch", "numba", "gsplat")


def splat_features(
    means: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    backend: str = "auto",
    near: float = 0.01,
    far: float = 100.0,
    tile_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Render per-frame Gaussian features to ``([F, H, W, D], [F, H, W, 1])``.

    means [F, N, 3] (world), scales [F, N] or [N] (isotropic std in metres),
    opacities [F, N] or [N], features [N, D] or [F, N, D], viewmats [F, 4, 4]
    (world-to-camera, OpenCV axes), Ks [F, 3, 3] (pixels).  ``backend="auto"``
    picks gsplat for CUDA tensors when it imports, numba for CPU tensors when
    it imports, torch otherwise; ``tile_size`` only affects the torch and numba
    paths' speed and memory.  Gaussians outside [near, far] in camera depth
    are culled.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = auto_backend(means.device)
    fn = {"torch": splat_features_torch, "numba": splat_features_numba,
          "gsplat": splat_features_gsplat}[backend]
    return fn(means, scales, opacities, features, viewmats, Ks, width, height,
              near=near, far=far, tile_size=tile_size)


def auto_backend(device: torch.device) -> str:
    """The backend ``"auto"`` picks for tensors on ``device``."""
    if device.type == "cuda" and _importable("gsplat"):
        return "gsplat"
    if device.type == "cpu" and _importable("numba"):
        return "numba"
    return "torch"


@functools.lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    """Whether ``import module`` works (checked once; a broken install counts as absent)."""
    try:
        __import__(module)
    except Exception:  # ImportError, or a failing extension build
        return False
    return True


# --------------------------------------------------------------------------
# input checking


def _check_inputs(
    means: Tensor, scales: Tensor, opacities: Tensor, features: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int,
    near: float, far: float, tile_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes early so mistakes name the argument, not a kernel.

    Returns scales and opacities broadcast to [F, N] and features as given.
    """
    for name, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 < near < far:
        raise ValueError(f"near and far must satisfy 0 < near < far, got near={near}, far={far}")
    if means.dim() != 3 or means.shape[-1] != 3:
        raise ValueError(f"means must have shape [F, N, 3], got {tuple(means.shape)}")
    if not means.is_floating_point():
        raise ValueError(f"means must be a floating-point tensor, got {means.dtype}")
    n_frames, n = means.shape[:2]
    per_gauss = {"scales": scales, "opacities": opacities}
    for name, t in per_gauss.items():
        if tuple(t.shape) not in ((n,), (n_frames, n)):
            raise ValueError(f"{name} must have shape [N] or [F, N] = [{n}] or "
                             f"[{n_frames}, {n}], got {tuple(t.shape)}")
    if features.dim() == 2:
        ok = features.shape[0] == n
    else:
        ok = features.dim() == 3 and tuple(features.shape[:2]) == (n_frames, n)
    if not ok or features.shape[-1] == 0:
        raise ValueError(f"features must have shape [N, D] or [F, N, D] with N={n}, "
                         f"F={n_frames}, D>0, got {tuple(features.shape)}")
    if tuple(viewmats.shape) != (n_frames, 4, 4):
        raise ValueError(f"viewmats must have shape [F, 4, 4] = [{n_frames}, 4, 4], "
                         f"got {tuple(viewmats.shape)}")
    if tuple(Ks.shape) != (n_frames, 3, 3):
        raise ValueError(f"Ks must have shape [F, 3, 3] = [{n_frames}, 3, 3], "
                         f"got {tuple(Ks.shape)}")
    for name, t in (("scales", scales), ("opacities", opacities), ("features", features),
                    ("viewmats", viewmats), ("Ks", Ks)):
        if t.device != means.device:
            raise ValueError(f"{name} is on {t.device} but means is on {means.device}")
    return scales.expand(n_frames, n), opacities.expand(n_frames, n), features


# --------------------------------------------------------------------------
# torch backend


def _project(
    means: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, near: float, far: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """EWA-project isotropic Gaussians as gsplat's pinhole model does.

    Returns means2d [F, N, 2], conics [F, N, 3] (upper triangle of the inverse
    2D covariance), the 2D covariance diagonal [F, N, 2] (for the boxes),
    camera depth [F, N] and the near/far mask [F, N].  For covariance s^2 I
    the rotation drops out (R s^2 I R^T = s^2 I), so J J^T is formed directly.
    """
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    x, y, z = (means @ rot.transpose(1, 2) + trans[:, None]).unbind(-1)
    in_range = (z >= near) & (z <= far)
    rz = 1.0 / torch.where(in_range, z, torch.ones_like(z))  # no inf/nan grads from culled
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)
    # Jacobian at the FOV-clamped centre, so off-screen Gaussians cannot blow up.
    guard_x, guard_y = FOV_GUARD * 0.5 * width / fx, FOV_GUARD * 0.5 * height / fy
    u = torch.clamp(x * rz, -(cx / fx + guard_x), (width - cx) / fx + guard_x)
    v = torch.clamp(y * rz, -(cy / fy + guard_y), (height - cy) / fy + guard_y)
    j00, j11 = fx * rz, fy * rz
    j02, j12 = -fx * u * rz, -fy * v * rz  # == -f * (z * clamp(x / z)) / z^2
    s2 = scales * scales
    a = s2 * (j00 * j00 + j02 * j02) + EPS2D
    b = s2 * (j02 * j12)
    c = s2 * (j11 * j11 + j12 * j12) + EPS2D
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], -1)
    return means2d, conics, torch.stack([a, c], -1), z, in_range


@torch.no_grad()
def box_extend(opacities: Tensor) -> Tensor:
    """gsplat 1.5's box half-size in standard deviations, ``min(3.33, sqrt(2 ln(255 o)))``: the
    alpha >= 1/255 region's reach."""
    return torch.sqrt(2.0 * torch.log((opacities / ALPHA_MIN).clamp(min=1.0))).clamp(max=BOX_EXTEND)


@torch.no_grad()
def _tile_rects(
    means2d: Tensor, cov_diag: Tensor, opacities: Tensor, in_range: Tensor,
    width: int, height: int, tile_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each Gaussian's rectangle of tiles: first tile (x, y) [F, N, 2], span [F, N, 2], the
    number of tiles it touches [F, N] (0 when culled) and its half-extent in pixels [F, N, 2].

    Uses gsplat 1.5's opacity-aware rectangle, which bounds the alpha >= 1/255
    region, so skipping non-overlapping tiles is exact.
    """
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    radii = torch.ceil(box_extend(opacities)[..., None] * torch.sqrt(cov_diag))  # [F, N, 2]
    lo, hi = means2d - radii, means2d + radii
    keep = (in_range & (opacities >= ALPHA_MIN) & (radii > 0).all(-1)
            & (hi[..., 0] > 0) & (lo[..., 0] < width) & (hi[..., 1] > 0) & (lo[..., 1] < height))
    lim = torch.tensor([tw, th], device=means2d.device, dtype=lo.dtype)  # clamp before .long()
    t0 = torch.minimum(torch.floor(lo / tile_size).clamp(min=0), lim).long()
    t1 = torch.minimum(torch.ceil(hi / tile_size).clamp(min=0), lim).long()
    span = (t1 - t0).clamp(min=0)
    return t0, span, span[..., 0] * span[..., 1] * keep, radii


@torch.no_grad()
def _intersect_tiles(
    means2d: Tensor, cov_diag: Tensor, opacities: Tensor, depths: Tensor,
    in_range: Tensor, width: int, height: int, tile_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """List (tile, Gaussian) overlaps sorted by tile, then by depth.

    Returns flat Gaussian ids [M] (into F*N), per-tile counts [F*TH*TW] and
    per-tile offsets.  Ties in depth keep the Gaussians' index order.
    """
    n_frames, n = depths.shape
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    t0, span, counts, _ = _tile_rects(means2d, cov_diag, opacities, in_range, width, height, tile_size)
    # visit Gaussians front to back so a stable sort by tile keeps depth order
    order = torch.argsort(depths.reshape(-1), stable=True)
    counts_o = counts.reshape(-1)[order]
    gid = torch.repeat_interleave(order, counts_o)
    start = torch.repeat_interleave(torch.cumsum(counts_o, 0) - counts_o, counts_o)
    local = torch.arange(gid.numel(), device=gid.device) - start
    t0f, spanx = t0.reshape(-1, 2)[gid], span.reshape(-1, 2)[gid, 0]
    tx = t0f[:, 0] + local % spanx
    ty = t0f[:, 1] + torch.div(local, spanx, rounding_mode="floor")
    tile = (gid // n) * (tw * th) + ty * tw + tx
    tile, perm = torch.sort(tile, stable=True)
    tile_counts = torch.bincount(tile, minlength=n_frames * tw * th)
    offsets = torch.cumsum(tile_counts, 0) - tile_counts
    return gid[perm], tile_counts, offsets


def _composite_block(
    px: Tensor, py: Tensor, params: Tensor, feats: Tensor, t_in: Tensor,
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of K depth-sorted Gaussians over tiles.

    px, py [B, S]: pixel-centre coordinates of the tile's columns and rows;
    params [B, K, 6] = (x, y, conic_a, conic_b, conic_c, opacity); feats
    [B, K, C]; t_in [B, S*S]: raw transmittance carried from earlier blocks.
    Returns the weighted feature sums [B, S*S, C] and the carried-out raw
    transmittance.  The raw product includes the factor of the Gaussian that
    stopped a pixel, so every later Gaussian fails the T rule too: the same
    early stop as gsplat, expressed as a mask.
    """
    mx, my, ca, cb, cc, op = params.unbind(-1)
    dx = mx[:, None, :] - px[:, :, None]  # [B, S(cols), K]
    dy = my[:, None, :] - py[:, :, None]  # [B, S(rows), K]
    # log(alpha) = log(o) - sigma, built separably to save full-size passes.
    # sigma >= 0 always holds here (isotropic Gaussians give a well-conditioned
    # conic), so gsplat's sigma < 0 skip never fires and is not re-checked.
    part_x = torch.log(op)[:, None] - 0.5 * ca[:, None] * dx * dx
    part_y = -0.5 * cc[:, None] * dy * dy
    log_alpha = torch.addcmul(part_x[:, None] + part_y[:, :, None],
                              (-cb[:, None] * dx)[:, None], dy[:, :, None])  # [B, rows, cols, K]
    # Clamping the exponent caps alpha at 0.999 (with gsplat's zero gradient
    # there) and keeps exp in its fast range: below LOG_ALPHA_FLOOR the alpha
    # is under 1/255 and thresholded away anyway.
    alpha = torch.exp(log_alpha.clamp(LOG_ALPHA_FLOOR, LOG_ALPHA_MAX)).flatten(1, 2)
    alpha = torch.nn.functional.threshold(alpha, ALPHA_MIN, 0.0)  # skip alpha < 1/255
    trans = torch.cumprod(torch.cat([t_in[..., None], 1.0 - alpha], -1), -1)
    weights = torch.where(trans[..., 1:] > T_MIN, alpha * trans[..., :-1], 0.0)
    return torch.bmm(weights, feats), trans[..., -1]


def _tile_groups(counts: Tensor, pixels: int) -> list[tuple[Tensor, int, int]]:
    """Group non-empty tiles of similar load into blocks of ~CHUNK_ELEMS.

    Returns (tile ids, padded K, K-block size) per group; a tile with more
    Gaussians than one block holds is processed in several K blocks.
    """
    tiles = torch.nonzero(counts).flatten()
    tiles = tiles[torch.argsort(counts[tiles], descending=True, stable=True)]
    loads = counts[tiles].tolist()
    k_cap = max(1, CHUNK_ELEMS // pixels)
    groups, i = [], 0
    while i < len(loads):
        k_max = loads[i]
        k_block = min(k_max, k_cap)
        n_tiles = max(1, CHUNK_ELEMS // (pixels * k_block))
        groups.append((tiles[i:i + n_tiles], k_max, k_block))
        i += n_tiles
    return groups


def _gather_composite(
    px: Tensor, py: Tensor, params: Tensor, feats: Tensor,
    pidx: Tensor, fidx: Tensor, t_in: Tensor,
) -> tuple[Tensor, Tensor]:
    """Gather a block's Gaussians, then composite them.

    Gathering inside the checkpointed region means only the index tensors are
    kept for backward, not per-intersection copies of the features.
    """
    return _composite_block(px, py, params[pidx], feats[fidx], t_in)


def _render_group(
    tiles: Tensor, k_max: int, k_block: int, isect: tuple[Tensor, Tensor, Tensor],
    params: Tensor, feats: Tensor, grid: tuple[int, int, int], use_ckpt: bool,
) -> Tensor:
    """Composite one group of tiles block by block along depth; [B, P, C].

    ``params`` ends with a dummy row of ~zero opacity that pads short tiles.
    """
    gids, counts, offsets = isect
    tw, th, ts = grid
    local = tiles % (tw * th)
    ar = torch.arange(ts, device=tiles.device, dtype=params.dtype) + 0.5
    px = (local % tw * ts).to(params.dtype)[:, None] + ar
    py = (local // tw * ts).to(params.dtype)[:, None] + ar
    t_run = params.new_ones(len(tiles), ts * ts)
    dummy = params.shape[0] - 1
    out: Tensor | None = None
    for k0 in range(0, k_max, k_block):
        k = torch.arange(k0, min(k0 + k_block, k_max), device=tiles.device)
        inside = k[None] < counts[tiles][:, None]
        slot = (offsets[tiles][:, None] + k).clamp(max=gids.numel() - 1)
        pidx = torch.where(inside, gids[slot], dummy)
        args = (px, py, params, feats, pidx, pidx % feats.shape[0], t_run)
        res, t_run = checkpoint(_gather_composite, *args, use_reentrant=False) if use_ckpt \
            else _gather_composite(*args)
        out = res if out is None else out + res
        if k0 + k_block < k_max and not bool((t_run > T_MIN).any()):
            break  # every pixel in the group has stopped
    if out is None:
        raise ValueError(f"a tile group needs k_max >= 1, got {k_max}")
    return out


def _checked_projection(
    means: Tensor, scales: Tensor, opacities: Tensor, features: Tensor, viewmats: Tensor,
    Ks: Tensor, width: int, height: int, near: float, far: float, tile_size: int,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """The CPU paths' shared first half: checked inputs (scales and opacities [F, N]) and the
    EWA projection of ``_project`` in the means' dtype."""
    scales, opacities, features = _check_inputs(
        means, scales, opacities, features, viewmats, Ks, width, height, near, far, tile_size)
    dtype = means.dtype
    projection = _project(means, scales.to(dtype), viewmats.to(dtype), Ks.to(dtype), width, height, near, far)
    return scales, opacities, features, projection


def splat_features_torch(
    means: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near: float = 0.01,
    far: float = 100.0,
    tile_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Pure-torch splatter (any device), differentiable via autograd.

    Work is done per tile on [tiles, tile_size^2, K] blocks of at most
    ~CHUNK_ELEMS elements; when gradients are needed each block is
    checkpointed, so memory stays bounded by the block size plus per-
    intersection inputs instead of growing with every [P, K] intermediate.
    """
    scales, opacities, features, (means2d, conics, cov_diag, depths, in_range) = _checked_projection(
        means, scales, opacities, features, viewmats, Ks, width, height, near, far, tile_size)
    dtype = means.dtype
    isect = _intersect_tiles(means2d, cov_diag, opacities.detach(), depths, in_range,
                             width, height, tile_size)
    params, feats = _gaussian_tables(means2d, conics, opacities.to(dtype), features.to(dtype))
    use_ckpt = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, scales, opacities, features))
    grid = (math.ceil(width / tile_size), math.ceil(height / tile_size), tile_size)
    groups = _tile_groups(isect[1], tile_size * tile_size)
    outs = [_render_group(tiles, k_max, k_block, isect, params, feats, grid, use_ckpt)
            for tiles, k_max, k_block in groups]
    return _assemble([g[0] for g in groups], outs, params, feats, means.shape[0],
                     width, height, grid)


def splat_features_numba(
    means: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near: float = 0.01,
    far: float = 100.0,
    tile_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Same contract as the torch path on CPU tensors, composited by compiled loops.

    When the means (and cameras) need no gradient, as in stage-1 training and at inference,
    the projection and tile set-up run compiled too (``projection_cpu``); otherwise they are the
    torch path's own code, so autograd reaches the means.  Either way the compositing, forward
    and backward, runs in ``compositing_cpu`` (float32 or float64).
    """
    if not _importable("numba"):
        raise RuntimeError("backend='numba' needs the numba package (pip install numba); "
                           "use backend='torch' to run without it")
    from flamediff.gaussians.compositing_cpu import composite_tiles, depth_order, list_tiles

    if torch.is_grad_enabled() and any(t.requires_grad for t in (means, viewmats, Ks)):
        params, depths, radii, t0, span, counts = _torch_setup(
            means, scales, opacities, features, viewmats, Ks, width, height, near, far, tile_size)
    else:
        from flamediff.gaussians.projection_cpu import project

        scales, opacities, features = _check_inputs(
            means, scales, opacities, features, viewmats, Ks, width, height, near, far, tile_size)
        dtype = means.dtype
        params, depths, radii, t0, span, counts = project(
            means, scales.to(dtype), opacities.to(dtype), viewmats.to(dtype), Ks.to(dtype), width, height,
            tile_size, box_extend, (near, far, EPS2D, FOV_GUARD, ALPHA_MIN))
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_frames = depths.shape[0]
    isect = list_tiles(depth_order(depths), t0, span, counts, tiles_x, tiles_y)  # tiles never span frames
    feats = features.to(means.dtype).reshape(-1, features.shape[-1])
    grid = (tiles_x, tiles_y, tile_size, width, height, n_frames)
    # one pixel beyond the box: float rounding of alpha near 1/255 cannot reach past it
    return composite_tiles(params, feats, (radii + 1.0).reshape(-1, 2), isect, grid,
                           (LOG_ALPHA_FLOOR, LOG_ALPHA_MAX, ALPHA_MIN, T_MIN))


def _torch_setup(
    means: Tensor, scales: Tensor, opacities: Tensor, features: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, near: float, far: float, tile_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The numba path's set-up in torch, differentiable in the means too: compositor rows
    [F*N, 6] = (x, y, conic, log opacity), depths [F, N] (detached), box half-sizes [F*N, 2] and
    the tile rectangles of ``_tile_rects``."""
    scales, opacities, features, (means2d, conics, cov_diag, depths, in_range) = _checked_projection(
        means, scales, opacities, features, viewmats, Ks, width, height, near, far, tile_size)
    dtype = means.dtype
    t0, span, counts, radii = _tile_rects(means2d.detach(), cov_diag.detach(), opacities.detach(),
                                          in_range, width, height, tile_size)
    params = torch.cat([means2d, conics, torch.log(opacities.to(dtype))[..., None]], -1).reshape(-1, 6)
    return params, depths.detach(), radii.to(dtype).reshape(-1, 2), t0, span, counts


def _gaussian_tables(means2d: Tensor, conics: Tensor, opacities: Tensor,
                     features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-Gaussian rows for gathering: params [F*N + 1, 6] and feats [N or F*N, D + 1].

    params ends with a padding Gaussian of (almost) zero opacity for short
    tiles; feats gets a channel of ones, so compositing it yields alpha too.
    """
    params = torch.cat([means2d, conics, opacities[..., None]], -1).reshape(-1, 6)
    pad = params.new_zeros(1, 6)
    pad[0, 5] = torch.finfo(params.dtype).tiny  # alpha ~ 0 with a finite log
    flat = features.reshape(-1, features.shape[-1])
    return torch.cat([params, pad]), torch.cat([flat, flat.new_ones(len(flat), 1)], -1)


def _assemble(tile_ids: list[Tensor], outs: list[Tensor], params: Tensor, feats: Tensor,
              n_frames: int, width: int, height: int,
              grid: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Scatter per-tile results into the image; views ([F, H, W, D], [F, H, W, 1])."""
    tw, th, ts = grid
    c = feats.shape[-1]
    canvas = feats.new_zeros(n_frames * th * ts * tw * ts, c)
    if outs:  # in-place on a fresh tensor: autograd-safe, and saves a full copy
        pix = _tile_pixels(torch.cat(tile_ids), tw, th, ts)
        canvas.index_copy_(0, pix, torch.cat(outs).flatten(0, 1))
    else:  # nothing visible: add a zero that still reaches the inputs, so backward() works
        canvas = canvas + (params[:0].sum() + feats[:0].sum())
    image = canvas.view(n_frames, th * ts, tw * ts, c)[:, :height, :width]
    return image[..., :c - 1], image[..., c - 1:]


def _tile_pixels(tiles: Tensor, tw: int, th: int, ts: int) -> Tensor:
    """Row-major image offsets [B * ts * ts] of each tile's pixels, in tile order."""
    frame, local = tiles // (tw * th), tiles % (tw * th)
    ar = torch.arange(ts, device=tiles.device)
    rows = (local // tw * ts)[:, None] + ar  # [B, ts]
    cols = (local % tw * ts)[:, None] + ar
    flat = (frame[:, None, None] * th * ts + rows[:, :, None]) * (tw * ts) + cols[:, None, :]
    return flat.flatten()


# --------------------------------------------------------------------------
# gsplat backend


def splat_features_gsplat(
    means: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near: float = 0.01,
    far: float = 100.0,
    tile_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Same contract as the torch path, via ``gsplat.rasterization`` on CUDA.

    Frames are rendered in a loop (portable across gsplat versions' batch
    conventions).  ``tile_size`` is ignored: gsplat keeps its own 16 px tiles,
    which do not change the result.
    """
    scales, opacities, features = _check_inputs(
        means, scales, opacities, features, viewmats, Ks, width, height, near, far, tile_size)
    try:
        from gsplat import rasterization
    except ImportError as err:
        raise RuntimeError(
            "backend='gsplat' needs the gsplat package with its CUDA extension "
            "(pip install gsplat); use backend='torch' to run without it") from err
    if not means.is_cuda:
        raise RuntimeError("backend='gsplat' needs CUDA tensors; move them with .cuda() "
                           "or use backend='torch'")
    n_frames, n = means.shape[:2]
    f32 = torch.float32  # gsplat's rasteriser is float32-only
    means, scales, opacities, features, viewmats, Ks = (
        t.to(f32) for t in (means, scales, opacities, features, viewmats, Ks))
    quats = means.new_zeros(n, 4)
    quats[:, 0] = 1.0  # identity rotation: the Gaussians are isotropic
    colours, alphas = [], []
    for f in range(n_frames):
        feats = features if features.dim() == 2 else features[f]
        rgb, alpha, _ = rasterization(
            means[f].contiguous(), quats, scales[f][:, None].repeat(1, 3),
            opacities[f].contiguous(), feats.contiguous(),
            viewmats[f:f + 1].contiguous(), Ks[f:f + 1].contiguous(), width, height,
            near_plane=near, far_plane=far, eps2d=EPS2D, sh_degree=None,
            packed=False, rasterize_mode="classic", render_mode="RGB")
        colours.append(rgb)
        alphas.append(alpha)
    return torch.cat(colours), torch.cat(alphas)
