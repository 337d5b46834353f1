"""One-stochastic-layer MLP VAE on TFDS binarized_mnist (Larochelle's fixed binarisation).

  TFDS_DATA_DIR=/path/to/tensorflow_datasets \
    python -m vae_jax.main --config=configs/binarized_mnist.py --workdir=/tmp/vae_bmnist

784-500-500-50 ReLU encoder and mirrored decoder, Bernoulli likelihood, Adam 1e-3
with cosine decay, batch 100, trained on the 50,000 training images; the held-out
split is the 10,000-image test set. Variants: ':runlocal' shrinks everything for
a smoke test. Expected result and wall time: see the README's results table.
"""

from vae_jax import config as config_lib


def get_config(arg=None):
  options = config_lib.parse_options(arg, 'configs/binarized_mnist.py', switches=('runlocal',))
  c = config_lib.default_config()
  c.data.name = 'binarized_mnist'
  c.data.binarization = 'static'
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.download = False
  c.model.hidden = (500, 500)
  c.model.latent_dim = 50
  c.optimizer.schedule = 'cosine'
  c.train.batch_size = 100
  c.train.num_epochs = 100.0
  c.train.steps_per_call = 50
  c.train.log_every_steps = 2500
  c.train.eval_every_steps = 10000
  c.train.checkpoint_every_steps = 10000
  c.eval.batch_size = 1000
  if options['runlocal']:
    c.train.num_epochs = 0.0
    c.train.num_steps = 200
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
  return c
