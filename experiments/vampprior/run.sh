#!/usr/bin/env bash
# Trains and evaluates every row of the VampPrior study (the same network and budget).
# Usage: bash experiments/vampprior/run.sh RUNS_DIR [ROW ...]   (with TFDS_DATA_DIR set)
# Rows: standard vamp mixture iaf. Each row trains, then evaluates test log p(x), K = 5,000.
set -euo pipefail
runs=${1:?usage: run.sh RUNS_DIR [ROW ...]}
shift
rows=${*:-standard vamp mixture iaf}
declare -A options=(
  [standard]='prior=standard_normal'
  [vamp]='prior=vamp'
  [mixture]='prior=mixture'
  [iaf]='prior=standard_normal,posterior=iaf'
)
for row in $rows; do
  dir="$runs/$row"
  /usr/bin/time -f "$row train wall %e s" python -m vae_jax.main \
    --config="configs/vampprior.py:${options[$row]}" --workdir="$dir"
  /usr/bin/time -f "$row eval wall %e s" python -m vae_jax.evaluate_workdir \
    --workdir="$dir" --split=test --num_samples=5000
done
