"""A top-down hierarchy of dense groups (the Ladder VAE setting) on TFDS binarized_mnist.

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m vae_jax.main \
    --config=configs/ladder.py --workdir=/tmp/runs/ladder
  python -m vae_jax.evaluate_workdir --workdir=/tmp/runs/ladder --split=test --num_samples=5000

Sønderby et al. 2016 ("Ladder Variational Autoencoders", sec. 3): five
stochastic groups of 64, 32, 16, 8 and 4 latents (bottom-up), a deterministic
bottom-up pass, and a top-down pass whose posterior merges the bottom-up
estimate with the prior by precision; KL warm-up. Here the deterministic path
is a residual MLP of constant width (`width`, inner width `hidden`) on both
passes, GELU, no batch normalisation (nothing but parameters is learned); the
decoder reads the whole top-down state. Adam with gradient clipping, optionally
updates with gradient norms above `skip` skipped (VDVAE), evaluation on an
exponential moving average of the parameters. Trained on the 50,000 training images,
the ELBO tracked on the 10,000 validation images; the test set is touched
only by evaluate_workdir. Options, comma-separated:
  groups   latent sizes bottom-up, '-'-separated.           default 64-32-16-8-4
  merge    precision (LVAE) or residual (NVAE).              default precision
  width    top-down state and bottom-up width.               default 512
  hidden   the residual blocks' inner width.                 default 256
  epochs   training budget.                                  default 200
  warmup   KL warm-up epochs (beta 0 -> 1).                  default 20
  lr       Adam learning rate.                               default 0.001
  schedule constant, or cosine (decay to 0 over the run).    default constant
  free_bits  KL floor per latent in nats (objective.free_bits). default 0
  batch    batch size.                                       default 100
  ema      decay of the parameters' moving average.          default 0.999
  skip     gradient-norm skip threshold (0: never skip; set it
           well above the grad_norm the train lines show).  default 0
  k        IWAE samples (1: the ELBO).                       default 1
  likelihood  bernoulli, or local_bernoulli (each pixel's logit
           also reads its causal neighbours within `context`, with
           weights the decoder emits: a locally autoregressive p(x | z)). default bernoulli
           causal_bernoulli: each pixel's logit reads `features` learned
           features of its causal past, a small PixelCNN-style network over x,
           `layers` deep, with weights the decoder emits.
  context  the local/causal_bernoulli context radius (1: 4 neighbours). default 1
  features causal_bernoulli's learned context features.      default 12
  layers   causal_bernoulli's network depth.                 default 3
  runlocal a few hundred steps, for a smoke test.
Published test log p(x) on this binarisation: LVAE re-implementations 79.24
nats (3 groups) to 78.30 (12 groups), BIVA 78.59 (both train on train +
validation); what this config reached, with epochs and wall times, is in
experiments/ladder/README.md.
"""

from vae_jax import config as config_lib

_DEFAULTS = {'groups': (64, 32, 16, 8, 4), 'merge': 'precision', 'width': 512, 'hidden': 256,
             'epochs': 200.0, 'warmup': 20.0, 'lr': 1e-3, 'batch': 100, 'ema': 0.999,
             'skip': 0.0, 'k': 1, 'schedule': 'constant', 'free_bits': 0.0,
             'likelihood': 'bernoulli', 'context': 1, 'features': 12, 'layers': 3}


def get_config(arg=None):
  options = config_lib.parse_options(arg, 'configs/ladder.py', _DEFAULTS, ('runlocal',),
                                     choices={'merge': ('precision', 'residual'),
                                              'schedule': ('constant', 'cosine'),
                                              'likelihood': ('bernoulli', 'local_bernoulli',
                                                             'causal_bernoulli')})
  c = config_lib.default_config()
  c.data.name = 'binarized_mnist'
  c.data.binarization = 'static'
  c.data.train_split = 'train'
  c.train.batch_size = options['batch']
  steps_per_epoch = config_lib.steps_per_epoch(c)
  c.data.eval_split = 'validation'
  c.data.download = False
  c.model.hierarchy = 'top_down'
  c.model.architecture = 'mlp'
  c.model.groups = options['groups']
  c.model.state_width = options['width']
  c.model.block_hidden = options['hidden']
  c.model.merge = options['merge']
  c.model.activation = 'gelu'
  c.model.likelihood = options['likelihood']
  c.model.context_radius = options['context']
  c.model.context_features = options['features']
  c.model.context_layers = options['layers']
  if options['k'] > 1:
    c.objective.name = 'iwae'
    c.objective.num_samples = options['k']
  else:
    c.objective.kl_warmup_steps = config_lib.steps(c, epochs=options['warmup'])
  c.objective.free_bits = options['free_bits']  # With k > 1, validate() names it.
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = options['lr']
  c.optimizer.schedule = options['schedule']
  c.optimizer.grad_clip_norm = 200.0
  c.optimizer.skip_threshold = options['skip']
  c.optimizer.ema_decay = options['ema']
  c.train.num_epochs = options['epochs']
  c.train.steps_per_call = 50
  c.train.log_every_steps = 2500
  every = max(50, 10 * steps_per_epoch // 50 * 50)  # ~10 epochs, whole calls.
  c.train.eval_every_steps = every
  c.train.checkpoint_every_steps = every
  c.train.nan_policy = 'skip'
  c.eval.batch_size = 1000
  if options['runlocal']:
    c.optimizer.ema_decay = min(options['ema'], 0.9)  # An average over 300 steps, not 1,000.
    c.train.num_epochs = 0.0
    c.train.num_steps = 300
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
  return c
