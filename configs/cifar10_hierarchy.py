"""A spatial top-down hierarchy (VDVAE / NVAE style) on CIFAR-10, in bits per dimension.

  python -m vae_jax.main --config=configs/cifar10_hierarchy.py --workdir=/tmp/runs/cifar_hvae
  python -m vae_jax.evaluate_workdir --workdir=/tmp/runs/cifar_hvae --split=test \
    --num_samples=100

8-bit colour images with the discretized logistic mixture likelihood (10
components, channel-autoregressive means; Salimans et al. 2017), reported in
bits/dim = -log p(x) / (3072 ln 2). Groups of latent channels at resolutions
32, 16, 8, 4 and 1, bottleneck residual blocks (Child 2021, "Very Deep VAEs
Generalize Autoregressive Models"), nearest-neighbour unpooling between
resolutions, the posterior relative to the prior (NVAE's residual merge),
AdamW with warm-up and cosine decay, gradient clipping, VDVAE's update skipping
and an EMA of the parameters for evaluation. The default is a small network for
one accelerator; `runlocal` shrinks it to a CPU smoke test.

TFDS prepares cifar10 on a machine with internet (data.download=True, the
default here); offline, with TFDS_DATA_DIR pointing at your prepared datasets.

Options, comma-separated:
  width    channels of the state and the blocks' outer width.     default 128
  latent   latent channels per group.                             default 16
  groups   groups per resolution 32-16-8-4-1, '-'-separated.      default 4-8-8-4-2
  epochs   training budget.                                       default 200
  runlocal a few steps of a tiny network, for a smoke test.
Published: VDVAE 2.87 bits/dim (39M parameters, 45 groups, 1.1M steps at
batch 32 on 32 V100s), NVAE 2.91. This configuration has not been trained to
the end here (the 2-core CPU this codebase is developed on runs it at a few
images per second): expect it to stay well above those numbers, being about a
twentieth of VDVAE's size and trained a fiftieth as long.
"""

from vae_jax import config as config_lib

RESOLUTIONS = (32, 16, 8, 4, 1)
_DEFAULTS = {'width': 128, 'latent': 16, 'groups': (4, 8, 8, 4, 2), 'epochs': 200.0}


def get_config(arg=None):
  options = config_lib.parse_options(arg, 'configs/cifar10_hierarchy.py', _DEFAULTS,
                                     ('runlocal',))
  per_resolution = options['groups']
  if len(per_resolution) != len(RESOLUTIONS) or min(per_resolution) < 0:
    raise config_lib.ConfigError(
        f"configs/cifar10_hierarchy.py: option groups={options['groups']!r} needs "
        f"{len(RESOLUTIONS)} '-'-separated counts, one per resolution {RESOLUTIONS}")
  resolutions = tuple(r for r, n in zip(RESOLUTIONS, per_resolution) for _ in range(n))
  c = config_lib.default_config()
  c.data.name = 'cifar10'
  c.data.binarization = 'none'
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.model.hierarchy = 'top_down'
  c.model.architecture = 'conv'
  c.model.likelihood = 'logistic_mixture'
  c.model.num_mixtures = 10
  c.model.groups = (options['latent'],) * len(resolutions)
  c.model.group_resolutions = resolutions
  c.model.state_width = options['width']
  c.model.block_hidden = options['width'] // 4
  c.model.encoder_blocks = 2
  c.model.merge = 'residual'
  c.model.activation = 'gelu'
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 2e-4
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.9
  # VDVAE clips at 200 and skips above 400 for a loss in nats per dimension; the loss
  # here is per image, 3,072 dimensions, so its gradient norms are 3,072x larger.
  c.optimizer.grad_clip_norm = 200.0 * 3072
  c.optimizer.skip_threshold = 400.0 * 3072
  c.optimizer.ema_decay = 0.9999
  c.train.batch_size = 32
  c.train.num_epochs = options['epochs']
  c.train.steps_per_call = 10
  c.train.log_every_steps = 500
  c.train.eval_every_steps = 10000
  c.train.checkpoint_every_steps = 5000
  c.train.nan_policy = 'skip'
  c.eval.batch_size = 100
  if options['runlocal']:
    c.model.groups = (2, 2, 2)
    c.model.group_resolutions = (8, 4, 1)
    c.model.state_width = 16
    c.model.block_hidden = 8
    c.model.encoder_blocks = 1
    c.optimizer.ema_decay = 0.99
    c.train.num_epochs = 0.0
    c.train.num_steps = 20
    c.train.batch_size = 10
    c.train.steps_per_call = 5
    c.train.log_every_steps = 10
    c.train.eval_every_steps = 20
    c.train.checkpoint_every_steps = 10
    c.eval.batch_size = 50
  return c
