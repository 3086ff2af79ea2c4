#!/usr/bin/env bash
# Reproduces backend/checkpoints/demo (see the README's "The demo checkpoint").
# Every stage resumes from its newest checkpoint when run again. The shipped checkpoint was
# trained with OMP_NUM_THREADS=1 (one torch thread) on a 2-core CPU machine; see the README.
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
# the example reference shipped beside it: the first clean frame of the first held-out identity
$PY - <<'PY'
from PIL import Image
from backend.data.dataset import read_dataset
from backend.data.procedural import read_splits
from backend.evaluation.studies import reference_row
index = read_dataset("work/demo/data")
row = reference_row(index, read_splits("work/demo/data")["heldout"][0])
Image.fromarray(index.load_frame(row)).save("backend/checkpoints/demo/reference.png")
PY
