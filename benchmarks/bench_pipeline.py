"""Where a render's time goes, how much the pipeline adds on top of the denoiser, and how close
the denoiser runs to the hardware's peak.

    python benchmarks/bench_pipeline.py [--preset demo] [--frames 8] [--steps 10] [--dtype auto|fp32|bf16]
                                        [--temporal] [--compile] [--peak-tflops X] [--json OUT]
    python benchmarks/bench_pipeline.py --preset sd15 --flops-only   # FLOPs on the meta device, no weights

Random weights (speed does not depend on their values). Reports, measured in one run:
- the split of a render: FLAME + splatting, pose guider, ReferenceNet (once), denoiser steps,
  VAE decode, PNG writing;
- overhead ratio = whole render / (steps x guidance branches x bare single-branch denoiser
  forward over the same frames): the pipeline's own overhead (target <= 1.15 on CPU);
- reference caching: a denoising step reusing the ReferenceNet tokens vs one recomputing them;
- the denoiser's FLOPs per U-Net forward of one frame (``FlopCounterMode``, attention counted
  through the math kernel), the TFLOP/s it achieves in a batched guidance step and over the
  whole render, and with a known peak (``--peak-tflops``, or the table below for the GPU
  torch names) the fraction of it; on CUDA the peak of allocated GPU memory.
``--dtype auto`` is the pipeline's default: bf16 + channels-last U-Nets on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import time

import numpy as np
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import flamediff.gaussians.field as field_module
from flamediff.assets import load_asset
from flamediff.demo import demo_animation
from flamediff.flame.model import FlameModel
from flamediff.gaussians.splatting import splat_features
from flamediff.models import FlameDiffConfig, FlameDiffModel
from flamediff.models.config import LABELS
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings
from flamediff.devices import PRECISIONS, precision_dtype

#: Dense bf16 tensor-core peaks in TFLOP/s (NVIDIA datasheets; their headline figures are with
#: 2:4 sparsity, twice these), matched in order against ``torch.cuda.get_device_name()``.
BF16_DENSE_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                          ("A100", 312.0))


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


SPLATTERS = ("auto", "torch", "numba", "compare")  # compare: the pure-torch and the compiled CPU path


def use_splatter(backend: str) -> None:
    """Route the Gaussian field's splatting through ``backend`` (``auto``: the library's choice)."""
    field_module.splat_features = functools.partial(splat_features, backend=backend)


def compare_splatters(run_one, keys: tuple[str, ...], rounds: int = 2) -> dict:
    """``run_one()`` with the torch splatter and with the compiled one, alternating for
    ``rounds`` rounds in this process (so a busy spell of the machine does not fall on one side
    only): the best of each listed time side by side, the rest of the compiled path's last run."""
    runs: dict[str, list[dict]] = {"torch": [], "numba": []}
    for _ in range(rounds):
        for backend, results in runs.items():
            use_splatter(backend)
            results.append(run_one())
    merged = dict(runs["numba"][-1])
    for key in keys:
        merged.pop(key, None)
        for backend, results in runs.items():
            merged[f"{key} ({backend} splatter)"] = min(r[key] for r in results)
    return merged


def run_with_splatter(run_one, splatter: str, keys: tuple[str, ...]) -> dict:
    """``run_one()`` through the ``--splatter`` choice: one backend, or ``compare`` (both, the
    listed times side by side)."""
    if splatter == "compare":
        return compare_splatters(run_one, keys)
    use_splatter(splatter)
    return run_one()


def known_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like ``torch.cuda.get_device_name()``, if listed."""
    return next((peak for key, peak in BF16_DENSE_PEAK_TFLOPS if key in device_name), None)


def denoiser_gflops(config: FlameDiffConfig) -> float:
    """GFLOP of one single-branch U-Net forward of one frame at the config's resolution,
    reference tokens included.

    Counted on the meta device (no weights, no memory; FLOPs depend on neither device, dtype
    nor compilation) through the math attention kernel, whose matmuls the counter sees (the
    fused CPU kernel is not in its table)."""
    with torch.device("meta"):
        model = FlameDiffModel(config).eval()
    latent = config.latent_resolution
    with torch.no_grad(), torch.device("meta"), sdpa_kernel(SDPBackend.MATH):
        model.write_reference(torch.zeros(1, config.latent_channels, latent, latent))
        with FlopCounterMode(display=False) as counter:
            model.predict_guided(torch.zeros(1, 1, config.latent_channels, latent, latent), torch.tensor([500]),
                                 torch.zeros(1, 1, config.unet_channels[0], latent, latent),
                                 torch.tensor([LABELS["real"]]), None)
    return counter.get_total_flops() / 1e9


def throughput(result: dict, peak_tflops: float | None) -> dict:
    """Achieved TFLOP/s: in one batched guidance step (both branches, every frame) and over the
    whole render (every step's denoiser FLOPs / render time), with fractions of the peak."""
    flops_per_step = result["denoiser_gflop_per_frame_forward"] * 1e9 * result["frames"] * 2
    figures = {"denoiser_tflops_per_s": flops_per_step / result["denoiser_step_cached_reference_s"] / 1e12,
               "render_denoiser_tflops_per_s": flops_per_step * result["steps"] / result["render_s"] / 1e12}
    if peak_tflops:
        figures["peak_tflops"] = peak_tflops
        figures["denoiser_fraction_of_peak"] = figures["denoiser_tflops_per_s"] / peak_tflops
        figures["render_fraction_of_peak"] = figures["render_denoiser_tflops_per_s"] / peak_tflops
    return figures


def build_pipeline(preset: str, device: str, dtype: torch.dtype | None, temporal: bool,
                   compile_denoiser: bool) -> FlameDiffPipeline:
    torch.manual_seed(0)
    asset = load_asset()
    model = FlameDiffModel(FlameDiffConfig.preset_named(preset, flame_asset=asset.identity(), temporal_layers=temporal))
    model.attach_gaussian_field(asset)
    return FlameDiffPipeline(model.to(device), FlameModel(asset).to(device), dtype=dtype,
                             compile_denoiser=compile_denoiser)


def run(preset: str, frames: int, steps: int, device: str, dtype: torch.dtype | None, temporal: bool = False,
        compile_denoiser: bool = False, peak_tflops: float | None = None) -> dict:
    pipeline = build_pipeline(preset, device, dtype, temporal, compile_denoiser)
    model, config, dtype = pipeline.model, pipeline.model.config, pipeline.dtype
    clip = demo_animation(load_asset(), num_frames=frames, resolution=config.resolution)
    reference = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    settings = RenderSettings(steps=steps, guidance=2.0, frames_per_batch=frames, framing="camera")
    latent = torch.randn(1, frames, config.latent_channels, config.latent_resolution, config.latent_resolution,
                         device=device)
    result: dict = {"preset": preset, "frames": frames, "steps": steps, "device": device, "dtype": str(dtype),
                    "temporal": temporal, "compiled": pipeline.compiled}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
        peak_tflops = peak_tflops or known_peak_tflops(result["gpu"])
    result["denoiser_gflop_per_frame_forward"] = denoiser_gflops(config)
    with torch.no_grad():
        pipeline(reference, clip, RenderSettings(steps=1, frames_per_batch=frames, framing="camera"))  # warm-up (and compile)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result["render_s"] = _timed(lambda: pipeline(reference, clip, settings), repeats=2)
        if device == "cuda":
            result["gpu_memory_peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        control = pipeline.control_maps(clip)
        result["splat_s"] = _timed(lambda: pipeline.control_maps(clip))
        features = control.permute(0, 3, 1, 2)
        result["guider_s"] = _timed(lambda: model.guide(features))
        pose_features = model.guide(features).to(dtype)[None]
        blank = torch.zeros(1, 3, config.resolution, config.resolution, device=device)
        ref_latent = model.encode_images(blank).to(dtype)
        result["reference_net_s"] = _timed(lambda: model.write_reference(ref_latent))
        timestep = torch.tensor([500], device=device)
        noisy = latent.to(dtype)

        def single_branch():
            model.predict_guided(noisy, timestep, pose_features, torch.tensor([LABELS["real"]], device=device), None)

        def both_branches():
            model.predict_guided(noisy.expand(2, -1, -1, -1, -1), timestep.repeat(2), pose_features.expand(2, -1, -1, -1, -1),
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
    result["splat_share_of_render"] = result["splat_s"] / result["render_s"]
    result["frames_per_second"] = frames / result["render_s"]
    result["seconds_per_frame"] = result["render_s"] / frames
    result.update(throughput(result, peak_tflops))
    return result


def print_and_save(result: dict, json_path: str | None) -> None:
    """One ``key value`` line per figure; the same as JSON when asked."""
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--temporal", action="store_true", help="with temporal layers (one window over the frames)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser (warm-up compiles)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak for the fraction-of-peak figures (default: the table for known GPUs)")
    parser.add_argument("--flops-only", action="store_true", help="only count the denoiser's FLOPs (meta device)")
    parser.add_argument("--splatter", default="auto", choices=SPLATTERS,
                        help="the feature splatter; compare: torch and numba in one run, side by side")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.flops_only:
        config = FlameDiffConfig.preset_named(args.preset, temporal_layers=args.temporal)
        print_and_save({"preset": args.preset, "temporal": args.temporal, "resolution": config.resolution,
                        "denoiser_gflop_per_frame_forward": denoiser_gflops(config)}, args.json)
        return
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    def run_one() -> dict:
        return run(args.preset, args.frames, args.steps, args.device, precision_dtype(args.dtype), args.temporal,
                   args.compile, args.peak_tflops)

    result = run_with_splatter(run_one, args.splatter, ("render_s", "splat_s"))
    if args.splatter == "compare":
        for backend in ("torch", "numba"):
            result[f"splat_share_of_render ({backend} splatter)"] = (result[f"splat_s ({backend} splatter)"]
                                                                     / result[f"render_s ({backend} splatter)"])
    print_and_save(result, args.json)


if __name__ == "__main__":
    main()
