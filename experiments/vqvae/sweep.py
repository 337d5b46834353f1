"""The VQ-VAE's first stage three ways: EMA codebook with and without dead-code restarts,
and the codebook loss, x 2 seeds on the embedded digits (offline).

  python scripts/sweep.py --sweep=experiments/vqvae/sweep.py --sweep_dir=runs/vqvae --workers=1
  for run in runs/vqvae/model.*; do
    python -m vae_jax.main --config=configs/vqvae.py:steps=3000,prior,vqvae=$run \
        --workdir=runs/vqvae_prior/$(basename $run)
  done
  python scripts/aggregate.py --out_dir=runs/vqvae_prior runs/vqvae_prior/model.*

configs/vqvae.py (K = 256 codes of size 16 on a 7 x 7 grid) for 3,000 steps of
batch 128 each stage; the second stage learns the PixelCNN prior of each.
"""

from vae_jax import sweep

BASE_CONFIG = 'configs/vqvae.py:steps=3000'
SETTINGS = [
    {'model.codebook_update': 'ema', 'model.codebook_restart': 0.0},
    {'model.codebook_update': 'ema', 'model.codebook_restart': 1.0},
    {'model.codebook_update': 'loss', 'model.codebook_restart': 0.0},
]


def get_sweep():
  return [dict(setting, seed=seed) for seed in (0, 1) for setting in SETTINGS]
