#!/usr/bin/env bash
# Beside scripts/long_runs.sh, for runs made over several sittings whose machine may not
# outlive the sitting: commits each MNIST seed (record, evaluation curves, learned
# optimizers, the setting's results.json and figures) as soon as its record.json lands,
# so a finished seed is never lost. Checkpoints stay ignored (tens of MB).
# Usage: nohup setsid scripts/commit_seeds.sh >/dev/null 2>&1 &   (log: runs/long_runs.log)
cd "$(dirname "$0")/.."
mkdir -p runs
while true; do
  for rec in results/fig4*/seed_*/record.json; do
    [ -f "$rec" ] || continue
    if [ -n "$(git status --porcelain -- "$rec")" ]; then
      d=$(dirname "$rec"); exp=$(basename "$(dirname "$d")")
      sleep 30  # results.json and the figures are written right after the record
      for _ in 1 2 3; do
        git add -- "results/$exp" && git commit -q -m "$exp $(basename "$d") finished under the converged protocol: its record, evaluation curves and learned optimizers stored, so the run resumes after it in a later session" -- "results/$exp" && break
        sleep 5
      done
      echo "$(date -u +%FT%TZ) committed $d" >> runs/long_runs.log
    fi
  done
  sleep 60
done
