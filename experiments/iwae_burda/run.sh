#!/usr/bin/env bash
# The IWAE-study runs (experiments/iwae_burda/README.md), in the order they were run.
# Usage: TFDS_DATA_DIR=/path/to/tensorflow_datasets bash experiments/iwae_burda/run.sh [RUNS_DIR]
# At most two trainings at once on a 2-core machine: k = 1 and k = 5 side by side, then k = 50.
set -euo pipefail
RUNS=${1:-/tmp/runs}
HERE=$(dirname "$0")
mkdir -p "$RUNS"

# The README's k = 1 row ran 208 epochs of epochs=500 before it was resumed with
# epochs=350 (README note 1); this is the uninterrupted 350-epoch run.
python -m vae_jax.main --config=configs/iwae.py:objective=elbo,k=1,epochs=350 \
    --workdir="$RUNS/iwae_vae_k1" > "$RUNS/iwae_vae_k1.log" 2>&1 &
python -m vae_jax.main --config=configs/iwae.py:objective=iwae,k=5,epochs=150 \
    --workdir="$RUNS/iwae_k5" > "$RUNS/iwae_k5.log" 2>&1 &
wait
python -m vae_jax.main --config=configs/iwae.py:objective=iwae,k=50,epochs=20 \
    --workdir="$RUNS/iwae_k50" > "$RUNS/iwae_k50.log" 2>&1

for run in iwae_vae_k1 iwae_k5 iwae_k50; do
  python -m vae_jax.evaluate_workdir --workdir="$RUNS/$run" --split=test --num_samples=5000
  cp "$RUNS/$run/eval_test_k5000.json" "$HERE/${run}_eval_test_k5000.json"
  cp "$RUNS/$run/metrics.jsonl" "$HERE/${run}_metrics.jsonl"
done
python "$HERE/plot.py" --out="$HERE" vae_k1="$RUNS/iwae_vae_k1" iwae_k5="$RUNS/iwae_k5" \
    iwae_k50="$RUNS/iwae_k50"
