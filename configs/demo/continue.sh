#!/usr/bin/env bash
# Continues the demo checkpoint: resumed warm-up + cosine cycles of stage 1, the first from the
# shipped backend/checkpoints/demo's EMA weights (continue-1.json), each next from the previous
# cycle's EMA weights (continue-2.json, ...), on the demo dataset recipe with one light per
# identity (--lighting identity: the reference shows the lighting its frames are lit with; see
# docs/TRAINING.md, "The demo checkpoint"). State lives in $FLAMEDIFF_DEMO_WORK (default: the flamediff
# cache folder), outside the checkout; run it again to resume exactly from the newest checkpoint
# (a cycle whose model/ is written is skipped).
# One torch thread: on a 2-core machine shared with other work, two OpenMP threads wait on each
# other (measured: a small op 100x slower); the compiled splatter follows torch's thread count.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export FLAMEDIFF_DEMO_WORK=${FLAMEDIFF_DEMO_WORK:-${FLAMEDIFF_CACHE:-$HOME/.cache/flamediff}/train/demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$FLAMEDIFF_DEMO_WORK/logs"
[ -f "$FLAMEDIFF_DEMO_WORK/data-lit/dataset.json" ] || $PY -m flamediff dataset procedural \
    --out "$FLAMEDIFF_DEMO_WORK/data-lit" --identities 160 --views-per-identity 12 --sequences-per-identity 2 \
    --frames-per-sequence 14 --resolution 128 --seed 0 --workers 2 --lighting identity
for cycle in continue-1 continue-2; do
    [ -f "$FLAMEDIFF_DEMO_WORK/$cycle/model/model.safetensors" ] && continue
    /usr/bin/time -f "$cycle: %e s wall, %U s user CPU" $PY -m flamediff train --config "configs/demo/$cycle.json" \
        2>&1 | tee -a "$FLAMEDIFF_DEMO_WORK/logs/$cycle.log"
done
