"""VQ-VAE (van den Oord et al. 2017) in two stages: the VQ-VAE, then a PixelCNN prior over its codes.

  python -m vae_jax.main --config=configs/vqvae.py --workdir=/tmp/runs/vqvae
  python -m vae_jax.main --config=configs/vqvae.py:prior,vqvae=/tmp/runs/vqvae \
    --workdir=/tmp/runs/vqvae_prior
  python -m vae_jax.generate --workdir=/tmp/runs/vqvae_prior --output_dir=/tmp/runs/vqvae_prior/pictures

Options:
  data      embedded_mnist (offline), binarized_mnist (TFDS) or cifar10 (TFDS).
                                                            default embedded_mnist
  codebook  K, the codebook vectors.                        default 256
  dim       D, the size of each code vector.                default 16
  update    ema (moving averages, the paper's appendix) or loss (the codebook loss).
                                                            default ema
  restart   ema: restart a code whose moving-average count per batch falls below this
            (0: never).                                     default 1
  steps     training steps of the stage.                    default 5000
  seed      the run's seed.                                 default 0
  prior     the second stage: a PixelCNN prior over the code grid of the trained
            VQ-VAE in vqvae=WORKDIR (its networks frozen; its data and network
            fields are read from WORKDIR/config.json).
  vqvae     the first stage's workdir (with prior); it comes last, and everything
            after 'vqvae=' is the path, commas included (sweep points have them).
  runlocal  a few hundred steps, for a smoke test.

Stage 1 trains encoder, codebook and decoder under a uniform prior over the
codes (its samples are noise); stage 2 learns the prior, after which samples
and the reported ELBO, log p(x | z_q) + log p(codes), come from it. That number
is a bound through the one code grid the encoder picks, not an importance-sampled
log p(x), and is not comparable with a VAE's. Two stride-2 convolutions (32, 64
channels) and two residual blocks give a 7x7 grid of codes on MNIST, 8x8 on
CIFAR-10.
"""

import os

from vae_jax import config as config_lib
from vae_jax import workdir as workdir_lib

_DATA = ('embedded_mnist', 'binarized_mnist', 'cifar10')
_DEFAULTS = {'data': 'embedded_mnist', 'codebook': 256, 'dim': 16, 'update': 'ema',
             'restart': 1.0, 'steps': 5000, 'seed': 0, 'vqvae': ''}


def get_config(arg=None):
  arg, workdir = _split_workdir(arg or '')
  options = config_lib.parse_options(
      arg, 'configs/vqvae.py', _DEFAULTS, ('prior', 'runlocal'),
      choices={'data': _DATA, 'update': ('ema', 'loss')})
  if workdir is not None:
    options['vqvae'] = workdir
  if options['prior'] != bool(options['vqvae']):
    raise config_lib.ConfigError("configs/vqvae.py: the second stage needs both 'prior' and "
                                 "'vqvae=WORKDIR' (the trained VQ-VAE's workdir)")
  name = options['data']
  c = config_lib.default_config()
  c.seed = options['seed']
  c.data.name = name
  if name == 'cifar10':
    c.data.binarization, c.model.likelihood = 'none', 'discretized_logistic'
  elif name == 'binarized_mnist':
    c.data.binarization = 'static'
    c.data.train_split, c.data.eval_split = 'train+validation', 'test'
  c.model.posterior = 'vq'
  c.model.architecture = 'conv'
  c.model.conv_features = (32, 64)
  c.model.latent_dim = options['dim']
  c.model.codebook_size = options['codebook']
  c.model.codebook_update = options['update']
  c.model.codebook_restart = options['restart'] if options['update'] == 'ema' else 0.0
  if options['prior']:
    c.objective.name = 'code_prior'
    c.model.prior = 'pixelcnn'
    c.model.prior_workdir = options['vqvae']
    _take_stage_one_fields(c, options['vqvae'])
  else:
    c.objective.name = 'vq_vae'
    c.model.prior = 'uniform'
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 128
  c.train.num_steps = options['steps']
  c.train.steps_per_call = 50
  c.train.log_every_steps = 500
  c.train.eval_every_steps = 2500
  c.train.checkpoint_every_steps = 2500
  c.eval.batch_size = 500
  if options['runlocal']:
    c.train.num_steps = 200
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
  return c


def _split_workdir(arg):
  """('other options', workdir or None): the path after 'vqvae=' to the end of `arg`."""
  head, sep, workdir = arg.partition('vqvae=')
  if not sep or (head and not head.endswith(',')):
    return arg, None
  return head.rstrip(','), workdir


def _take_stage_one_fields(c, workdir):
  """The data and network fields of the VQ-VAE in `workdir`, where it has a config.json
  (training checks them again, and names the workdir when it is not a trained VQ-VAE)."""
  if not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    return
  saved = workdir_lib.load_config(workdir)  # With every field, tuples as tuples.
  # The codebook's update rule too: it is frozen here, but the fields must agree.
  for field in config_lib.VQ_STAGE_ONE_FIELDS + ('model.codebook_decay', 'model.codebook_restart'):
    section, name = field.split('.')
    c[section][name] = saved[section][name]
