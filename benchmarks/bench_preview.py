"""How soon a preview shows its first frame, against the full render's first frame.

    python benchmarks/bench_preview.py [--preset demo] [--frames 16] [--dtype auto|fp32|bf16] [--temporal]
                                       [--steps 1] [--repeats 3] [--json OUT]

Warm pipeline (loaded, one render of each kind done), random weights. "First frame" is the time
from calling ``pipeline.stream`` to its first piece being handed out (decoded to uint8), i.e. what
the server writes as soon as it gets it. The preview renders at half resolution with at most 4
steps and its first frame alone; the full render uses the checkpoint's default steps in chunks
of 4 frames (the server's default ``frames_per_batch``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flamediff.assets import load_asset
from flamediff.demo import demo_animation
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings
from flamediff.devices import PRECISIONS, precision_dtype

from bench_pipeline import SPLATTERS, build_pipeline, print_and_save, run_with_splatter


def first_and_total(pipeline: FlameDiffPipeline, reference: np.ndarray, clip, settings: RenderSettings,
                    repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds to the first handed-out piece and to the last."""
    firsts, totals = [], []
    for _ in range(repeats):
        started, first = time.perf_counter(), None
        for _piece in pipeline.stream(reference, clip, settings):
            first = first or time.perf_counter() - started
        firsts.append(first)
        totals.append(time.perf_counter() - started)
    return min(firsts), min(totals)


def run(preset: str, frames: int, device: str, dtype: torch.dtype | None, temporal: bool, repeats: int,
        steps: int = 0) -> dict:
    pipeline = build_pipeline(preset, device, dtype, temporal, compile_denoiser=False)
    clip = demo_animation(load_asset(), num_frames=frames, resolution=pipeline.model.config.resolution)
    reference = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    preview = RenderSettings(steps=steps, frames_per_batch=4, preview=True, framing="camera")
    full = RenderSettings(steps=steps, frames_per_batch=4, framing="camera")
    result: dict = {"preset": preset, "frames": frames, "device": device, "dtype": str(pipeline.dtype),
                    "temporal": temporal, "preview_resolution": pipeline.resolution(preview=True),
                    "preview_steps": pipeline.resolved_steps(steps, preview=True),
                    "full_resolution": pipeline.resolution(), "full_steps": pipeline.resolved_steps(steps)}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    with torch.no_grad():
        for settings in (preview, full):  # warm-up: kernels, allocator, both resolutions
            list(pipeline.stream(reference, clip.select_frames([int(clip.frame[0])]), settings))
        result["preview_first_frame_s"], result["preview_all_frames_s"] = first_and_total(
            pipeline, reference, clip, preview, repeats)
        result["full_first_frame_s"], result["full_all_frames_s"] = first_and_total(
            pipeline, reference, clip, full, max(1, repeats - 1))
    result["first_frame_speedup"] = result["full_first_frame_s"] / result["preview_first_frame_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=0,
                        help="denoising steps of the full render (0: the preset's default; a preview takes at most 4); "
                             "the shipped demo checkpoint renders in 1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--temporal", action="store_true", help="with temporal layers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--splatter", default="auto", choices=SPLATTERS,
                        help="the feature splatter; compare: torch and numba in one run, side by side")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    def run_one() -> dict:
        return run(args.preset, args.frames, args.device, precision_dtype(args.dtype), args.temporal, args.repeats,
                   args.steps)

    result = run_with_splatter(run_one, args.splatter,
                               ("preview_first_frame_s", "full_first_frame_s", "full_all_frames_s"))
    print_and_save(result, args.json)


if __name__ == "__main__":
    main()
