"""Excess flicker of the context windows of this checkout against another revision's pipeline.

    python benchmarks/compare_context_windows.py DATASET [--rev 4813480] [--window 8 --overlap 2]
                                                 [--sequences 8] [--checkpoint backend/checkpoints/demo]

Renders each held-out continuous sequence of DATASET (e.g. the seed-20261130 set that
``configs/results/run.sh`` makes in work/results/fresh) with both pipelines, the same checkpoint,
seed and settings, and prints the mean flicker (mean absolute difference of consecutive frames,
0-1, whole frame), the ground truth's, and the excess. ``--rev`` 4813480 is the last revision
with chained (pinned-trajectory) windows; this checkout's are anchored to frame numbers and blended.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_pipeline_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def flicker(frames: list[np.ndarray]) -> float:
    stack = np.stack(frames).astype(np.float64) / 255.0
    return float(np.abs(stack[1:] - stack[:-1]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--rev", default="4813480")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--checkpoint", default=os.path.join(ROOT, "backend", "checkpoints", "demo"))
    args = parser.parse_args()
    from flamediff.assets import load_asset
    from flamediff.data.dataset import read_dataset
    from flamediff.flame.model import FlameModel
    from flamediff.models import FlameDiffModel

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    old_source = subprocess.run(["git", "-C", ROOT, "show", f"{args.rev}:backend/pipelines/render.py"],
                                capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(old_source.replace("from backend.", "from flamediff."))
    versions = {"this checkout": load_pipeline_module(os.path.join(ROOT, "backend", "pipelines", "render.py"),
                                                      "render_now"),
                args.rev: load_pipeline_module(handle.name, "render_then")}
    index = read_dataset(args.dataset)
    sequences = [rows for rows in index.sequences() if (index.label[rows] == 0).all() and len(rows) > 1]
    asset = load_asset(None)
    for name, module in versions.items():
        pipeline = module.FlameDiffPipeline(FlameDiffModel.from_pretrained(args.checkpoint, asset=asset, device="cpu"),
                                            FlameModel(asset), dtype=torch.float32)
        # the camera's whole view, as both versions render it (older ones have no framing setting)
        framing = {"framing": "camera"} if "framing" in module.RenderSettings.__dataclass_fields__ else {}
        settings = module.RenderSettings(seed=0, frames_per_batch=8, context_window=args.window,
                                         context_overlap=args.overlap, **framing)
        ours, truth = [], []
        for rows in sequences[:args.sequences]:
            reference = int([r for r in index.samples_of_identity(index.identity[rows[0]]) if r not in rows][0])
            ours.append(flicker(pipeline(index.load_frame(reference), index.annotations.take_rows(rows), settings).frames))
            truth.append(flicker([index.load_frame(int(r)) for r in rows]))
        print(f"{name}: flicker {np.mean(ours):.5f}, ground truth {np.mean(truth):.5f}, "
              f"excess {np.mean(ours) - np.mean(truth):.5f} ({len(ours)} sequences)", flush=True)
    os.unlink(handle.name)


if __name__ == "__main__":
    main()
