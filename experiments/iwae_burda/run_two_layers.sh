#!/usr/bin/env bash
# The two-stochastic-layer runs of the IWAE study (experiments/iwae_burda/README.md):
# a VAE (k = 1) and an IWAE (k = 5), trained one after the other (the 2-core machine is
# shared), then each evaluated on the test set with K = 5,000.
# Usage: TFDS_DATA_DIR=/path/to/tensorflow_datasets \
#   bash experiments/iwae_burda/run_two_layers.sh [RUNS_DIR] [RESULTS_DIR (default: beside this script)]
set -euo pipefail
RUNS=${1:-/tmp/runs}
HERE=${2:-$(dirname "$0")}
mkdir -p "$RUNS"

train() {  # name, config options
  local start=$SECONDS
  python -m vae_jax.main --config="configs/iwae.py:$2" --workdir="$RUNS/$1" > "$RUNS/$1.log" 2>&1
  echo "$1: trained in $((SECONDS - start)) s" | tee -a "$RUNS/two_layers_times.txt"
}

train iwae2_vae_k1 objective=elbo,k=1,layers=2,epochs=800
train iwae2_k5 objective=iwae,k=5,layers=2,epochs=500

for run in iwae2_vae_k1 iwae2_k5; do
  start=$SECONDS
  python -m vae_jax.evaluate_workdir --workdir="$RUNS/$run" --split=test --num_samples=5000 \
      > "$RUNS/${run}_eval.log" 2>&1
  echo "$run: evaluated in $((SECONDS - start)) s" | tee -a "$RUNS/two_layers_times.txt"
  cp "$RUNS/$run/eval_test_k5000.json" "$HERE/${run}_eval_test_k5000.json"
  cp "$RUNS/$run/metrics.jsonl" "$HERE/${run}_metrics.jsonl"
  cp "$RUNS/$run/config.json" "$HERE/${run}_config.json"
done

for pair in vae_k1:iwae2_vae_k1 iwae_k5:iwae2_k5; do
  python -m vae_jax.generate --workdir="$RUNS/${pair#*:}" \
      --output_dir="$HERE/grids_two_layers/${pair%%:*}" --temperatures=0.7,1.0 \
      --reconstruct=0,1,2,3,4,5,6,7 --interpolate=0,1 --traverse=0 --traverse_dims=5
done
# The one-layer VAE of run.sh beside the two-layer runs, if its workdir is there.
ONE_LAYER=()
if [[ -d "$RUNS/iwae_vae_k1" ]]; then ONE_LAYER=("vae_k1_one_layer=$RUNS/iwae_vae_k1"); fi
python "$(dirname "$0")/plot.py" --out="$HERE" --tag=_two_layers \
    vae2_k1="$RUNS/iwae2_vae_k1" iwae2_k5="$RUNS/iwae2_k5" "${ONE_LAYER[@]}"
