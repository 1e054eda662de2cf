#!/usr/bin/env bash
# The GPU run, one command: benchmarks/gpu_profile.py (where a step's time goes), benchmarks/gpu.py (SG-MCMC steps at d = 50 and at 670k weights
# against the optax floor and BlackJAX, FB-GVI at d = 500), then the first-call latency of the
# logistic regression and `heatbath demo`, each under its own time limit so that a slow part
# cannot take the others' results with it.
#
#     OUT=/tmp/gpu bash benchmarks/gpu.sh        # results and logs in $OUT
#
# Needs jax with a GPU backend, numpyro, optax and blackjax importable (heatbath from this
# checkout: PYTHONPATH is set here).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  "$PY" -c "import jax, numpyro, optax, blackjax; print('jax', jax.__version__, jax.devices(), 'numpyro', numpyro.__version__, 'optax', optax.__version__, 'blackjax', blackjax.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
if [ "${PROFILE_LIMIT:-120}" != 0 ]; then  # where the public call's step time goes (0: skip it)
  timeout "${PROFILE_LIMIT:-120}" "$PY" benchmarks/gpu_profile.py --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log"
fi
timeout "${GPU_PY_LIMIT:-360}" "$PY" benchmarks/gpu.py --out "$OUT/gpu_results.json" 2>&1 | tee "$OUT/gpu.log"
timeout "${DEMO_LIMIT:-80}" "$PY" -m heatbath.cli demo 2>&1 | tee "$OUT/demo.log"
if [ "${FIRST_CALL_LIMIT:-100}" != 0 ]; then  # 0: skip it
  timeout "${FIRST_CALL_LIMIT:-100}" "$PY" benchmarks/bench_first_call.py --models logreg --repeats 2 \
    --out "$OUT/first_call.json" 2>&1 | tee "$OUT/first_call.log"
fi
echo "done $(date -u)"
