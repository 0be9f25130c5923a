#!/usr/bin/env bash
# The long MNIST runs of docs/experiments/fig4.md, in the order their results are needed,
# written straight into results/ (each resumes per seed; a seed's checkpoints are ignored
# by git, its record.json, evaluation.npz and learned optimizers are not):
#   fig4b (5 seeds); fig4b seed 0 again from scratch compiled for AVX2 only (on a host
#   with AVX-512 that is another float rounding: the reproducibility bound of
#   docs/experiments/fig4.md; on an AVX2 host it is the same program); fig4a, fig4c,
#   then fig5's verdicts and logscaled_reach.
# meta_tune is not rerun: results/meta_tune is stored and the configs use its choices
# (tests/test_mnist_lopt.py::test_stored_tuning_is_held_apart_and_is_what_the_configs_use).
# Usage: nohup setsid scripts/long_runs.sh >/dev/null 2>&1 &   (log: runs/long_runs.log), and
# scripts/commit_seeds.sh beside it where the machine may not outlive the sitting.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p runs
log() { echo "$(date -u +%FT%TZ) $*" >> runs/long_runs.log; }
step() {  # step NAME OUT [ARGS...]: one experiment, its output in runs/NAME.log
    local name=$1 out=$2; shift 2
    log "start $name -> $out $*"
    if nice -n 5 "$PY" -m experiments "$name" --no-progress --out "$out" "$@" >> "runs/$(basename "$out").log" 2>&1; then
        log "done $name -> $out"
    else
        log "FAILED $name -> $out (rc $?)"; exit 1
    fi
}
step fig4b results/fig4b
XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_max_isa=AVX2" step fig4b results/fig4b_rerun_avx2 --config.seeds='(0,)'
step fig4a results/fig4a
step fig4c results/fig4c
step fig5 results/fig5
step logscaled_reach results/logscaled_reach
log "all done"
