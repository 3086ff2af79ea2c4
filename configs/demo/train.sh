#!/usr/bin/env bash
# Reproduces backend/checkpoints/demo (see the README's "The demo checkpoint").
# Every stage resumes from its newest checkpoint when run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -f work/demo/data/dataset.json ] || $PY -m backend dataset procedural --out work/demo/data --identities 60 \
    --views-per-identity 20 --sequences-per-identity 2 --frames-per-sequence 14 --resolution 128 --seed 0 --workers 2
for stage in vae stage1 stage2; do
    /usr/bin/time -f "$stage: %e s wall" $PY -m backend train --config configs/demo/$stage.json
done
rm -rf backend/checkpoints/demo
cp -r work/demo/stage2/model backend/checkpoints/demo
