"""How much the VAE alone keeps: encode and decode never-seen frames and measure what is lost.

Everything the diffusion model renders passes through the VAE's decoder, so its reconstruction
is the ceiling on the model's PSNR and the floor of its colour error. The report (written beside
a ``vae``-stage model as ``reconstruction.json``) gives, over the head mask (FLAME coverage):
PSNR, SSIM, the mean-colour error of the head and of the background in 0-255 levels, and the
sharpness ratio (high-frequency energy of reconstruction / ground truth).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np
import torch

from flamediff.data.dataset import DatasetIndex
from flamediff.evaluation import metrics as M
from flamediff.evaluation.masks import coverage_masks
from flamediff.evaluation.selection import spread
from flamediff.formats.flame_asset import FlameAsset
from flamediff.models.flamediff_model import FlameDiffModel
from flamediff.models.pixels import images_to_tensor, tensor_to_images

REPORT_NAME = "reconstruction.json"


@torch.no_grad()
def reconstruct(model: FlameDiffModel, frames: np.ndarray) -> np.ndarray:
    """``[N, R, R, 3]`` uint8 -> the same frames encoded and decoded by ``model``'s VAE."""
    images = images_to_tensor(frames, next(model.vae.parameters()).device)
    return np.stack(tensor_to_images(model.decode_latents(model.encode_images(images))))


def reconstruction_metrics(outputs: np.ndarray, truth: np.ndarray, head: np.ndarray) -> dict[str, float]:
    """Mean over frames of head PSNR / SSIM, head and background colour error, head sharpness ratio."""
    rows = [{"psnr": M.psnr(o, t, m), "ssim": M.ssim(o, t, m),
             "head_colour_error": M.colour_error(o, t, m), "background_colour_error": M.colour_error(o, t, ~m),
             "sharpness": M.sharpness_ratio(o, t, m)} for o, t, m in zip(outputs, truth, head)]
    return {key: float(np.nanmean([r[key] for r in rows])) for key in rows[0]}


def reconstruction_report(model: FlameDiffModel, index: DatasetIndex, identities: list[int], asset: FlameAsset,
                          frames_per_identity: int = 8) -> dict[str, Any]:
    """:func:`reconstruction_metrics` over ``frames_per_identity`` frames (evenly spread) of each identity."""
    rows = np.concatenate([spread(index.samples_of_identity(i), frames_per_identity) for i in identities])
    truth = np.stack([index.load_frame(int(r)) for r in rows])
    head = coverage_masks(index.annotations.take_rows(rows), asset, index.resolution)
    outputs = np.concatenate([reconstruct(model, truth[i:i + 16]) for i in range(0, len(truth), 16)])
    return {"identities": [int(i) for i in identities], "frames": int(len(rows)), "mask": "flame-coverage",
            **reconstruction_metrics(outputs, truth, head)}


def write_reconstruction_report(model: FlameDiffModel, index: DatasetIndex, identities: list[int], asset: FlameAsset,
                                folder: str,
                                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure on ``identities`` (the held-out ones: never seen by the VAE) and write the report."""
    report = reconstruction_report(model, index, identities, asset)
    with open(os.path.join(folder, REPORT_NAME), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    log(f"VAE reconstruction on {report['frames']} held-out frames: head PSNR {report['psnr']:.2f} dB, "
        f"SSIM {report['ssim']:.3f}, colour error head {report['head_colour_error']:.2f} / background "
        f"{report['background_colour_error']:.2f} levels, sharpness {report['sharpness']:.2f}")
    return report
