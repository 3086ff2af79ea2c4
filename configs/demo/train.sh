#!/usr/bin/env bash
# Reproduces backend/checkpoints/demo (see the README's "The demo checkpoint").
# The run's state (dataset, checkpoints, logs) lives outside the checkout, in
# $FLAMEDIFF_DEMO_WORK (default: the flamediff cache folder), so a new clone does not wipe it.
# Every stage resumes exactly from its newest checkpoint when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export FLAMEDIFF_DEMO_WORK=${FLAMEDIFF_DEMO_WORK:-${FLAMEDIFF_CACHE:-$HOME/.cache/flamediff}/train/demo}
mkdir -p "$FLAMEDIFF_DEMO_WORK/logs"
# 160 identities (32 held out by splits.json, never sampled by training), seed 0
[ -f "$FLAMEDIFF_DEMO_WORK/data/dataset.json" ] || $PY -m flamediff dataset procedural --out "$FLAMEDIFF_DEMO_WORK/data" \
    --identities 160 --views-per-identity 12 --sequences-per-identity 2 --frames-per-sequence 14 --resolution 128 \
    --seed 0 --workers 2
for stage in vae stage1 stage2; do
    [ -f "$FLAMEDIFF_DEMO_WORK/$stage/model/model.safetensors" ] && continue
    /usr/bin/time -f "$stage: %e s wall, %U s user CPU" $PY -m flamediff train --config configs/demo/$stage.json \
        2>&1 | tee -a "$FLAMEDIFF_DEMO_WORK/logs/$stage.log"
done
rm -rf backend/checkpoints/demo
cp -r "$FLAMEDIFF_DEMO_WORK/stage2/model" backend/checkpoints/demo
mkdir -p backend/checkpoints/demo/training
for stage in vae stage1 stage2; do
    cp "$FLAMEDIFF_DEMO_WORK/$stage/model/loss.png" "backend/checkpoints/demo/training/$stage-loss.png"
done
cp "$FLAMEDIFF_DEMO_WORK/vae/model/reconstruction.json" backend/checkpoints/demo/training/vae-reconstruction.json
rm backend/checkpoints/demo/loss.png
# Inference defaults chosen on validation identities (the training dataset's held-out split, not
# the fresh-seed test set): 1 step at guidance 1 scored best of 1:1, 1:2, 2:1.5, 4:2, 12:2 (README).
$PY - <<'PY'
import json
path = "backend/checkpoints/demo/config.json"
with open(path, encoding="utf-8") as handle:
    config = json.load(handle)
config.update(default_steps=1, default_guidance=1.0)
with open(path, "w", encoding="utf-8") as handle:
    json.dump(config, handle, indent=2)
PY
# the example reference shipped beside it: the first clean frame of the first held-out identity
$PY - <<'PY'
import os
from PIL import Image
from flamediff.data.dataset import read_dataset
from flamediff.data.splits import read_splits
from flamediff.evaluation.studies import reference_row
data = os.path.join(os.environ["FLAMEDIFF_DEMO_WORK"], "data")
index = read_dataset(data)
row = reference_row(index, read_splits(data)["heldout"][0])
Image.fromarray(index.load_frame(row)).save("backend/checkpoints/demo/reference.png")
PY
