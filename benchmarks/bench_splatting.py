"""Throughput of flamediff's feature splatter on a head-sized Gaussian cloud.

Usage: python benchmarks/bench_splatting.py [--quick] [--json OUT] [--frames F]
       [--tile-size T [T ...]] [--repeats R] [--threads T]

Scene: N Gaussians on a sphere of radius 0.1 m (a head), isotropic std
~1.5 mm, random opacities and D-dim features, seen from 0.6 m with a ~50 deg
field of view.  Times forward only and forward+backward for the torch path on
CPU, and for gsplat (and torch) on CUDA when available.  Prints a table
(median and best ms/frame) and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flamediff.gaussians.splatting import splat_features  # noqa: E402

FULL = [(n, d, r) for n in (15_000, 60_000) for d in (16, 32) for r in (128, 512)]
QUICK = [(15_000, 16, 128), (15_000, 16, 512)]


def head_scene(n: int, d: int, frames: int, res: int, device: str, seed: int = 0):
    """Random head-sized cloud and a camera 0.6 m away with a 50 degree FOV."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = (0.1 * dirs).expand(frames, n, 3).clone()
    scales = 0.0015 * torch.exp(0.2 * torch.randn(n, generator=g))
    opac = 0.2 + 0.75 * torch.rand(n, generator=g)
    feats = torch.randn(n, d, generator=g)
    viewmats = torch.eye(4).expand(frames, 4, 4).clone()
    viewmats[:, 2, 3] = 0.6  # camera at z = -0.6 looking down +z at the head
    f = 0.5 * res / math.tan(math.radians(50.0) / 2)
    Ks = torch.tensor([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1.0]]).expand(frames, 3, 3).clone()
    return [t.to(device) for t in (means, scales, opac, feats, viewmats, Ks)]


def time_one(backend: str, device: str, n: int, d: int, res: int, frames: int,
             backward: bool, repeats: int, tile_size: int) -> list[float]:
    """Wall times (s) of ``repeats`` calls, each rendering ``frames`` frames."""
    means, scales, opac, feats, viewmats, Ks = head_scene(n, d, frames, res, device)
    leaves = [means, scales, opac, feats]
    if backward:
        leaves = [t.requires_grad_(True) for t in leaves]

    def run() -> None:
        img, alpha = splat_features(*leaves, viewmats, Ks, res, res, backend=backend,
                                    tile_size=tile_size)
        if backward:
            (img.square().mean() + alpha.mean()).backward()
            for t in leaves:
                t.grad = None
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def targets() -> list[tuple[str, str]]:
    """(backend, device) pairs available here."""
    out = [("torch", "cpu")]
    if torch.cuda.is_available():
        out.append(("torch", "cuda"))
        try:
            import gsplat  # noqa: F401
            out.append(("gsplat", "cuda"))
        except ImportError:
            print("gsplat not importable: skipping the gsplat backend", file=sys.stderr)
    return out


def load_average() -> str:
    """1-minute load, to flag runs disturbed by other work on the machine."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subset, under a minute on CPU")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--frames", type=int, default=2, help="frames per call")
    ap.add_argument("--tile-size", type=int, nargs="+", default=[16],
                    help="torch-path tile edge(s) to try")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per config")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 avoids OpenMP stalls on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = QUICK if args.quick else FULL
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"frames/call={args.frames}, repeats={repeats}, load avg {load_average()}")
    header = (f"{'backend':<13}{'tile':>5}{'N':>7}{'D':>4}{'res':>5}  {'mode':<8}"
              f"{'ms/frame':>10}{'best':>8}{'frames/s':>10}")
    print(header + "\n" + "-" * len(header))
    rows = []
    for backend, device in targets():
        tiles = args.tile_size if backend == "torch" else [16]
        for (n, d, res), tile, backward in itertools.product(configs, tiles, (False, True)):
            times = time_one(backend, device, n, d, res, args.frames, backward, repeats, tile)
            ms = 1000 * statistics.median(times) / args.frames
            best = 1000 * min(times) / args.frames
            row = dict(backend=backend, device=device, tile_size=tile, n=n, d=d, res=res,
                       mode="fwd+bwd" if backward else "fwd", frames=args.frames,
                       ms_per_frame=ms, best_ms_per_frame=best, frames_per_s=1000 / ms)
            rows.append(row)
            print(f"{backend + '-' + device:<13}{tile:>5}{n:>7}{d:>4}{res:>5}  {row['mode']:<8}"
                  f"{ms:>10.1f}{best:>8.1f}{1000 / ms:>10.2f}", flush=True)
    print(f"load avg after: {load_average()}")
    if args.json:
        meta = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                    machine=platform.processor() or platform.machine(),
                    cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    command=" ".join(sys.argv))
        args.json.write_text(json.dumps(dict(meta=meta, results=rows), indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
