"""A/B fine-tunes from one checkpoint (same seed, steps and schedule; only the training data or
trainer overrides differ), each scored on the validation identities of one or more datasets.

    python benchmarks/ab_colour_finetune.py --arm frame=DATA_A --arm identity=DATA_B \\
        --val frame=DATA_A --val identity=DATA_B [--steps 60] [--out work/ab] [--identities 16]

``--arm NAME=DATASET[:KEY=VALUE,...]`` trains ``NAME`` from ``--checkpoint`` on DATASET's training
split (the keys are TrainConfig fields, e.g. ``reference_dropout=0.05``); ``--val NAME=DATASET``
scores every arm and the untouched checkpoint on DATASET's held-out identities with ``flamediff
eval``'s metrics (``--samplers``: steps:guidance pairs, default the checkpoint's own; the same
frames for every model). A trained arm is reused when its model folder exists. Writes ``ab.json`` and ``ab.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from flamediff.evaluation.evaluate import evaluate
from flamediff.training.train import TrainConfig, train

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "backend", "checkpoints", "demo")
METRICS = ("psnr", "head_colour", "background_colour", "sharpness")


def parse_arm(text: str) -> tuple[str, str, dict[str, Any]]:
    name, _, rest = text.partition("=")
    dataset, _, options = rest.partition(":")
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in options.split(",") if item)}
    return name, dataset, overrides


def train_arm(name: str, dataset: str, overrides: dict[str, Any], args: argparse.Namespace) -> tuple[str, float]:
    """The arm's model folder and the CPU seconds its training took (recorded beside it)."""
    output = os.path.join(args.out, name)
    model, timing = os.path.join(output, "model"), os.path.join(output, "cpu_seconds.txt")
    if os.path.isfile(os.path.join(model, "model.safetensors")) and os.path.isfile(timing):
        with open(timing, encoding="utf-8") as handle:
            return model, float(handle.read())
    config = TrainConfig.from_dict({
        "dataset": dataset, "output_dir": output, "init_from": os.path.abspath(args.checkpoint), "stage": "1",
        "steps": args.steps, "batch_size": 8, "learning_rate": args.learning_rate, "lr_schedule": "constant",
        "warmup_steps": 10, "ema_decay": None, "seed": 0, "checkpoint_every": 10 ** 9, "log_every": 10,
        **overrides})
    started = time.process_time()
    train(config)
    seconds = time.process_time() - started
    with open(timing, "w", encoding="utf-8") as handle:
        handle.write(f"{seconds:.1f}")
    return model, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", default=[])
    parser.add_argument("--val", action="append", required=True)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--samplers", default="0:0",
                        help="steps:guidance pairs to score, comma-separated (0:0 = the checkpoint's default)")
    parser.add_argument("--skip-checkpoint", action="store_true", help="score the arms only, not the checkpoint")
    parser.add_argument("--out", default="work/ab")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    models: dict[str, str] = {} if args.skip_checkpoint else {"checkpoint": args.checkpoint}
    report: dict[str, Any] = {"steps": args.steps, "learning_rate": args.learning_rate, "arms": {}, "scores": {}}
    for text in args.arm:
        name, dataset, overrides = parse_arm(text)
        models[name], cpu = train_arm(name, dataset, overrides, args)
        report["arms"][name] = {"dataset": os.path.abspath(dataset), "overrides": overrides,
                                "cpu_seconds": round(cpu, 1)}
    for text in args.val:
        val_name, dataset = text.split("=", 1)
        for name, model in models.items():
            for sampler in args.samplers.split(","):
                steps, guidance = (float(x) for x in sampler.split(":"))
                result = evaluate(model, dataset, split="heldout", steps=int(steps), guidance=guidance,
                                  max_frames=args.frames, max_identities=args.identities, reference_check=False)
                scores = result["self"]["method"]
                row = name if sampler == "0:0" else f"{name} {int(steps)} steps g{guidance:g}"
                report["scores"].setdefault(val_name, {})[row] = {k: scores.get(k) for k in METRICS}
                print(val_name, row, report["scores"][val_name][row], flush=True)
    with open(os.path.join(args.out, "ab.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    plot(report["scores"], os.path.join(args.out, "ab.png"))


def plot(scores: dict[str, dict[str, dict[str, float]]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(4.4 * len(scores), 3.6), squeeze=False)
    for axis, (val_name, rows) in zip(axes[0], scores.items()):
        names = list(rows)
        x = np.arange(len(names))
        axis.bar(x - 0.2, [rows[n]["head_colour"] for n in names], 0.4, color="tab:orange", label="head")
        axis.bar(x + 0.2, [rows[n]["background_colour"] for n in names], 0.4, color="tab:blue", label="background")
        axis.set_xticks(x, names, fontsize=8)
        axis.set_title(f"validation identities of '{val_name}'", fontsize=9)
        axis.set_ylabel("colour error (levels)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
