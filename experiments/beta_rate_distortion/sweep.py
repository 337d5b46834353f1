"""beta from 0.1 to 10 (8 values, log-spaced) x 2 seeds on binarized_mnist.

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python scripts/sweep.py \
      --sweep=experiments/beta_rate_distortion/sweep.py --sweep_dir=runs/beta --workers=1
  python scripts/aggregate.py --sweep_dir=runs/beta --x=objective.beta

The 784-400-20 MLP VAE of configs/binarized_mnist.py's data setup, 10 epochs per
point (a short budget that fits the 2-core CPU: ~1 minute a point).
"""

from vae_jax import sweep

BASE_CONFIG = 'configs/binarized_mnist.py'
BETAS = [0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0]


def get_sweep():
  budget = {'model.hidden': (400,), 'model.latent_dim': 20, 'train.num_epochs': 10.0,
            'train.eval_every_steps': 2500, 'train.checkpoint_every_steps': 2500}
  return [dict(budget, **p) for p in sweep.product(
      sweep.grid({'objective.beta': BETAS}), sweep.grid({'seed': [0, 1]}))]
