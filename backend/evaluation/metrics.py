"""Image metrics over a head mask, network-based hooks (LPIPS-style, CSIM) and AED/APD estimators.

Conventions
-----------
Images are ``[H, W, 3]`` uint8 (or ``[N, H, W, 3]``), compared in [0, 1]. A mask is a boolean
``[H, W]`` array per frame selecting the head region; ``None`` means the whole frame. Every
metric is computed per frame and averaged over frames by the caller.

- ``psnr``: ``10 log10(1 / MSE)`` with the MSE over masked pixels and the 3 channels; an exact
  match (MSE 0) gives :data:`PSNR_CAP` dB instead of infinity (JSON has no infinity).
- ``ssim``: Gaussian-window SSIM (window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1; the
  image is reflect-padded so the SSIM map has the image's size), averaged over channels and
  then over masked pixels.
- ``l1``: mean absolute difference over masked pixels and channels, in [0, 1] units.

Network hooks take weights from files the user supplies (nothing is downloaded):

- :class:`LPIPSMetric`: a small conv feature extractor (:class:`ConvFeatures`) whose
  architecture is read from the state dict (``layers.{i}.weight`` [C_out, C_in, k, k], ReLU
  after each, stride 1 for the first and 2 for the others unless the file gives ``strides``),
  optional LPIPS ``lins.{i}.weight`` [1, C, 1, 1]. Distance: per layer, channel-unit-normalised
  features, squared difference, (linearly weighted) channel sum, mask-weighted spatial mean;
  summed over layers.
- :class:`CSIMMetric`: cosine similarity of embeddings from an embedding network file: a
  TorchScript module (e.g. an ArcFace exported with ``torch.jit.trace``) or a state dict of
  :class:`ConvFeatures` plus an optional ``fc.weight`` / ``fc.bias`` head (global average pool,
  then the linear layer). Input: the whole frame resized to ``input_size`` in [-1, 1].

AED / APD go through :class:`ExpressionPoseEstimator` (images -> expression coefficients,
pose). AED is the mean absolute difference of expression coefficients, APD the mean absolute
difference of the pose vector (radians), both between the estimate on the output and the
estimate on the driving frame. :class:`ProceduralRegressor` is a small CNN for the procedural
world, trained with :func:`train_regressor` on a dataset's renders; its pose is the head's
rotation relative to a frontal camera (axis-angle, 3) followed by the jaw pose (3).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flamediff.errors import FlamediffError
from flamediff.formats.animation import AnimationClip
from flamediff.formats.rotations import axis_angle_to_matrix, matrix_to_axis_angle

if TYPE_CHECKING:
    from flamediff.data.dataset import DatasetIndex

PSNR_CAP = 100.0


class MetricError(FlamediffError):
    """Unusable metric inputs or network files; the message says what is wrong."""


# ---------------------------------------------------------------------------------------------
# Pixel metrics


def _to_float(image: np.ndarray | Tensor) -> Tensor:
    """``[H, W, 3]`` uint8 / float in [0, 1] -> ``[3, H, W]`` float64 in [0, 1]."""
    tensor = torch.as_tensor(np.asarray(image))
    if tensor.dtype == torch.uint8:
        tensor = tensor.double() / 255.0
    else:
        tensor = tensor.double()
    if tensor.ndim != 3 or tensor.shape[-1] != 3:
        raise MetricError(f"expected an [H, W, 3] image, got {list(tensor.shape)}")
    return tensor.permute(2, 0, 1)


def _mask(mask: np.ndarray | None, height: int, width: int) -> Tensor:
    if mask is None:
        return torch.ones(height, width, dtype=torch.bool)
    out = torch.as_tensor(np.asarray(mask)).bool()
    if out.shape != (height, width):
        raise MetricError(f"mask is {list(out.shape)}, the image is {height}x{width}")
    return out


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[Tensor, Tensor]:
    x, y = _to_float(a), _to_float(b)
    if x.shape != y.shape:
        raise MetricError(f"images differ in size: {list(x.shape)} vs {list(y.shape)}")
    return x, y


def mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    x, y = _check_pair(a, b)
    m = _mask(mask, *x.shape[1:])
    if not bool(m.any()):
        return float("nan")
    return float(((x - y) ** 2)[:, m].mean())


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB over the masked pixels (data range 1); :data:`PSNR_CAP` for an exact match."""
    error = mse(a, b, mask)
    if math.isnan(error):
        return float("nan")
    if error <= 10.0 ** (-PSNR_CAP / 10.0):
        return PSNR_CAP
    return float(10.0 * math.log10(1.0 / error))


def l1(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    x, y = _check_pair(a, b)
    m = _mask(mask, *x.shape[1:])
    if not bool(m.any()):
        return float("nan")
    return float((x - y).abs()[:, m].mean())


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """``[H, W]`` SSIM map (averaged over channels) of two ``[H, W, 3]`` images."""
    x, y = _check_pair(a, b)
    height, width = x.shape[1:]
    if window > min(height, width):
        side = min(height, width)
        window = side if side % 2 else side - 1
    kernel = gaussian_window(window, sigma)[None, None].expand(3, 1, window, window)
    pad = window // 2

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.pad(z[None], (pad, pad, pad, pad), mode="reflect"), kernel, groups=3)[0]

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    value = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return value.mean(0)


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Gaussian-window SSIM averaged over the masked pixels (1 for identical images)."""
    value = ssim_map(a, b)
    m = _mask(mask, *value.shape)
    if not bool(m.any()):
        return float("nan")
    return float(value[m].mean())


def pixel_metrics(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    return {"psnr": psnr(a, b, mask), "ssim": ssim(a, b, mask), "l1": l1(a, b, mask)}


def colour_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean over R, G, B of |mean colour of ``a`` - mean colour of ``b``| over the masked pixels,
    in 0-255 levels: whether a region has the right colour, whatever its detail (a grey
    mannequin on a teal backdrop scores high here even where PSNR looks tolerable)."""
    x, y = _check_pair(a, b)
    m = _mask(mask, *x.shape[1:])
    if not bool(m.any()):
        return float("nan")
    return float((x[:, m].mean(1) - y[:, m].mean(1)).abs().mean() * 255.0)


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def high_frequency_energy(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared response of the 3x3 Laplacian (per channel, valid pixels only) inside the mask:
    the energy of the finest detail an image has."""
    x = _to_float(image)
    response = F.conv2d(x[:, None], _LAPLACIAN[None, None])[:, 0]          # [3, H-2, W-2]
    m = _mask(mask, *x.shape[1:])[1:-1, 1:-1]
    if not bool(m.any()):
        return float("nan")
    return float(response[:, m].pow(2).mean())


def sharpness_ratio(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """High-frequency energy of ``a`` over that of the reference ``b`` (same mask): 1 is as
    sharp as ``b``, below 1 blurrier, above 1 noisier or over-sharpened."""
    reference = high_frequency_energy(b, mask)
    return high_frequency_energy(a, mask) / reference if reference > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Network-based metrics (weights from user files)


def _load_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise MetricError(f"network weights {path} do not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise MetricError(f"{path}: not a readable state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise MetricError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


class ConvFeatures(nn.Module):
    """Conv layers with ReLU; ``forward`` returns every layer's activation."""

    def __init__(self, channels: list[tuple[int, int, int]], strides: list[int] | None = None) -> None:
        super().__init__()
        strides = strides or [1] + [2] * (len(channels) - 1)
        self.strides = list(strides)
        self.layers = nn.ModuleList(nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)
                                    for (cin, cout, k), s in zip(channels, strides))

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for layer in self.layers:
            x = F.relu(layer(x))
            out.append(x)
        return out

    @staticmethod
    def spec_from_state(state: dict, path: str = "weights") -> tuple[list[tuple[int, int, int]], list[int] | None]:
        channels: list[tuple[int, int, int]] = []
        while f"layers.{len(channels)}.weight" in state:
            w = state[f"layers.{len(channels)}.weight"]
            if w.ndim != 4:
                raise MetricError(f"{path}: layers.{len(channels)}.weight must be [C_out, C_in, k, k]")
            channels.append((int(w.shape[1]), int(w.shape[0]), int(w.shape[-1])))
        if not channels:
            raise MetricError(f"{path}: no conv layers (expected keys layers.0.weight, layers.0.bias, ...)")
        strides = state.get("strides")
        return channels, None if strides is None else [int(s) for s in torch.as_tensor(strides).tolist()]


def _prepare(images: np.ndarray, size: int | None) -> Tensor:
    from flamediff.models.pixels import images_to_tensor  # the networks are not needed to score frames

    images = np.asarray(images)
    x = images_to_tensor(images[None] if images.ndim == 3 else images)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class LPIPSMetric:
    """LPIPS-style perceptual distance with a user-supplied :class:`ConvFeatures` state dict."""

    def __init__(self, path: str) -> None:
        state = _load_state(path)
        channels, strides = ConvFeatures.spec_from_state(state, path)
        self.net = ConvFeatures(channels, strides).eval()
        self.net.load_state_dict({k: v for k, v in state.items() if k.startswith("layers.")})
        self.lins = [state.get(f"lins.{i}.weight") for i in range(len(channels))]
        for i, lin in enumerate(self.lins):
            if lin is not None and lin.numel() != channels[i][1]:
                raise MetricError(f"{path}: lins.{i}.weight has {lin.numel()} values, layer {i} has "
                                  f"{channels[i][1]} channels")
        self.path = path

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
        fa, fb = self.net(_prepare(a, None)), self.net(_prepare(b, None))
        m = torch.ones(1, 1, *np.asarray(a).shape[:2]) if mask is None else \
            torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]
        total = 0.0
        for i, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            d = (x - y) ** 2
            lin = self.lins[i]
            d = (d * lin.reshape(1, -1, 1, 1).float()).sum(1) if lin is not None else d.sum(1)
            w = F.interpolate(m, size=d.shape[-2:], mode="area")[:, 0]
            if float(w.sum()) <= 0:
                return float("nan")
            total += float((d * w).sum() / w.sum())
        return total


class _ConvEmbedder(nn.Module):
    def __init__(self, features: ConvFeatures, fc: nn.Linear | None) -> None:
        super().__init__()
        self.features, self.fc = features, fc

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.features(x)[-1].mean(dim=(2, 3))
        return self.fc(pooled) if self.fc is not None else pooled


class CSIMMetric:
    """Cosine similarity of identity embeddings from a user-supplied network file."""

    def __init__(self, path: str, input_size: int = 112) -> None:
        self.path, self.input_size = path, input_size
        self.net = self._load(path).eval()

    @staticmethod
    def _load(path: str) -> nn.Module:
        if not os.path.isfile(path):
            raise MetricError(f"embedding network {path} does not exist")
        try:
            state = _load_state(path)
        except MetricError:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return torch.jit.load(path, map_location="cpu")
            except Exception:  # noqa: BLE001 - neither a state dict nor TorchScript
                raise MetricError(f"{path}: neither a TorchScript module nor a state dict") from None
        channels, strides = ConvFeatures.spec_from_state(state, path)
        features = ConvFeatures(channels, strides)
        features.load_state_dict({k: v for k, v in state.items() if k.startswith("layers.")})
        fc = None
        if "fc.weight" in state:
            weight = state["fc.weight"]
            fc = nn.Linear(weight.shape[1], weight.shape[0], bias="fc.bias" in state)
            fc.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("fc.")})
        return _ConvEmbedder(features, fc)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> Tensor:
        out = self.net(_prepare(images, self.input_size))
        return F.normalize(out.reshape(out.shape[0], -1).float(), dim=-1)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        return float((self.embed(a) * self.embed(b)).sum())


# ---------------------------------------------------------------------------------------------
# AED / APD


@runtime_checkable
class ExpressionPoseEstimator(Protocol):
    """Anything that maps ``[N, H, W, 3]`` uint8 images to (expression ``[N, E]``, pose ``[N, P]``)."""

    def estimate(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def expression_pose_distance(expression_a: np.ndarray, pose_a: np.ndarray, expression_b: np.ndarray,
                             pose_b: np.ndarray) -> dict[str, float]:
    """AED and APD: mean absolute difference of expression coefficients and of pose values."""
    return {"aed": float(np.abs(np.asarray(expression_a) - np.asarray(expression_b)).mean()),
            "apd": float(np.abs(np.asarray(pose_a) - np.asarray(pose_b)).mean())}


FRONTAL_CAMERA = np.diag([1.0, -1.0, -1.0])  # OpenCV camera on +z looking at the FLAME origin


def procedural_targets(clip: AnimationClip, num_expression: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Regression targets of every row of an annotation clip: the first ``num_expression``
    expression coefficients, and [head rotation relative to a frontal camera (3), jaw pose (3)]."""
    expression = np.zeros((clip.num_frames, num_expression))
    count = min(num_expression, clip.expression.shape[1])
    expression[:, :count] = clip.expression[:, :count]
    relative = FRONTAL_CAMERA.T @ np.asarray(clip.R) @ axis_angle_to_matrix(clip.global_pose)
    pose = np.concatenate([matrix_to_axis_angle(relative), np.asarray(clip.jaw_pose, np.float64)], -1)
    return expression, pose


class ProceduralRegressor(nn.Module):
    """Small CNN: image -> (expression [E], pose [6]) for procedural renders (see the module doc)."""

    def __init__(self, num_expression: int = 10, input_size: int = 64, width: int = 16) -> None:
        super().__init__()
        self.num_expression, self.input_size = num_expression, input_size
        layers, cin = [], 3
        for cout in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.SiLU()]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 4, num_expression + 6)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.body(x), 2)
        return self.head(x.flatten(1))

    @torch.no_grad()
    def estimate(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.eval()
        out = torch.cat([self(_prepare(images[i:i + 64], self.input_size)) for i in range(0, len(images), 64)])
        values = out.double().numpy()
        return values[:, :self.num_expression], values[:, self.num_expression:]


def train_regressor(dataset: str | DatasetIndex, steps: int = 500, num_expression: int = 10, input_size: int = 64,
                    batch_size: int = 32, learning_rate: float = 2e-3, seed: int = 0,
                    rows: np.ndarray | None = None) -> ProceduralRegressor:
    """Train a :class:`ProceduralRegressor` on the renders of ``dataset`` (a folder or a
    :class:`~backend.data.dataset.DatasetIndex`), on ``rows`` (default: every sample)."""
    from flamediff.data.dataset import read_dataset

    index = read_dataset(dataset) if isinstance(dataset, str) else dataset
    rows = np.arange(len(index)) if rows is None or len(rows) == 0 else np.asarray(rows)
    torch.manual_seed(seed)
    images = _prepare(np.stack([index.load_frame(int(i)) for i in rows]), input_size)
    expression, pose = procedural_targets(index.annotations.take_rows(rows), num_expression)
    target = torch.as_tensor(np.concatenate([expression, pose], -1), dtype=torch.float32)
    model = ProceduralRegressor(num_expression, input_size)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=generator)
        loss = F.mse_loss(model(images[pick]), target[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()
