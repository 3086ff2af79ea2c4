"""``flamediff eval``: evaluate a checkpoint on a dataset folder (see evaluate.py)."""

from __future__ import annotations

import argparse
import json
import os

from flamediff.evaluation import REFERENCE_POSES

DESCRIPTION = """\
Self-reenactment (reference = an identity's first clean frame, drive = its other frames) and
cross-reenactment (drive with the next identity's frames, shape swapped to the reference):
PSNR, SSIM, L1 over the head region (self only); LPIPS and CSIM with user-supplied network
files; AED and APD with a small regressor trained on the dataset's renders (--regressor-steps).
Colour (mean-colour error of head and background, 0-255 levels) and sharpness (high-frequency
energy of the output over the ground truth's). Baselines in the same run: copy the reference
image; the ground-truth frame of another identity in the same pose; the ground truth through the
VAE alone (the ceiling). A reference-sensitivity check renders each drive again with another
identity's reference: the outputs' colours must follow it. Prints a table; --json writes every number.
"""


def cmd_eval(args: argparse.Namespace) -> int:
    from flamediff.assets import load_asset
    from flamediff.evaluation.evaluate import default_checkpoint, evaluate, format_table
    from flamediff.evaluation.metrics import train_regressor
    from flamediff.evaluation.selection import EvaluationError

    checkpoint = args.checkpoint or default_checkpoint()
    if checkpoint is None:
        from flamediff.assets import DEMO_CHECKPOINT

        raise EvaluationError(f"no checkpoint was given (--checkpoint DIR) and the shipped one ({DEMO_CHECKPOINT}) "
                              "is missing: restore it (git checkout backend/checkpoints) or reinstall flamediff, "
                              "or pass a checkpoint folder with --checkpoint")
    asset = load_asset(args.flame_asset)
    estimator = None
    if args.regressor_steps > 0:
        import numpy as np

        from flamediff.data.dataset import read_dataset
        from flamediff.data.splits import identities_of_split

        index = read_dataset(args.data)
        rows, which = None, "every identity"
        train_identities = identities_of_split(args.data, "train")
        if train_identities is not None:
            rows = np.nonzero(np.isin(index.identity, train_identities))[0]
            which = "the train identities"
        print(f"training the procedural expression/pose regressor for {args.regressor_steps} steps on {which} ...")
        estimator = train_regressor(index, steps=args.regressor_steps, seed=args.seed, rows=rows)
    result = evaluate(checkpoint, args.data, args.split, steps=args.steps, guidance=args.guidance, seed=args.seed,
                      max_frames=args.max_frames, max_identities=args.max_identities, flame_asset=asset,
                      estimator=estimator, lpips_weights=args.lpips_weights, csim_weights=args.csim_weights,
                      device=None if args.device == "auto" else args.device, head_mask=args.head_mask,
                      reference_check=not args.no_reference_check, reference_poses=args.reference_poses,
                      progress=lambda done, total: print(f"  identity {done}/{total}", flush=True))
    print(format_table(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` to an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint: self/cross-reenactment metrics and baselines",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, metavar="C",
                        help="checkpoint folder (default: the shipped backend/checkpoints/demo)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder (flamediff dataset format)")
    parser.add_argument("--split", default="all", choices=("all", "train", "heldout"),
                        help="identities to evaluate (train/heldout need splits.json; default all)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--steps", type=int, default=0, metavar="N",
                        help="denoising steps (default 0: the checkpoint's own default)")
    parser.add_argument("--guidance", type=float, default=0.0,
                        help="classifier-free guidance scale (default 0: the checkpoint's own default)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--max-frames", type=int, default=8, metavar="N",
                        help="driving frames per identity and direction (default 8)")
    parser.add_argument("--max-identities", type=int, default=None, metavar="N", help="evaluate the first N identities")
    parser.add_argument("--lpips-weights", default=None, metavar="FILE",
                        help="LPIPS-style conv feature extractor state dict (layers.i.weight/bias, optional lins.i.weight)")
    parser.add_argument("--csim-weights", default=None, metavar="FILE",
                        help="identity embedding network: TorchScript file or conv state dict (+ fc.weight)")
    parser.add_argument("--regressor-steps", type=int, default=0, metavar="N",
                        help="train the procedural expression/pose regressor N steps on DIR for AED/APD (0: off)")
    parser.add_argument("--head-mask", default="auto", choices=("auto", "coverage", "background"),
                        help="head region: FLAME mesh coverage (auto: when the dataset's FLAME asset is the loaded "
                             "one) or pixels differing from the corner-estimated background")
    parser.add_argument("--no-reference-check", action="store_true",
                        help="skip the reference-sensitivity check (each drive rendered again with another "
                             "identity's reference, to see whether the output's colours follow it)")
    parser.add_argument("--reference-poses", default="annotated", choices=REFERENCE_POSES,
                        help="what a checkpoint with the reference correspondence reads of each reference frame: "
                             "the dataset's annotated pose and camera, the tracker's fit of the frame (as a server "
                             "job tracks a photo; the tracking extra), or none")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--flame-asset", metavar="DIR", default=None,
                        help="FLAME asset folder; default: $FLAMEDIFF_FLAME_ASSET or the procedural head")
    parser.set_defaults(func=cmd_eval)
    return parser
