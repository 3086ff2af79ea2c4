"""Pose guider: the splatted feature map down to the denoiser's first feature width.

As in Animate Anyone / Champ: a small conv stack with stride-2 steps down to latent
resolution, whose output layer starts at zero so that an untrained guider leaves the denoiser
unchanged; its output is added to the denoiser's ``conv_in`` output.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class PoseGuider(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, channels: tuple[int, ...], downsample: int) -> None:
        super().__init__()
        steps = int(math.log2(downsample))
        if 2 ** steps != downsample:
            raise ValueError(f"downsample must be a power of two, got {downsample}")
        widths = list(channels) + [channels[-1]] * max(0, steps + 1 - len(channels))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.SiLU()]
        for i in range(steps):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(widths[steps], out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feature_map: Tensor) -> Tensor:
        """``[N, D, H, W]`` feature map -> ``[N, C, H / downsample, W / downsample]``."""
        return self.out(self.body(feature_map))
