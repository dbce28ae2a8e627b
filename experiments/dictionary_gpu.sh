#!/usr/bin/env bash
# Dictionary lookup on one GPU: the three models of experiments/dictionary_lookup.py plus FoT variants, trained in
# parallel processes on one device within a wall-clock budget, exported to models/, then a *validation* eval on the
# GPU (exact top-k on the device, eval seed 2000: not the reported seed 1000) to pick a variant. The reported
# accuracy-vs-memory table (up to 16M tokens, FAISS flat, k = 32) is made afterwards on CPU:
#
#   bash experiments/dictionary_gpu.sh [OUT_DIR]      # sized for ~8 min on one H200 (never run on a GPU yet); OUT_DIR: out/gpu
#   python experiments/dictionary_lookup.py --skip-train --sizes ...   # the reported eval (see README "Results")
#
# Processes (each one `python experiments/dictionary_lookup.py ...`, logs in OUT_DIR/logs/):
#   phase 1: FoT curriculum stages (shared with d = 1) | baseline, all stages + its own | FoT-wide, all stages + own
#   phase 2: FoT (r = 63, 128 rows) | d = 1 (r = 1) | FoT-r255 (r = 255, 512 rows), each from FoT's stages
# A final stage still running at the deadline gets SIGINT (the trainer saves a checkpoint at the current step and
# exits 130); its model is then exported from that checkpoint. Environment: PYTHON (python3), BUDGET (seconds from
# the start until the last training is stopped, default 400), FINAL_STEPS (8000), R255_STEPS (2500), SMOKE=1 (toy
# sizes, to check the script on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${1:-out/gpu}"
BUDGET="${BUDGET:-400}"
FINAL_STEPS="${FINAL_STEPS:-8000}"
R255_STEPS="${R255_STEPS:-2500}"
mkdir -p "$OUT/logs"
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}"
started=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - started))); }
EXP=(experiments/dictionary_lookup.py --no-eval --continue-steps=0)  # its long final stages replace the continuation
SIZES="(1024,16384,262144,1048576,4194304)"
if [ "${SMOKE:-0}" = 1 ]; then EXP+=(--smoke); SIZES="(64,256)"; fi
WIDE=(--tag=_wide --config.model.hidden_size=256 --config.model.intermediate_size=512)

"$PYTHON" -c 'import jax; print("jax", jax.__version__, jax.devices())' || exit 3

# phase 1
"$PYTHON" "${EXP[@]}" --only=dict_lookup_fot --stages-only >"$OUT/logs/fot_stages.log" 2>&1 &
stages=$!
timeout -s INT -k 30 "$(left)" "$PYTHON" "${EXP[@]}" --only=dict_lookup_baseline \
  --final.train.steps="$FINAL_STEPS" >"$OUT/logs/baseline.log" 2>&1 &
timeout -s INT -k 30 "$(left)" "$PYTHON" "${EXP[@]}" --only=dict_lookup_fot "${WIDE[@]}" \
  --final.train.steps="$FINAL_STEPS" >"$OUT/logs/fot_wide.log" 2>&1 &
wait "$stages" || { echo "FoT stages failed:"; tail -20 "$OUT/logs/fot_stages.log"; }
echo "phase 1 (FoT stages) done at $(($(date +%s) - started)) s"

# phase 2: from FoT's stages
timeout -s INT -k 30 "$(left)" "$PYTHON" "${EXP[@]}" --only=dict_lookup_fot \
  --final.train.steps="$FINAL_STEPS" >"$OUT/logs/fot.log" 2>&1 &
timeout -s INT -k 30 "$(left)" "$PYTHON" "${EXP[@]}" --only=dict_lookup_d1 \
  --final.train.steps="$FINAL_STEPS" >"$OUT/logs/d1.log" 2>&1 &
timeout -s INT -k 30 "$(left)" "$PYTHON" "${EXP[@]}" --only=dict_lookup_fot --tag=_r255 --stages-tag= \
  --final.train.steps="$R255_STEPS" --final.data.batch_size=512 --final.fot.cross_batch_range=255 \
  >"$OUT/logs/fot_r255.log" 2>&1 &
wait
echo "training done at $(($(date +%s) - started)) s"

# export whatever was interrupted (the experiment exports after a finished training only)
for spec in "dict_lookup_fot:" "dict_lookup_d1:" "dict_lookup_baseline:" "dict_lookup_fot:_r255" "dict_lookup_fot:_wide"; do
  name=${spec%%:*} tag=${spec#*:}
  if [ ! -f "models/$name$tag/config.json" ]; then
    extra=()
    [ "$tag" = "_wide" ] && extra=("${WIDE[@]:1}")
    "$PYTHON" "${EXP[@]}" --skip-train --only="$name" --tag="$tag" "${extra[@]}" >>"$OUT/logs/export.log" 2>&1 \
      || echo "export of $name$tag failed (see logs/export.log)"
  fi
done

# validation eval on the GPU (exact top-k on the device up to 4M tokens; seed 2000, not the reported 1000)
for m in models/dict_lookup_*; do
  [ -f "$m/config.json" ] || continue
  n=$(basename "$m")
  timeout -s INT -k 10 100 "$PYTHON" eval.py --config configs/eval_dictionary.py --config.checkpoints="('$m',)" \
    --config.out_dir="$OUT/val/$n" --config.dictionary.seed=2000 --config.dictionary.trials=8 \
    --config.dictionary.sizes="$SIZES" --config.dictionary.device_up_to=4194304 \
    --config.progress=False --config.overwrite=True >"$OUT/logs/val_$n.log" 2>&1 &
done
wait
echo "validation done at $(($(date +%s) - started)) s"
for f in "$OUT"/val/*/results.md; do echo "== $f"; cat "$f"; done
for f in "$OUT"/logs/*.log; do echo "== $f"; grep -E "^done:|trained in|error|Error" "$f" | tail -4; done
