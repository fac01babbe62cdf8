#!/usr/bin/env bash
# The one command a session lent a device runs (issue 19 §2), from the repository root:
#
#   run(command="bash benchmarks/gpu_run.sh", timeout_s=450)
#
# Installs alsx (falls back to src/ on PYTHONPATH when the bare image cannot build it), runs
# benchmarks/gpu.py with a budget that keeps the whole script under ~7 minutes, and leaves
# gpu_results.{json,md} plus the logs in $OUT (the device tool copies $OUT back).
# BUDGET_S (default 400) is the whole script's budget in seconds, install included.
set -u
OUT="${OUT:-/tmp/alsx_gpu_out}"
mkdir -p "$OUT"
start=$(date +%s)
PY="$(command -v python3 || command -v python)"
{
  date -u
  "$PY" -c "import sys, jax; print(sys.version); print('jax', jax.__version__); print(jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
if "$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1; then
  echo "installed with pip" >> "$OUT/install.log"
else
  echo "pip install failed (bare image): running from src/ on PYTHONPATH" >> "$OUT/install.log"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import alsx, alsx.core.engine, alsx.core.sharded, alsx.serve.sharded_topk" >> "$OUT/install.log" 2>&1 \
  || { echo "alsx does not import with this jax (see install.log)"; tail -5 "$OUT/install.log"; exit 1; }
left=$(( ${BUDGET_S:-400} - ($(date +%s) - start) - 15 ))  # 15 s to write the tables
"$PY" benchmarks/gpu.py --out "$OUT" --budget-s "$left" 2>&1 | tee "$OUT/gpu.log"
rm -rf "$OUT/data"
echo "total $(( $(date +%s) - start )) s"
cat "$OUT/gpu_results.md" 2>/dev/null
