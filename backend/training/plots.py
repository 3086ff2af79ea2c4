"""The loss curve drawn beside a trained model (``loss.png``), from the run's loss log."""

from __future__ import annotations

import json
import os

import numpy as np


def plot_loss_curve(log_path: str, out_path: str, title: str) -> None:
    """Loss (raw and smoothed, log scale) and learning rate against step, as a PNG."""
    if not os.path.isfile(log_path):
        return
    with open(log_path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 25)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, loss, color="0.75", linewidth=0.8, label="loss")
    axis.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window}")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    rate = axis.twinx()
    rate.plot(steps, [r["lr"] for r in rows], color="C1", linewidth=0.8, label="learning rate")
    rate.set_ylabel("learning rate", color="C1")
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
