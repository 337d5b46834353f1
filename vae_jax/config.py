"""The config schema: `default_config()` and `validate(config)`.

Every experiment file in configs/ starts from `default_config()` and changes a
few fields. `validate` checks every field before anything compiles or touches
the disk, and names the field it rejects.
"""

import json
import math

import ml_collections

from vae_jax import data
from vae_jax import models
from vae_jax import sharding

DATASETS = data.DATASETS
BINARIZATIONS = data.BINARIZATIONS
ARCHITECTURES = models.ARCHITECTURES
ACTIVATIONS = tuple(models.ACTIVATIONS)
LIKELIHOODS = models.LIKELIHOODS
OBJECTIVES = ('elbo', 'iwae')
OPTIMIZERS = ('adam', 'adamw', 'adagrad', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'burda', 'burda_equal')
NAN_POLICIES = ('stop', 'skip')

# Fields that may change between a run and its resumption: they steer how long
# to train and what to report, not what is being trained.
RESUMABLE_PREFIXES = (
    'train.num_steps', 'train.num_epochs', 'train.log_every_steps',
    'train.eval_every_steps', 'train.checkpoint_every_steps',
    'train.max_checkpoints_to_keep', 'train.exact_replicas', 'eval.', 'sampling.', 'logging.', 'resume.',
)


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def parse_options(arg, source, defaults=None, switches=(), choices=None):
  """The options after a config file's colon: 'k=5,runlocal' -> a dict.

  `defaults` are the options that take a value, each converted to its default's
  type (a str, int or float, or a tuple of ints written '-'-separated); `switches` take none and are True when given;
  `choices` restricts some of them. Anything else is a ConfigError that names
  `source` (the config file) and what it knows.
  """
  defaults = dict(defaults or {})
  choices = dict(choices or {})
  options = {**defaults, **{name: False for name in switches}}
  known = ', '.join(sorted(defaults) + sorted(switches))
  for item in filter(None, (arg or '').split(',')):
    key, sep, text = item.partition('=')
    if key in switches:
      if sep:
        raise ConfigError(f'{source}: option {key!r} takes no value; got {item!r}')
      options[key] = True
      continue
    if key not in defaults:
      raise ConfigError(f'{source}: unknown option {key!r}; known: {known}')
    if not sep:
      raise ConfigError(f'{source}: option {key!r} needs a value ({key}=...)')
    kind = type(defaults[key])
    if kind is tuple:  # Sizes, '-'-separated: groups=64-32-16.
      try:
        value = tuple(int(part) for part in text.split('-'))
      except ValueError:
        raise ConfigError(f"{source}: option {key}={text!r} is not a '-'-separated list of "
                          'integers') from None
      options[key] = value
      continue
    try:
      value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
      if kind is float and not math.isfinite(value):
        raise ValueError(text)
    except ValueError:
      noun = 'an integer' if kind is int else 'a finite number'
      raise ConfigError(f'{source}: option {key}={text!r} is not {noun}') from None
    if key in choices and value not in choices[key]:
      raise ConfigError(f'{source}: option {key}={text!r} is not one of {tuple(choices[key])}')
    options[key] = value
  return options


def default_config() -> ml_collections.ConfigDict:
  """The defaults every experiment config starts from (a small MLP VAE)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'embedded_mnist'
  c.data.data_dir = ''  # '' -> $TFDS_DATA_DIR, else TFDS's default.
  c.data.binarization = 'dynamic'
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.download = True

  c.model = ml_collections.ConfigDict()
  c.model.architecture = 'mlp'
  c.model.hidden = (400,)
  c.model.conv_features = (32, 64)
  c.model.latent_dim = 20  # Of z_1, the bottom (or only) stochastic layer.
  # Stochastic layers above z_1, bottom-up (Burda et al. 2015's two layers: (50,)),
  # and the deterministic widths between z_l and z_{l+1}, one tuple per layer.
  c.model.upper_latent_dims = ()
  c.model.upper_hidden = ()
  c.model.activation = 'relu'
  # bernoulli (binary data), gaussian (dequantised: log p(x) in discrete units),
  # discretized_logistic, logistic_mixture (num_mixtures components per pixel,
  # Salimans et al. 2017; channel-autoregressive for colour).
  c.model.likelihood = 'bernoulli'
  c.model.num_mixtures = 10
  # p(z) of the top layer: standard_normal, mixture (prior_components learned
  # Gaussians) or vamp (Tomczak & Welling 2018: prior_components pseudo-inputs).
  c.model.prior = 'standard_normal'
  c.model.prior_components = 500
  # q(z_1 | x): gaussian, or iaf (Kingma et al. 2016): iaf_steps MADE steps of
  # widths iaf_hidden on the Gaussian, reading an iaf_context_dim context.
  c.model.posterior = 'gaussian'
  c.model.iaf_steps = 2
  c.model.iaf_hidden = (320, 320)
  c.model.iaf_context_dim = 100
  # Conditional VAE (Sohn et al. 2015): the label joins the encoder's and the
  # decoder's inputs; class_conditional_prior also learns p(z | y).
  c.model.conditional = False
  c.model.class_conditional_prior = False
  # A top-down hierarchy (Ladder VAE, NVAE, VDVAE) in place of the layers above:
  # hierarchy='top_down' with `groups` the latent size of each stochastic group,
  # bottom-up: dense latents with MLP blocks for architecture 'mlp' (LVAE on
  # MNIST: (64, 32, 16, 8, 4)); latent channels at `group_resolutions` (one per
  # group, e.g. (28, 14, 14, 7, 1)) with bottleneck ResNet blocks for 'conv'.
  # state_width: the top-down state (units or channels); block_hidden: the
  # blocks' inner width; encoder_blocks: bottom-up blocks per group (dense) or
  # per resolution (spatial); merge: q from the state and the bottom-up features,
  # 'residual' (NVAE, relative to the prior) or 'precision' (LVAE's
  # precision-weighted merge); scale: 'softplus' or 'exp' of the raw std;
  # scan_groups: identical consecutive groups compile once (nn.scan); remat:
  # recompute each group's activations in the backward pass.
  c.model.hierarchy = 'bottom_up'
  c.model.groups = ()
  c.model.group_resolutions = ()
  c.model.state_width = 256
  c.model.block_hidden = 128
  c.model.encoder_blocks = 1
  c.model.merge = 'residual'
  c.model.scale = 'softplus'
  c.model.scan_groups = True
  c.model.remat = False

  c.objective = ml_collections.ConfigDict()
  c.objective.name = 'elbo'
  c.objective.beta = 1.0
  c.objective.kl_warmup_steps = 0
  c.objective.free_bits = 0.0
  c.objective.num_samples = 1  # k of the IWAE bound.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 0.0  # 0 -> no clipping.
  # VDVAE's skip: an update whose gradient norm (before clipping) exceeds this is
  # not applied, and counted in the logs (`skipped`); 0 -> never skip.
  c.optimizer.skip_threshold = 0.0
  # Evaluation and samples use an exponential moving average of the parameters
  # with this decay (VDVAE: 0.9999), kept in the checkpoints; 0 -> the parameters.
  c.optimizer.ema_decay = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 0.0  # > 0 overrides num_steps.
  c.train.num_steps = 10_000
  c.train.steps_per_call = 10
  c.train.log_every_steps = 500
  c.train.eval_every_steps = 2_500
  c.train.checkpoint_every_steps = 2_500
  c.train.max_checkpoints_to_keep = 3
  c.train.nan_policy = 'stop'
  c.train.max_consecutive_nonfinite = 10
  # > 1: that many seeds (config.seed, config.seed + 1, ...) trained at once,
  # vmapped in one program; each replica keeps its own dir DIR/seed_<seed>.
  c.train.num_seeds = 1
  # On CPU, compile the step so that a vmapped replica is bit-identical to the
  # one-seed run (see train.step_compiler_options); False is a little faster
  # at small batches, and replicas then agree with single runs to rounding.
  c.train.exact_replicas = True

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500
  c.eval.num_importance_samples = 0  # K of the final log p(x) estimate; 0 skips it.
  c.eval.importance_batch_size = 2
  c.eval.importance_chunk_size = 500

  c.sampling = ml_collections.ConfigDict()
  c.sampling.num_samples = 64
  c.sampling.temperature = 1.0
  c.sampling.num_reconstructions = 32

  c.logging = ml_collections.ConfigDict()
  c.logging.tensorboard = True

  c.resume = ml_collections.ConfigDict()
  c.resume.allow_config_change = False
  return c


def _check(ok, field, message):
  if not ok:
    raise ConfigError(f'config.{field}: {message}')


def _choice(config, field, choices):
  value = _get(config, field)
  _check(value in choices, field, f'{value!r} is not one of {choices}')


def _positive(config, field, kind=int, allow_zero=False):
  value = _get(config, field)
  _check(isinstance(value, kind) and not isinstance(value, bool), field,
         f'expected {kind.__name__}, got {value!r}')
  _check(value > 0 or (allow_zero and value == 0), field,
         f'must be {">= 0" if allow_zero else "> 0"}, got {value!r}')


def _get(config, field):
  value = config
  for part in field.split('.'):
    try:
      value = value[part]
    except (KeyError, TypeError, AttributeError):
      raise ConfigError(f'config.{field}: missing (a config built without '
                        f'config.default_config()?)') from None
  return value


def _number(config, field):
  value = _get(config, field)
  _check(isinstance(value, (int, float)) and not isinstance(value, bool), field,
         f'expected a number, got {value!r}')
  _check(value == value and abs(value) != float('inf'), field, f'must be finite, got {value!r}')
  return value


def validate(config, num_devices=None):
  """Raises ConfigError naming the first field whose value cannot work."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'the config is a {type(config).__name__}, not an '
                      f'ml_collections.ConfigDict: get_config() must return one')
  _positive(config, 'seed', allow_zero=True)
  _choice(config, 'data.name', DATASETS)
  _choice(config, 'data.binarization', BINARIZATIONS)
  try:
    data.validate_spec(config.data)
  except data.DatasetError as e:
    raise ConfigError(str(e)) from None
  _choice(config, 'model.architecture', ARCHITECTURES)
  _choice(config, 'model.activation', ACTIVATIONS)
  _choice(config, 'model.likelihood', LIKELIHOODS)
  _positive(config, 'model.latent_dim')
  for field in ('model.hidden', 'model.conv_features'):
    widths = tuple(_get(config, field))
    _check(all(isinstance(w, int) and w > 0 for w in widths), field,
           f'every width must be a positive int, got {widths!r}')
  upper_dims, upper_hidden = tuple(config.model.upper_latent_dims), tuple(config.model.upper_hidden)
  _check(all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in upper_dims),
         'model.upper_latent_dims', f'every size must be a positive int, got {upper_dims!r}')
  _check(len(upper_hidden) == len(upper_dims) and all(
      isinstance(h, (tuple, list)) and all(isinstance(w, int) and w > 0 for w in h)
      for h in upper_hidden), 'model.upper_hidden',
         f'needs one tuple of positive widths per entry of model.upper_latent_dims '
         f'{upper_dims!r}, got {upper_hidden!r}')
  _check(config.model.architecture != 'conv' or len(config.model.conv_features) > 0,
         'model.conv_features', 'a conv model needs at least one layer')
  binary = config.data.binarization in ('static', 'dynamic') or config.data.name == 'binarized_mnist'
  _check(config.model.likelihood != 'bernoulli' or binary, 'model.likelihood',
         "'bernoulli' needs binary data (data.binarization 'static' or 'dynamic')")
  try:
    models.validate_config(config.model, has_labels=data.has_labels(config.data.name),
                           channels=3 if config.data.name == 'cifar10' else 1,
                           image_size=32 if config.data.name == 'cifar10' else 28)
  except models.ModelConfigError as e:
    raise ConfigError(str(e)) from None

  _choice(config, 'objective.name', OBJECTIVES)
  _check(_number(config, 'objective.beta') >= 0, 'objective.beta', 'must be >= 0')
  _positive(config, 'objective.kl_warmup_steps', allow_zero=True)
  _check(_number(config, 'objective.free_bits') >= 0, 'objective.free_bits', 'must be >= 0')
  _positive(config, 'objective.num_samples')
  if config.objective.name == 'elbo':
    _check(config.objective.num_samples == 1, 'objective.num_samples',
           "the 'elbo' objective uses one sample per datapoint; use objective.name='iwae' for k > 1")
  else:
    for field, neutral in (('objective.beta', 1.0), ('objective.kl_warmup_steps', 0),
                           ('objective.free_bits', 0.0)):
      _check(_get(config, field) == neutral, field,
             f"the 'iwae' bound has no {field.split('.')[1]}; it must stay {neutral}")

  _choice(config, 'optimizer.name', OPTIMIZERS)
  _choice(config, 'optimizer.schedule', SCHEDULES)
  _check(_number(config, 'optimizer.learning_rate') > 0, 'optimizer.learning_rate', 'must be > 0')
  _positive(config, 'optimizer.warmup_steps', allow_zero=True)
  _check(_number(config, 'optimizer.weight_decay') >= 0, 'optimizer.weight_decay', 'must be >= 0')
  _check(_number(config, 'optimizer.grad_clip_norm') >= 0, 'optimizer.grad_clip_norm',
         'must be >= 0 (0 turns clipping off)')
  _check(_number(config, 'optimizer.skip_threshold') >= 0, 'optimizer.skip_threshold',
         'must be >= 0 (0 never skips)')
  _check(0 <= _number(config, 'optimizer.ema_decay') < 1, 'optimizer.ema_decay',
         'must be in [0, 1) (0 evaluates the parameters themselves)')
  for field in ('optimizer.b1', 'optimizer.b2'):
    _check(0 <= _number(config, field) < 1, field, 'must be in [0, 1)')
  _check(_number(config, 'optimizer.eps') > 0, 'optimizer.eps', 'must be > 0')

  for field in ('train.batch_size', 'train.num_steps', 'train.steps_per_call',
                'train.log_every_steps', 'train.eval_every_steps',
                'train.checkpoint_every_steps', 'train.max_checkpoints_to_keep',
                'train.max_consecutive_nonfinite', 'train.num_seeds', 'eval.batch_size',
                'eval.importance_batch_size', 'eval.importance_chunk_size',
                'sampling.num_samples', 'sampling.num_reconstructions'):
    _positive(config, field)
  _check(_number(config, 'train.num_epochs') >= 0, 'train.num_epochs', 'must be >= 0')
  _positive(config, 'eval.num_importance_samples', allow_zero=True)
  _check(_number(config, 'sampling.temperature') > 0, 'sampling.temperature', 'must be > 0')
  _choice(config, 'train.nan_policy', NAN_POLICIES)
  _check(isinstance(config.train.exact_replicas, bool), 'train.exact_replicas',
         f'expected True or False, got {config.train.exact_replicas!r}')
  per_call = config.train.steps_per_call
  for field in ('train.log_every_steps', 'train.eval_every_steps', 'train.checkpoint_every_steps'):
    _check(_get(config, field) % per_call == 0, field,
           f'must be a multiple of train.steps_per_call ({per_call})')

  num_devices = sharding.device_count() if num_devices is None else num_devices
  for field in ('train.batch_size', 'eval.batch_size'):
    _check(_get(config, field) % num_devices == 0, field,
           f'{_get(config, field)} is not divisible by the {num_devices} devices: the batch '
           'is global, split over every device of every process')


def to_json(config) -> str:
  """The resolved config as stable, human-readable JSON."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def flatten(tree, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1}; tuples become lists (as JSON has them)."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = list(value) if isinstance(value, tuple) else value
  return flat


def differing_fields(saved: dict, current: dict, ignore=RESUMABLE_PREFIXES):
  """Fields whose values differ between two configs, as 'field: old -> new'."""
  old, new = flatten(saved), flatten(json.loads(json.dumps(current, default=list)))
  diffs = []
  for name in sorted(set(old) | set(new)):
    if any(name == p or (p.endswith('.') and name.startswith(p)) for p in ignore):
      continue
    if old.get(name, '<missing>') != new.get(name, '<missing>'):
      diffs.append(f'{name}: {old.get(name, "<missing>")!r} -> {new.get(name, "<missing>")!r}')
  return diffs
