"""Compiled CPU projection for the feature splatter when the means need no gradient.

In stage-1 training and at inference the Gaussians' means come from posed meshes without a
gradient; only scales and opacities (and features) learn.  There the torch path's set-up, about
forty small tensor operations (EWA projection, tile rectangles, the per-Gaussian rows the
compositor reads, their autograd graph), costs more than a compiled loop over the Gaussians, so
``project`` does it in one Numba pass and its backward is written out: with
``a = s^2 P + eps``, ``b = s^2 Q``, ``c = s^2 R + eps`` (``P, Q, R`` from the Jacobian, fixed
when the means are), the conic ``(c, -b, a) / det`` depends on the scale ``s`` only through
``s^2``, and the row's log opacity on the opacity ``o`` as ``log o``.

The formulas are ``splatting._project``'s and ``splatting._tile_rects``' (gsplat 1.5's classic
pinhole model and opacity-aware boxes) in the inputs' dtype; their rounding differs from the
torch path's only where torch fuses or reorders operations, far inside the parity tolerances.
The log opacities and box extents are the torch path's own ops, once per Gaussian where the
opacities are shared by all frames.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from numba import njit
from torch import Tensor

from flamediff.gaussians.uv_binding import MIN_TRIANGLE_AREA

__all__ = ["project"]


@njit(cache=True)
def _project(means: np.ndarray, scales: np.ndarray, opacities: np.ndarray, log_opacities: np.ndarray,
             extends: np.ndarray, viewmats: np.ndarray, ks: np.ndarray, bounds: np.ndarray, params: np.ndarray,
             jac: np.ndarray, depth: np.ndarray, box: np.ndarray, t0: np.ndarray, span: np.ndarray,
             counts: np.ndarray) -> None:
    """Per Gaussian of [F, N]: its compositor row (x, y, conic A, B, C, log o) in ``params``
    [F*N, 6], (P, Q, R) in ``jac`` [F*N, 3], camera depth [F, N], box half-size in pixels
    [F*N, 2] and its tile rectangle (first tile [F*N, 2], span [F*N, 2], tiles touched [F, N],
    0 when culled), given each Gaussian's log opacity and box extent in standard deviations
    (``splatting.box_extend``) [F, N].  ``bounds`` (see ``project``) holds every constant in the
    inputs' dtype, so the arithmetic stays in it as the torch path's does."""
    near, far, eps, a_min = bounds[0], bounds[1], bounds[2], bounds[3]
    width, height, ts, tw, th = bounds[4], bounds[5], bounds[6], bounds[7], bounds[8]
    one = bounds[9]
    n_frames, n = scales.shape
    for f in range(n_frames):
        fx, fy, cx, cy = ks[f, 0, 0], ks[f, 1, 1], ks[f, 0, 2], ks[f, 1, 2]
        guard_x, guard_y = bounds[10] / fx, bounds[11] / fy
        u_lo, u_hi = -(cx / fx + guard_x), (width - cx) / fx + guard_x
        v_lo, v_hi = -(cy / fy + guard_y), (height - cy) / fy + guard_y
        for i in range(n):
            g = f * n + i
            m0, m1, m2 = means[f, i, 0], means[f, i, 1], means[f, i, 2]
            x = viewmats[f, 0, 0] * m0 + viewmats[f, 0, 1] * m1 + viewmats[f, 0, 2] * m2 + viewmats[f, 0, 3]
            y = viewmats[f, 1, 0] * m0 + viewmats[f, 1, 1] * m1 + viewmats[f, 1, 2] * m2 + viewmats[f, 1, 3]
            z = viewmats[f, 2, 0] * m0 + viewmats[f, 2, 1] * m1 + viewmats[f, 2, 2] * m2 + viewmats[f, 2, 3]
            in_range = near <= z <= far
            rz = one / z if in_range else one
            mx, my = fx * x * rz + cx, fy * y * rz + cy
            u = min(max(x * rz, u_lo), u_hi)
            v = min(max(y * rz, v_lo), v_hi)
            j00, j11, j02, j12 = fx * rz, fy * rz, -fx * u * rz, -fy * v * rz
            p, q, r = j00 * j00 + j02 * j02, j02 * j12, j11 * j11 + j12 * j12
            s2 = scales[f, i] * scales[f, i]
            a, b, c = s2 * p + eps, s2 * q, s2 * r + eps
            det = a * c - b * b
            o = opacities[f, i]
            params[g, 0], params[g, 1] = mx, my
            params[g, 2], params[g, 3], params[g, 4], params[g, 5] = c / det, -b / det, a / det, log_opacities[f, i]
            jac[g, 0], jac[g, 1], jac[g, 2] = p, q, r
            depth[f, i] = z
            extend = extends[f, i]
            rx, ry = np.ceil(extend * math.sqrt(a)), np.ceil(extend * math.sqrt(c))
            box[g, 0], box[g, 1] = rx, ry
            keep = (in_range and o >= a_min and rx > 0 and ry > 0 and mx + rx > 0 and mx - rx < width
                    and my + ry > 0 and my - ry < height)
            t0[g, 0], t1x = _tile_range(mx - rx, mx + rx, ts, tw)
            t0[g, 1], t1y = _tile_range(my - ry, my + ry, ts, th)
            span[g, 0], span[g, 1] = max(t1x - t0[g, 0], 0), max(t1y - t0[g, 1], 0)
            counts[f, i] = span[g, 0] * span[g, 1] if keep else 0


@njit(cache=True, inline="always")
def _tile_range(lo: float, hi: float, ts: float, tiles: float) -> tuple[int, int]:
    """First tile and one past the last of the pixel interval [lo, hi], clamped to [0, tiles]."""
    zero = ts - ts
    return int(min(max(np.floor(lo / ts), zero), tiles)), int(min(max(np.ceil(hi / ts), zero), tiles))


@njit(cache=True)
def _project_backward(grad: np.ndarray, scales: np.ndarray, opacities: np.ndarray, params: np.ndarray,
                      jac: np.ndarray, grad_scales: np.ndarray, grad_opacities: np.ndarray) -> None:
    """Gradients of the rows' conic and log opacity to the scales and opacities [F, N] (the
    conic (c, -b, a) / det with det = a c - b^2: d(c/det) = (dc - A d det) / det and so on)."""
    n_frames, n = scales.shape
    for f in range(n_frames):
        for i in range(n):
            g = f * n + i
            ga, gb, gc = grad[g, 2], grad[g, 3], grad[g, 4]
            conic_a, conic_b, conic_c = params[g, 2], params[g, 3], params[g, 4]
            det_inv = conic_a * conic_c - conic_b * conic_b  # 1 / det of (a, b, c)
            # A = c / det, B = -b / det, C = a / det with det = a c - b^2, so d det = c da + a dc - 2 b db
            # and (a, b, c) = (C, -B, A) / det_inv
            g_det = -(ga * conic_a + gb * conic_b + gc * conic_c) * det_inv
            a, b, c = conic_c / det_inv, -conic_b / det_inv, conic_a / det_inv
            g_a = gc * det_inv + g_det * c
            g_b = -gb * det_inv - 2.0 * g_det * b
            g_c = ga * det_inv + g_det * a
            g_s2 = g_a * jac[g, 0] + g_b * jac[g, 1] + g_c * jac[g, 2]
            grad_scales[f, i] = 2.0 * scales[f, i] * g_s2
            grad_opacities[f, i] = grad[g, 5] / opacities[f, i]


class _Projected(torch.autograd.Function):
    """(scales, opacities) [F, N] -> compositor rows [F*N, 6] and the tile set-up."""

    @staticmethod
    def forward(ctx: Any, scales: Tensor, opacities: Tensor, means: Tensor, viewmats: Tensor, Ks: Tensor,
                extends: Tensor, bounds: tuple[float, ...]) -> tuple[Tensor, ...]:
        n_frames, n = scales.shape
        dtype = means.detach().numpy().dtype
        s, o = scales.detach().contiguous().numpy(), opacities.detach().contiguous().numpy()
        log_o = _per_gaussian(torch.log, opacities.detach()).numpy()
        outputs = (np.empty((n_frames * n, 6), dtype), np.empty((n_frames * n, 3), dtype),
                   np.empty((n_frames, n), dtype), np.empty((n_frames * n, 2), dtype),
                   np.empty((n_frames * n, 2), np.int64), np.empty((n_frames * n, 2), np.int64),
                   np.empty((n_frames, n), np.int64))
        _project(means.detach().contiguous().numpy(), s, o, log_o, extends.numpy(), viewmats.detach().contiguous().numpy(),
                 Ks.detach().contiguous().numpy(), np.array(bounds, dtype), *outputs)
        ctx.saved = (s, o, outputs[0], outputs[1])
        ctx.mark_non_differentiable(*(torch.from_numpy(t) for t in outputs[1:]))
        return tuple(torch.from_numpy(t) for t in outputs)

    @staticmethod
    def backward(ctx: Any, grad_params: Tensor, *unused: Tensor) -> tuple[Tensor | None, ...]:
        s, o, params, jac = ctx.saved
        grad_s, grad_o = np.empty_like(s), np.empty_like(o)
        _project_backward(grad_params.detach().to(torch.from_numpy(params[:0]).dtype).contiguous().numpy(),
                          s, o, params, jac, grad_s, grad_o)
        return torch.from_numpy(grad_s), torch.from_numpy(grad_o), None, None, None, None, None


def project(means: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor, width: int,
            height: int, tile_size: int, box_extend: Callable[[Tensor], Tensor],
            limits: tuple[float, float, float, float, float]) -> tuple[Tensor, ...]:
    """(rows [F*N, 6], depth [F, N], box half-sizes [F*N, 2], first tiles [F*N, 2], spans [F*N, 2],
    tiles touched [F, N]) of Gaussians whose ``means`` [F, N, 3] need no gradient; the rows are
    differentiable in ``scales`` and ``opacities`` [F, N].  All inputs share one float dtype;
    ``box_extend`` maps opacities to box half-sizes in standard deviations, ``limits`` = (near,
    far, eps2d, FOV guard, alpha minimum)."""
    near, far, eps, guard, a_min = limits
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    bounds = (near, far, eps, a_min, width, height, tile_size, tiles_x, tiles_y, 1.0,
              guard * 0.5 * width, guard * 0.5 * height)
    extends = _per_gaussian(box_extend, opacities.detach())
    params, _, depth, box, t0, span, counts = _Projected.apply(scales, opacities, means, viewmats, Ks, extends, bounds)
    return params, depth, box, t0, span, counts


@njit(cache=True)
def _surface_frame(vertices: np.ndarray, triangles: np.ndarray, barycentrics: np.ndarray, min_area: float,
                   points: np.ndarray, scales: np.ndarray) -> None:
    for b in range(vertices.shape[0]):
        for i in range(triangles.shape[0]):
            t0, t1, t2 = triangles[i, 0], triangles[i, 1], triangles[i, 2]
            w0, w1, w2 = barycentrics[i, 0], barycentrics[i, 1], barycentrics[i, 2]
            for c in range(3):
                points[b, i, c] = (vertices[b, t0, c] * w0 + vertices[b, t1, c] * w1) + vertices[b, t2, c] * w2
            # edges in float32 as torch forms them, their cross product in float64; scalars, not
            # per-texel array slices (each would be an allocation inside this loop)
            ax = np.float64(vertices[b, t1, 0] - vertices[b, t0, 0])
            ay = np.float64(vertices[b, t1, 1] - vertices[b, t0, 1])
            az = np.float64(vertices[b, t1, 2] - vertices[b, t0, 2])
            bx = np.float64(vertices[b, t2, 0] - vertices[b, t0, 0])
            by = np.float64(vertices[b, t2, 1] - vertices[b, t0, 1])
            bz = np.float64(vertices[b, t2, 2] - vertices[b, t0, 2])
            nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
            scales[b, i] = math.sqrt(max(0.5 * math.sqrt(nx * nx + ny * ny + nz * nz), min_area))


def surface_frame_cpu(vertices: Tensor, triangles: Tensor, barycentrics: Tensor) -> tuple[Tensor, Tensor]:
    """(``geometry.mesh.surface_points``, ``uv_binding.local_triangle_scale``) of float32 CPU
    meshes [B, V, 3] without autograd, in one compiled pass over the bound triangles
    ``triangles`` [L, 3] (the torch path crosses every face of the mesh, then gathers).

    The points are the same products summed in the same order as ``surface_points``' ``einsum``
    (which gathers [B, L, 3, 3] corners and copies them for a batched matmul first), so
    bit-identical where that matmul sums in order without fused multiply-adds (x86-64 Linux)
    and within float rounding elsewhere; the scales' cross product and norm run in float64, so
    they are within float32 rounding of torch's."""
    points = np.empty((vertices.shape[0], triangles.shape[0], 3), np.float32)
    scales = np.empty((vertices.shape[0], triangles.shape[0]), np.float32)
    _surface_frame(vertices.detach().contiguous().numpy(), triangles.contiguous().numpy(),
                   barycentrics.to(torch.float32).contiguous().numpy(), MIN_TRIANGLE_AREA, points, scales)
    return torch.from_numpy(points), torch.from_numpy(scales)


def _per_gaussian(fn: Callable[[Tensor], Tensor], values: Tensor) -> Tensor:
    """``fn(values)`` for [F, N] values, evaluated once per Gaussian where they are one row
    broadcast over the frames (the opacities usually are)."""
    return fn(values[:1]).expand_as(values) if values.stride(0) == 0 else fn(values)
