#!/usr/bin/env bash
# Kingma & Welling 2013 figure 2 (MNIST): one run per latent size, one at a time.
# Usage: TFDS_DATA_DIR=/path/to/tensorflow_datasets bash experiments/kingma_welling_fig2/run.sh [RUNS_DIR] [EPOCHS]
set -euo pipefail
RUNS=${1:-/tmp/runs}
EPOCHS=${2:-100}
HERE=$(dirname "$0")
mkdir -p "$RUNS"
for z in 3 5 10 20 200; do
  python -m vae_jax.main --config=configs/kingma_welling.py:latent=$z,lr=0.02,epochs=$EPOCHS \
      --workdir="$RUNS/kw_z$z" > "$RUNS/kw_z$z.log" 2>&1
done
python "$HERE/plot.py" --out="$HERE" $(for z in 3 5 10 20 200; do echo "$z=$RUNS/kw_z$z"; done)
