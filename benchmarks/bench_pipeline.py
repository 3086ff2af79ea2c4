"""Where a render's time goes, and how much the pipeline adds on top of the denoiser.

    python benchmarks/bench_pipeline.py [--preset demo] [--frames 8] [--steps 10] [--json OUT]

Random weights (speed does not depend on their values). Reports, measured in one run:
- the split of a render: FLAME + splatting, pose guider, ReferenceNet (once), denoiser steps,
  VAE decode, PNG writing;
- overhead ratio = whole render / (steps x guidance branches x bare single-branch denoiser
  forward over the same frames): the pipeline's own overhead (target <= 1.15 on CPU);
- reference caching: a denoising step reusing the ReferenceNet tokens vs one recomputing them.
On a CUDA machine the same command times the GPU (``--device cuda``, ``--dtype bf16``).
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch
from PIL import Image

from backend.assets import load_asset
from backend.demo import demo_animation
from backend.flame.model import FlameModel
from backend.models import FlameDiffConfig, FlameDiffModel
from backend.models.config import LABELS
from backend.pipelines.render import FlameDiffPipeline, RenderSettings


def _timed(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times (the machine is noisy; the best is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def run(preset: str, frames: int, steps: int, device: str, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    asset = load_asset()
    model = FlameDiffModel(FlameDiffConfig.preset_named(preset, flame_asset=asset.identity()))
    model.attach_gaussian_field(asset)
    model = model.to(device=device, dtype=dtype).eval()
    pipeline = FlameDiffPipeline(model, FlameModel(asset).to(device))
    clip = demo_animation(asset, num_frames=frames, resolution=model.config.resolution)
    reference = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    settings = RenderSettings(steps=steps, guidance=2.0, frames_per_batch=frames)
    config = model.config
    latent = torch.randn(1, frames, config.latent_channels, config.latent_resolution, config.latent_resolution,
                         device=device, dtype=dtype)
    result: dict = {"preset": preset, "frames": frames, "steps": steps, "device": device, "dtype": str(dtype)}
    with torch.no_grad():
        pipeline(reference, clip, RenderSettings(steps=1, frames_per_batch=frames))  # warm-up
        result["render_s"] = _timed(lambda: pipeline(reference, clip, settings), repeats=2)
        control = pipeline.control_maps(clip)
        result["splat_s"] = _timed(lambda: pipeline.control_maps(clip))
        features = control.permute(0, 3, 1, 2)
        result["guider_s"] = _timed(lambda: model.guide(features))
        guidance = model.guide(features)[None]
        ref_latent = model.encode_images(torch.zeros(1, 3, config.resolution, config.resolution, device=device, dtype=dtype))
        result["reference_net_s"] = _timed(lambda: model.write_reference(ref_latent))
        timestep = torch.tensor([500], device=device)

        def single_branch():
            model.predict_guided(latent, timestep, guidance, torch.tensor([LABELS["real"]], device=device),
                                 torch.tensor([True], device=device))

        def both_branches():
            model.predict_guided(latent.expand(2, -1, -1, -1, -1), timestep.repeat(2), guidance.expand(2, -1, -1, -1, -1),
                                 torch.tensor([LABELS["real"]] * 2, device=device), torch.tensor([True, False], device=device),
                                 reference_index=torch.zeros(2, dtype=torch.long, device=device))

        def step_recomputing_reference():
            model.write_reference(ref_latent)
            both_branches()

        result["denoiser_single_branch_s"] = _timed(single_branch)
        result["denoiser_step_cached_reference_s"] = _timed(both_branches)
        result["denoiser_step_recomputed_reference_s"] = _timed(step_recomputing_reference)
        result["vae_decode_s"] = _timed(lambda: model.decode_latents(latent[0]))
    images = [np.zeros((config.resolution, config.resolution, 3), np.uint8)] * frames
    result["png_s"] = _timed(lambda: [Image.fromarray(i).save(io.BytesIO(), format="PNG") for i in images])
    bare = steps * 2 * result["denoiser_single_branch_s"]
    result["overhead_ratio"] = result["render_s"] / bare
    result["overhead_ratio_vs_batched_branches"] = result["render_s"] / (steps * result["denoiser_step_cached_reference_s"])
    result["reference_caching_speedup"] = (result["denoiser_step_recomputed_reference_s"]
                                           / result["denoiser_step_cached_reference_s"])
    result["frames_per_second"] = frames / result["render_s"]
    result["seconds_per_frame"] = result["render_s"] / frames
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    result = run(args.preset, args.frames, args.steps, args.device,
                 torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
