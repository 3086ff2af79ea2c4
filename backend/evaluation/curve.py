"""Learning curve of a training run: each kept checkpoint's (EMA) weights evaluated the same way.

``python -m flamediff.evaluation.curve RUN_DIR DATA_DIR --out curve.json`` rebuilds the run's model
from its ``train_config.json`` exactly as training did, loads every ``checkpoints/step-*`` (the
EMA weights when the run keeps an EMA), and scores self-reenactment on ``DATA_DIR`` against
copying the reference: where a run is heading when its budget ends before its target.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from flamediff.models.flamediff_model import FlameDiffModel
    from flamediff.training.train import Trainer


def checkpoint_model(trainer: Trainer, checkpoint: str) -> FlameDiffModel:
    """The trainer's model with ``checkpoint``'s weights (its EMA when the run keeps one)."""
    trainer.accelerator.load_state(checkpoint)
    if trainer.ema is not None:
        trainer.ema.copy_to(trainer.trained_parameters)
    trainer.model.eval()
    return trainer.model


def learning_curve(run_dir: str, data: str, max_identities: int = 6, max_frames: int = 4, every: int = 1,
                   steps: int = 0, guidance: float = 0.0, split: str = "all",
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per kept checkpoint: step, method and copy-reference PSNR / SSIM / L1, the gain and
    the head's mean-colour error (levels)."""
    from flamediff.evaluation.evaluate import evaluate
    from flamediff.training.train import TrainConfig, Trainer

    with open(os.path.join(run_dir, "train_config.json"), encoding="utf-8") as handle:
        trainer = Trainer(TrainConfig.from_dict(json.load(handle)), log=lambda message: None)
    rows = []
    for checkpoint in sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step-???????")))[::every]:
        model = checkpoint_model(trainer, checkpoint)
        result = evaluate(model, data, split, steps=steps, guidance=guidance, max_frames=max_frames,
                          max_identities=max_identities,
                          flame_asset=trainer.asset, device="cpu", reference_check=False)
        method, copy = result["self"]["method"], result["self"]["baselines"]["copy_reference"]
        row = {"step": int(checkpoint[-7:]), "psnr": method["psnr"], "ssim": method["ssim"], "l1": method["l1"],
               "copy_psnr": copy["psnr"], "gain": method["psnr"] - copy["psnr"], "head_colour": method["head_colour"],
               "frames": method["frames"]}
        log(f"step {row['step']}: PSNR {row['psnr']:.2f} dB (copy {row['copy_psnr']:.2f}, gain {row['gain']:+.2f}), "
            f"SSIM {row['ssim']:.3f}, head colour {row['head_colour']:.2f}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flamediff.evaluation.curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run's output_dir (holds train_config.json and checkpoints/)")
    parser.add_argument("data", help="dataset folder to evaluate on (identities no training saw: a fresh-seed set, "
                        "or the run's own dataset with --split heldout)")
    parser.add_argument("--split", choices=("all", "train", "heldout"), default="all",
                        help="identities of DATA to score (train/heldout need its splits.json)")
    parser.add_argument("--out", required=True, help="JSON file for the curve")
    parser.add_argument("--max-identities", type=int, default=6)
    parser.add_argument("--max-frames", type=int, default=4)
    parser.add_argument("--every", type=int, default=1, help="evaluate every N-th kept checkpoint")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (0: the run's model default)")
    parser.add_argument("--guidance", type=float, default=0.0, help="guidance scale (0: the run's model default)")
    args = parser.parse_args(argv)
    rows = learning_curve(args.run_dir, args.data, args.max_identities, args.max_frames, args.every,
                          args.steps, args.guidance, args.split)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
