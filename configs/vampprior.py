"""Tomczak & Welling 2018, "VAE with a VampPrior", on TFDS binarized_mnist.

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m vae_jax.main \
    --config=configs/vampprior.py:prior=vamp --workdir=/tmp/runs/vamp
  python -m vae_jax.evaluate_workdir --workdir=/tmp/runs/vamp --split=test --num_samples=5000

The paper's one-layer setup (sec. 4): 784-300-300 encoder and mirrored decoder,
a 40-d latent, Bernoulli likelihood, Adam 5e-4, batch 100, KL warm-up, K = 500
pseudo-inputs initialised N(0.05, 0.01) and clipped to [0, 1]. Here: ReLU
layers (the paper's are gated), trained on the 50,000 training images for a
fixed budget (the paper trains up to 2,000 epochs with early stopping), the
ELBO tracked on the 10,000 validation images; the test set is touched only by
evaluate_workdir. Every row of experiments/vampprior/ uses this network and
budget and changes one option:
  prior      standard_normal, vamp (Tomczak & Welling 2018) or mixture
             (learned mixture of `components` Gaussians).   default vamp
  components pseudo-inputs / mixture components.             default 500
  posterior  gaussian or iaf (Kingma et al. 2016, 2 steps). default gaussian
  epochs     training budget.                                default 40
  warmup     KL warm-up epochs (beta 0 -> 1).                default 10
  runlocal   a few hundred steps, for a smoke test.
Published test log p(x) on this binarisation: VAE 88.56, VAE + VampPrior 85.57
nats (the paper's table 2); what this config reached, with epochs and wall
times, is in experiments/vampprior/README.md.
"""

from vae_jax import config as config_lib

_DEFAULTS = {'prior': 'vamp', 'components': 500, 'posterior': 'gaussian', 'epochs': 40.0,
             'warmup': 10.0}


def get_config(arg=None):
  options = config_lib.parse_options(arg, 'configs/vampprior.py', _DEFAULTS, ('runlocal',))
  c = config_lib.default_config()
  c.data.name = 'binarized_mnist'
  c.data.binarization = 'static'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.download = False
  c.model.hidden = (300, 300)
  c.model.latent_dim = 40
  c.model.activation = 'relu'
  c.model.prior = options['prior']
  c.model.prior_components = options['components']
  c.model.posterior = options['posterior']
  c.model.iaf_steps = 2
  c.model.iaf_hidden = (320, 320)
  c.model.iaf_context_dim = 100
  c.optimizer.learning_rate = 5e-4
  c.train.batch_size = 100
  c.objective.kl_warmup_steps = config_lib.steps(c, epochs=options['warmup'])
  c.train.num_epochs = options['epochs']
  c.train.steps_per_call = 50
  c.train.log_every_steps = 2500
  c.train.eval_every_steps = 5000
  c.train.checkpoint_every_steps = 5000
  c.eval.batch_size = 1000
  if options['runlocal']:
    c.train.num_epochs = 0.0
    c.train.num_steps = 300
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
  return c
