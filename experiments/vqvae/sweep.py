"""The VQ-VAE's first stage three ways: EMA codebook with and without dead-code restarts,
and the codebook loss, on the embedded digits (offline).

  python scripts/sweep.py --sweep=experiments/vqvae/sweep.py --sweep_dir=runs/vqvae --workers=1
  for run in runs/vqvae/model.*; do
    python -m vae_jax.main --config=configs/vqvae.py:steps=3000,prior,vqvae=$run \
        --config.train.batch_size=64 --workdir=runs/vqvae_prior/$(basename $run)
  done
  python scripts/aggregate.py --out_dir=runs/vqvae_prior runs/vqvae_prior/model.*

configs/vqvae.py (K = 256 codes of size 16 on a 7 x 7 grid) with its convolutions
halved to (16, 32) channels and batch 64, 3,000 steps each stage (43 epochs of the
4,500 training digits); the second stage learns the PixelCNN prior of each (its
network fields come from the first stage's config.json). ~6 minutes a run on
2 CPU cores.
"""

from vae_jax import sweep

BASE_CONFIG = 'configs/vqvae.py:steps=3000'
SETTINGS = [
    {'model.codebook_update': 'ema', 'model.codebook_restart': 0.0},
    {'model.codebook_update': 'ema', 'model.codebook_restart': 1.0},
    {'model.codebook_update': 'loss', 'model.codebook_restart': 0.0},
]


SMALLER = {'model.conv_features': (16, 32), 'train.batch_size': 64}


def get_sweep():
  return [dict(SMALLER, **setting) for setting in SETTINGS]
