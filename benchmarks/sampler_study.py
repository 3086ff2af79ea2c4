"""Denoising steps x guidance on validation identities: how a checkpoint's frames change with the sampler.

``python benchmarks/sampler_study.py CHECKPOINT DATA [--split heldout] [--samplers 1:1 4:1 12:1 4:2 12:2]``
scores each ``steps:guidance`` pair with ``flamediff eval``'s protocol (self-reenactment over the
head: PSNR, head colour error, sharpness = the output's high-frequency energy over the ground
truth's) on the same identities, frames and noise seed, and prints a Markdown table. Use it on
validation identities (a training dataset's held-out split) to choose a checkpoint's
``default_steps`` / ``default_guidance``, never on the test data.
"""

from __future__ import annotations

import argparse
import json
import time

from flamediff.evaluation.evaluate import evaluate


def parse_sampler(text: str) -> tuple[int, float]:
    """``"4:2"`` -> (4 steps, guidance 2.0)."""
    steps, _, guidance = text.partition(":")
    return int(steps), float(guidance or 1.0)


def study(checkpoint: str, data: str, split: str, samplers: list[tuple[int, float]], max_identities: int,
          max_frames: int) -> list[dict[str, float]]:
    """One row per sampler: its settings, the method's metrics, and the copy-reference PSNR."""
    rows = []
    for steps, guidance in samplers:
        started = time.perf_counter()
        result = evaluate(checkpoint, data, split, steps=steps, guidance=guidance, max_frames=max_frames,
                          max_identities=max_identities, device="cpu", reference_check=False)
        method, copy = result["self"]["method"], result["self"]["baselines"]["copy_reference"]
        rows.append({"steps": steps, "guidance": guidance, "psnr": method["psnr"], "ssim": method["ssim"],
                     "head_colour": method["head_colour"], "sharpness": method["sharpness"],
                     "copy_psnr": copy["psnr"], "frames": method["frames"],
                     "seconds": time.perf_counter() - started})
        print(f"{steps} steps, guidance {guidance}: PSNR {method['psnr']:.2f}, sharpness {method['sharpness']:.3f}, "
              f"head colour {method['head_colour']:.2f}", flush=True)
    return rows


def markdown(rows: list[dict[str, float]]) -> str:
    lines = ["| steps | guidance | PSNR | gain over copy | SSIM | head colour | sharpness | frames |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['guidance']:g} | {r['psnr']:.2f} | {r['psnr'] - r['copy_psnr']:+.2f} | "
              f"{r['ssim']:.3f} | {r['head_colour']:.2f} | {r['sharpness']:.3f} | {r['frames']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("data", help="dataset folder (a training dataset with --split heldout: validation)")
    parser.add_argument("--split", default="heldout", choices=("all", "train", "heldout"))
    parser.add_argument("--samplers", nargs="+", default=["1:1", "4:1", "12:1", "4:2", "12:2"],
                        help="steps:guidance pairs (default 1:1 4:1 12:1 4:2 12:2)")
    parser.add_argument("--max-identities", type=int, default=8)
    parser.add_argument("--max-frames", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = study(args.checkpoint, args.data, args.split, [parse_sampler(s) for s in args.samplers],
                 args.max_identities, args.max_frames)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
