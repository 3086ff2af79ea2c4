#!/usr/bin/env bash
# The GPU figures of docs/BENCHMARKS.md in one command, on a machine with an NVIDIA GPU:
#
#     benchmarks/gpu.sh [OUT_DIR]        # default out/gpu-bench; PYTHON=... picks the interpreter
#
# Writes into OUT_DIR: gpu.txt (nvidia-smi), sd15_flops.json (FLOPs per U-Net forward),
# sd15_bf16_temporal.json (the issue's figure: 512 px, 25 steps, guidance on, 16 frames with
# temporal layers, bf16 + channels-last U-Nets), sd15_preview.json (preview first-frame latency),
# and the comparisons sd15_fp32_temporal.json (no precision lever) and
# sd15_bf16_temporal_compiled.json (torch.compile). The first ones are required; a failing
# comparison is reported and skipped. Smoke test without a GPU:
#     PRESET=tiny DEVICE=cpu FRAMES=2 STEPS=1 benchmarks/gpu.sh /tmp/gpu-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu-bench}"
PRESET="${PRESET:-sd15}" DEVICE="${DEVICE:-cuda}" FRAMES="${FRAMES:-16}" STEPS="${STEPS:-25}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU: run flamediff doctor')"
    nvidia-smi > "$OUT/gpu.txt" 2>&1 || true
fi
RUN=(--preset "$PRESET" --frames "$FRAMES" --steps "$STEPS" --device "$DEVICE" --temporal)

"$PYTHON" benchmarks/bench_pipeline.py --preset "$PRESET" --flops-only --temporal --json "$OUT/${PRESET}_flops.json"
"$PYTHON" benchmarks/bench_pipeline.py "${RUN[@]}" --dtype bf16 --json "$OUT/${PRESET}_bf16_temporal.json"
"$PYTHON" benchmarks/bench_preview.py --preset "$PRESET" --frames "$FRAMES" --device "$DEVICE" --dtype bf16 \
    --json "$OUT/${PRESET}_preview.json"
"$PYTHON" benchmarks/bench_pipeline.py "${RUN[@]}" --dtype fp32 --json "$OUT/${PRESET}_fp32_temporal.json" \
    || echo "gpu.sh: the fp32 comparison failed (see above); the bf16 figures stand" >&2
"$PYTHON" benchmarks/bench_pipeline.py "${RUN[@]}" --dtype bf16 --compile --json "$OUT/${PRESET}_bf16_temporal_compiled.json" \
    || echo "gpu.sh: the torch.compile comparison failed (see above); the bf16 figures stand" >&2
echo "gpu.sh: results in $OUT"
