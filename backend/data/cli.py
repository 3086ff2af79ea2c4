"""``flamediff dataset ...``: the dataset commands (``procedural``; importers add theirs here)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from flamediff.data.importing import add_import_command
from flamediff.data.procedural import DESCRIPTION, generate_procedural_dataset
from flamediff.data.procedural.scene import DEFAULT_LIGHTING, LIGHTINGS
from flamediff.data.splits import read_splits


def cmd_procedural(args: argparse.Namespace) -> int:
    """``flamediff dataset procedural``: render and write the dataset, printing progress every 5 s."""
    from flamediff.assets import load_asset

    asset = load_asset(args.flame_asset)
    start = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 5.0 or done == total:
            last[0] = now
            elapsed = now - start
            print(f"  {done}/{total} frames, {elapsed:.0f} s, {elapsed / max(done, 1) * 1000:.0f} ms/frame", flush=True)

    index = generate_procedural_dataset(args.out, args.identities, args.views_per_identity, args.sequences_per_identity,
                                        frames_per_sequence=args.frames_per_sequence, resolution=args.resolution,
                                        seed=args.seed, heldout_fraction=args.heldout_fraction, asset=asset,
                                        progress=progress, threads=args.threads or None, workers=args.workers,
                                        only_split=args.only_split, lighting=args.lighting)
    splits = read_splits(args.out)
    elapsed = time.perf_counter() - start
    print(f"wrote {len(index)} frames ({int((index.label == 1).sum())} synthetic, {int((index.label == 0).sum())} real) "
          f"of {len(np.unique(index.identity))} identities to {args.out} in {elapsed:.1f} s; held-out identities: {splits['heldout']}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``dataset procedural`` to an argparse subparsers object; returns the ``dataset`` parser."""
    dataset = subparsers.add_parser("dataset", help="make training datasets")
    commands = dataset.add_subparsers(dest="dataset_command")
    procedural = commands.add_parser(
        "procedural", help="render the procedural head dataset (multi-view synthetic + real clips)",
        description=DESCRIPTION)
    procedural.add_argument("--out", required=True, metavar="DIR", help="output folder")
    procedural.add_argument("--identities", type=int, default=100, help="number of identities (default 100)")
    procedural.add_argument("--views-per-identity", type=int, default=20,
                            help="synthetic multi-view frames per identity (default 20)")
    procedural.add_argument("--sequences-per-identity", type=int, default=2,
                            help="real continuous clips per identity (default 2)")
    procedural.add_argument("--frames-per-sequence", type=int, default=14, help="frames per clip (default 14)")
    procedural.add_argument("--resolution", type=int, default=128, help="square frame size in pixels (default 128)")
    procedural.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    procedural.add_argument("--heldout-fraction", type=float, default=0.2,
                            help="fraction of identities held out of training (default 0.2)")
    procedural.add_argument("--only-split", choices=("train", "heldout"), default=None,
                            help="render only this split's identities (their samples are the same as in the "
                                 "whole dataset): e.g. the held-out set for evaluation")
    procedural.add_argument("--lighting", choices=LIGHTINGS, default=DEFAULT_LIGHTING,
                            help="identity (default): one light per identity, fixed to the head, so the "
                                 "reference shows the lighting its frames are rendered with; frame: a light "
                                 "drawn per synthetic frame and per clip, drifting (the recipe of the first "
                                 "demo checkpoint)")
    procedural.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads while rendering (default 1; 0 = torch's default)")
    procedural.add_argument("--workers", type=int, default=1,
                            help="render identities in this many processes (default 1; try 2 on an idle 2-core machine)")
    procedural.add_argument("--flame-asset", metavar="DIR", default=None,
                            help="FLAME asset folder; default: $FLAMEDIFF_FLAME_ASSET or the procedural head")
    procedural.set_defaults(func=cmd_procedural)
    add_import_command(commands)
    return dataset
