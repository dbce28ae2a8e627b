#!/usr/bin/env bash
# GPU readiness benchmark, at most 5 minutes on one GPU (see bench/gpu_bench.py for what is measured and how):
#   1. train-step MFU of a ~0.94B LLaMA with CrossBatch in bf16 (FLOPs/step = 6*N_matmul*T + 12*L*d*W*T),
#   2. 64K-token ingest with dense memory,
#   3. FAISS flat search at 1M and 16M keys on the GPU (faiss-gpu) and through the CPU path.
#
#   bash bench/gpu.sh [OUT_DIR]            # writes OUT_DIR/gpu.json (default bench/out/) and prints it
#
# Needs a CUDA GPU with jax[cuda12] and faiss-gpu-cu12 (pip install -e ".[gpu]"); without a GPU it stops at once
# with one "error:" line and status 3. Environment: PYTHON (default: .venv/bin/python if present, else python3),
# GPU_BENCH_TIMEOUT (seconds, default 300), GPU_BENCH_ARGS (extra arguments for gpu_bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
OUT="${1:-bench/out}"
LIMIT="${GPU_BENCH_TIMEOUT:-300}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi missing or lists none): run bench/gpu.sh on a GPU machine" >&2
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
backend="$("$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none)"
if [ "$backend" != "gpu" ]; then
  echo "error: JAX runs on '$backend', not the GPU: pip install -e '.[gpu]' (jax[cuda12], faiss-gpu-cu12)" >&2
  exit 3
fi
mkdir -p "$OUT"
started=$(date +%s)
# shellcheck disable=SC2086
timeout --signal=INT --kill-after=20 "$LIMIT" \
  "$PYTHON" bench/gpu_bench.py --require-gpu --json "$OUT/gpu.json" ${GPU_BENCH_ARGS:-}
echo "bench/gpu.sh: done in $(($(date +%s) - started)) s; results in $OUT/gpu.json" >&2
