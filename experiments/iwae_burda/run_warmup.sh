#!/usr/bin/env bash
# KL warm-up against posterior collapse (experiments/iwae_burda/README.md, "KL warm-up"):
# the VAE (k = 1) with one and with two stochastic layers, 200 epochs of the budget
# schedule, without and with a 50-epoch linear KL warm-up; the two-layer pair also
# with seed 1. Two runs at a time (the machine has 2 cores), each then evaluated on
# the test set with K = 5,000.
# Usage: TFDS_DATA_DIR=/path/to/tensorflow_datasets \
#   bash experiments/iwae_burda/run_warmup.sh [RUNS_DIR] [RESULTS_DIR (default: beside this script)]
set -euo pipefail
RUNS=${1:-/tmp/runs}
HERE=${2:-$(dirname "$0")}
mkdir -p "$RUNS"

run() {  # name, config options, extra flags
  local start=$SECONDS
  python -m vae_jax.main --config="configs/iwae.py:$2" --workdir="$RUNS/$1" "${@:3}" \
      > "$RUNS/$1.log" 2>&1
  echo "$1: trained in $((SECONDS - start)) s" | tee -a "$RUNS/warmup_times.txt"
  start=$SECONDS
  python -m vae_jax.evaluate_workdir --workdir="$RUNS/$1" --split=test --num_samples=5000 \
      > "$RUNS/$1_eval.log" 2>&1
  echo "$1: evaluated in $((SECONDS - start)) s" | tee -a "$RUNS/warmup_times.txt"
  cp "$RUNS/$1/eval_test_k5000.json" "$HERE/$1_eval_test_k5000.json"
  cp "$RUNS/$1/metrics.jsonl" "$HERE/$1_metrics.jsonl"
  cp "$RUNS/$1/config.json" "$HERE/$1_config.json"
}

run iwae2_vae_e200 objective=elbo,k=1,layers=2,epochs=200 &
run iwae2_vae_e200_warmup objective=elbo,k=1,layers=2,epochs=200,warmup=50 &
wait
run iwae1_vae_e200 objective=elbo,k=1,layers=1,epochs=200 &
run iwae1_vae_e200_warmup objective=elbo,k=1,layers=1,epochs=200,warmup=50 &
wait
run iwae2_vae_e200_s1 objective=elbo,k=1,layers=2,epochs=200 --config.seed=1 &
run iwae2_vae_e200_warmup_s1 objective=elbo,k=1,layers=2,epochs=200,warmup=50 --config.seed=1 &
wait
python "$(dirname "$0")/plot.py" --out="$HERE" --tag=_warmup \
    two_layers="$RUNS/iwae2_vae_e200" two_layers_warmup="$RUNS/iwae2_vae_e200_warmup" \
    one_layer="$RUNS/iwae1_vae_e200" one_layer_warmup="$RUNS/iwae1_vae_e200_warmup"
