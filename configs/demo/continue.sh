#!/usr/bin/env bash
# Continues the demo checkpoint (see docs/TRAINING.md, "The demo checkpoint"): resumed warm-up +
# cosine cycles of stage 1, the first from the shipped backend/checkpoints/demo's EMA weights
# (continue-1.json), each next from the previous cycle's EMA weights (continue-2.json, ...), on the
# demo dataset recipe with one light per identity (--lighting identity: the reference shows the
# lighting its frames are lit with); then a third cycle that adds the reference correspondence
# control (correspondence.json: the reference's colour at each surface point, zero-initialised
# pose-guider inputs), the temporal layers again (stage2-correspondence.json), and ship.sh makes the
# result the shipped checkpoint (the one before it ended with stage2-lit.json after continue-2). The shipped checkpoint is this script's output
# from the one of revision 5276011 (configs/demo/train.sh's); run from a later one, it continues
# that. State lives in $FLAMEDIFF_DEMO_WORK (default: the flamediff cache folder), outside the
# checkout; run it again to resume exactly from the newest checkpoint (a run whose model/ is
# written is skipped).
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
for run in continue-1 continue-2 correspondence stage2-correspondence; do
    [ -f "$FLAMEDIFF_DEMO_WORK/$run/model/model.safetensors" ] && continue
    /usr/bin/time -f "$run: %e s wall, %U s user CPU" $PY -m flamediff train --config "configs/demo/$run.json" \
        2>&1 | tee -a "$FLAMEDIFF_DEMO_WORK/logs/$run.log"
done
# Inference defaults chosen on validation identities (benchmarks/sampler_study.py on the held-out
# split of data-lit): 1 step at guidance 1 scored best of 1:1, 4:1, 12:1, 4:2 and 12:2.
configs/demo/ship.sh "$FLAMEDIFF_DEMO_WORK/stage2-correspondence/model" "$FLAMEDIFF_DEMO_WORK/data-lit" 1 1.0 \
    vae stage1 stage2 continue-1 continue-2 correspondence stage2-correspondence
