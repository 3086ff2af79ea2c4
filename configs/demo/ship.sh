#!/usr/bin/env bash
# ship.sh MODEL DATA STEPS GUIDANCE RUN...: makes MODEL (a `flamediff train` model folder) the shipped
# backend/checkpoints/demo. Its training/ folder keeps the lineage's records (the earlier runs' loss
# curves and the VAE's reconstruction report) and gains the curve of each RUN whose state is in
# $FLAMEDIFF_DEMO_WORK/RUN/model/. config.json's _extra.lineage lists every RUN's recipe
# (configs/demo/RUN.json), oldest first: _extra.trained_steps counts only the last run's steps.
# STEPS and GUIDANCE become the checkpoint's inference defaults (chosen on validation identities,
# never on test data: see docs/TRAINING.md); the example reference beside it is the first clean
# frame of DATA's first held-out identity.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
model=$1 data=$2 steps=$3 guidance=$4
shift 4
out=backend/checkpoints/demo
mkdir -p "$out/training"
find "$out" -mindepth 1 -maxdepth 1 ! -name training -exec rm -rf {} +
cp -r "$model/." "$out/"
rm -f "$out/loss.png"
for run in "$@"; do
    [ -f "$FLAMEDIFF_DEMO_WORK/$run/model/loss.png" ] || continue
    cp "$FLAMEDIFF_DEMO_WORK/$run/model/loss.png" "$out/training/$run-loss.png"
    [ -f "$FLAMEDIFF_DEMO_WORK/$run/model/reconstruction.json" ] && \
        cp "$FLAMEDIFF_DEMO_WORK/$run/model/reconstruction.json" "$out/training/$run-reconstruction.json"
done
DEFAULT_STEPS=$steps DEFAULT_GUIDANCE=$guidance DATA=$data $PY - "$@" <<'PY'
import json
import os
import sys

from PIL import Image

from flamediff.data.dataset import read_dataset
from flamediff.data.splits import read_splits
from flamediff.evaluation.studies import reference_row

path = "backend/checkpoints/demo/config.json"
with open(path, encoding="utf-8") as handle:
    config = json.load(handle)
config.update(default_steps=int(os.environ["DEFAULT_STEPS"]), default_guidance=float(os.environ["DEFAULT_GUIDANCE"]))
lineage = []
for run in sys.argv[1:]:
    with open(f"configs/demo/{run}.json", encoding="utf-8") as handle:
        recipe = json.load(handle)
    keys = ("stage", "steps", "batch_size", "learning_rate", "warmup_steps", "ema_decay", "seed", "dataset", "init_from")
    lineage.append({"run": run, **{key: recipe[key] for key in keys if key in recipe}})
config["_extra"]["lineage"] = lineage
with open(path, "w", encoding="utf-8") as handle:
    json.dump(config, handle, indent=2)
index = read_dataset(os.environ["DATA"])
row = reference_row(index, read_splits(os.environ["DATA"])["heldout"][0])
Image.fromarray(index.load_frame(row)).save("backend/checkpoints/demo/reference.png")
PY
du -sh "$out"
