#!/usr/bin/env bash
# Reproduces backend/checkpoints/demo (see docs/TRAINING.md, "The demo checkpoint").
# The run's state (dataset, checkpoints, logs) lives outside the checkout, in
# $FLAMEDIFF_DEMO_WORK (default: the flamediff cache folder), so a new clone does not wipe it.
# Every stage resumes exactly from its newest checkpoint when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export FLAMEDIFF_DEMO_WORK=${FLAMEDIFF_DEMO_WORK:-${FLAMEDIFF_CACHE:-$HOME/.cache/flamediff}/train/demo}
mkdir -p "$FLAMEDIFF_DEMO_WORK/logs"
# 160 identities (32 held out by splits.json, never sampled by training), seed 0, a light per frame
[ -f "$FLAMEDIFF_DEMO_WORK/data/dataset.json" ] || $PY -m flamediff dataset procedural --out "$FLAMEDIFF_DEMO_WORK/data" \
    --identities 160 --views-per-identity 12 --sequences-per-identity 2 --frames-per-sequence 14 --resolution 128 \
    --seed 0 --workers 2 --lighting frame
for stage in vae stage1 stage2; do
    [ -f "$FLAMEDIFF_DEMO_WORK/$stage/model/model.safetensors" ] && continue
    /usr/bin/time -f "$stage: %e s wall, %U s user CPU" $PY -m flamediff train --config configs/demo/$stage.json \
        2>&1 | tee -a "$FLAMEDIFF_DEMO_WORK/logs/$stage.log"
done
# Inference defaults chosen on validation identities (the training dataset's held-out split, not
# the fresh-seed test set): 1 step at guidance 1 scored best of 1:1, 1:2, 2:1.5, 4:2, 12:2.
configs/demo/ship.sh "$FLAMEDIFF_DEMO_WORK/stage2/model" "$FLAMEDIFF_DEMO_WORK/data" 1 1.0 vae stage1 stage2
