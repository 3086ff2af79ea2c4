#!/usr/bin/env bash
# `make results`: regenerate docs/RESULTS.md. Needs the demo dataset (configs/demo/train.sh makes
# it), trains the ablation checkpoints (resumable; about 35 min on 2 CPU cores) and evaluates.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -f work/demo/data/dataset.json ] || $PY -m backend dataset procedural --out work/demo/data --identities 60 \
    --views-per-identity 20 --sequences-per-identity 2 --frames-per-sequence 14 --resolution 128 --seed 0 --workers 2
[ -f work/ablation/data/dataset.json ] || $PY -m backend dataset procedural --out work/ablation/data --identities 60 \
    --views-per-identity 20 --sequences-per-identity 2 --frames-per-sequence 14 --resolution 64 --seed 0 --workers 2
for config in vae gaussian geometry no_label no_multiview; do
    $PY -m backend train --config configs/ablations/$config.json
done
$PY -m backend results --plan configs/results/plan.json
