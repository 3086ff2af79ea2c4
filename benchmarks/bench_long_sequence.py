"""Peak memory of long temporal renders: 100 vs 1,000 frames should cost about the same.

    python benchmarks/bench_long_sequence.py [--preset demo] [--frames 100 1000] [--steps 1] [--json OUT]

Each frame count renders in a fresh subprocess (random weights, temporal layers on, sliding
context windows) and reports its peak resident memory (ru_maxrss) and wall time. Frames are
consumed from ``pipeline.stream`` as a server job writes them. Only latents and pose-guider
outputs are kept for the whole sequence; activations are bounded by the window. Memory does not
depend on the step count, so one step keeps the 1,000-frame run short.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import resource, sys, time, numpy as np, torch
torch.set_flush_denormal(True)
from flamediff.assets import load_asset
from flamediff.demo import demo_animation
from flamediff.flame.model import FlameModel
from flamediff.models import FlameDiffConfig, FlameDiffModel
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings
preset, frames, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
asset = load_asset()
model = FlameDiffModel(FlameDiffConfig.preset_named(preset, temporal_layers=True, flame_asset=asset.identity()))
model.attach_gaussian_field(asset)
pipeline = FlameDiffPipeline(model, FlameModel(asset))
clip = demo_animation(asset, num_frames=frames, resolution=model.config.resolution)
reference = np.zeros((64, 64, 3), np.uint8)
start = time.perf_counter()
settings = RenderSettings(steps=steps, frames_per_batch=16, context_window=16, context_overlap=4, framing="camera")
delivered = sum(len(piece.frames) for piece in pipeline.stream(reference, clip, settings))  # frames written out, not kept
assert delivered == frames
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, time.perf_counter() - start)
"""


def measure(preset: str, frames: int, steps: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, preset, str(frames), str(steps)],
                            capture_output=True, text=True, check=True)
    peak_mb, seconds = (float(v) for v in result.stdout.split()[-2:])
    return {"frames": frames, "peak_rss_mb": peak_mb, "render_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [measure(args.preset, frames, args.steps) for frames in args.frames]
    for row in rows:
        print(f"{row['frames']:>6} frames: peak {row['peak_rss_mb']:.0f} MB, {row['render_s']:.1f} s")
    print(f"peak memory ratio {rows[-1]['frames']}/{rows[0]['frames']} frames: "
          f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f} (total {time.perf_counter() - started:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"preset": args.preset, "steps": args.steps, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
