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
from vae_jax import objectives
from vae_jax import optim
from vae_jax import sharding
from vae_jax import trackers

DATASETS = data.DATASETS
BINARIZATIONS = data.BINARIZATIONS
ARCHITECTURES = models.ARCHITECTURES
ACTIVATIONS = tuple(models.ACTIVATIONS)
LIKELIHOODS = models.LIKELIHOODS
OBJECTIVES = objectives.OBJECTIVES
OPTIMIZERS = optim.OPTIMIZERS
SCHEDULES = optim.SCHEDULES
NAN_POLICIES = ('stop', 'skip')

# Fields that may change between a run and its resumption: they steer how long
# to train and what to report, not what is being trained.
RESUMABLE_PREFIXES = (
    'data.cache', 'data.input', 'data.memory_limit_gb', 'data.workers', 'data.prefetch',
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
  known = ', '.join(sorted(defaults) + sorted(switches)) or 'none (this config has no options)'
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


# Every field: (name, default, what it does). default_config() is built from
# this table and docs/config.md is generated from it (`python -m vae_jax.config
# > docs/config.md`; a test keeps the two equal), so a field cannot be added
# without its documentation.
FIELDS = (
    ('seed', 0, 'The root PRNG key; the key of step s is fold_in(root, s). Same seed, same '
     'numbers.'),

    ('data.name', 'embedded_mnist', f'The dataset: one of {DATASETS}. embedded_mnist is 5,000 '
     'real MNIST digits shipped in a package (offline); folder and npz are your own images '
     '(data.path); the others are read from TFDS (celeb_a: NVAE\'s 148 crop resized to 64x64; '
     'imagenet32/64: downsampled ImageNet; omniglot: 28x28, strokes bright).'),
    ('data.path', '', "data.name='folder': a folder with one subfolder of image files per split "
     "(PATH/train, PATH/test; all of one size); 'npz': an .npz with one uint8 array [N, H, W] "
     'or [N, H, W, C] per split, named by data.train_split / data.eval_split.'),
    ('data.skip_unreadable', False, "data.name='folder': leave out (and count) image files whose "
     'header cannot be read, instead of stopping at the first one.'),
    ('data.bits', 8, "Quantise 'none' data to this many bits per value (Glow's 5-bit CelebA-HQ: "
     '5); the likelihood then has 2**bits levels.'),
    ('data.input', 'auto', f'One of {data.INPUTS}: memory reads the training split whole into '
     'every process; stream reads each step\'s batch with grain, each process only its own part, '
     'its position saved in every checkpoint; auto streams a split larger than '
     'data.memory_limit_gb. Both give the same batches for the same seed and step.'),
    ('data.memory_limit_gb', 4.0, "data.input='auto': a training split of more uint8 bytes than "
     'this streams.'),
    ('data.workers', 0, 'Streaming: grain worker processes that read and decode (0: threads of '
     'the training process).'),
    ('data.prefetch', 2, 'Streaming: calls of train.steps_per_call batches read ahead.'),
    ('data.data_dir', '', "TFDS's data directory; '' reads $TFDS_DATA_DIR, else TFDS's default "
     '(~/tensorflow_datasets).'),
    ('data.binarization', 'dynamic', f'One of {BINARIZATIONS}: static (as stored, or thresholded '
     'once), dynamic (Bernoulli(pixel) redrawn every step, a fixed draw for evaluation), none '
     '(grey levels or colour).'),
    ('data.train_split', 'train', 'The split trained on.'),
    ('data.eval_split', 'test', 'The split of the periodic and final evaluations.'),
    ('data.cache', True, 'Keep each decoded TFDS split in the user cache ($VAE_JAX_CACHE_DIR, '
     'else ~/.cache/vae_jax/datasets), keyed by dataset, version and split and checked against '
     'the dataset\'s files and its own checksums: the next start reads one file instead of '
     'decoding every record. False reads the TFDS files every time.'),
    ('data.download', True, 'Download and prepare a missing TFDS dataset (needs internet); False '
     'names the dataset and the command that prepares it instead.'),

    ('model.architecture', 'mlp', f'Encoder and decoder nets: one of {ARCHITECTURES}.'),
    ('model.hidden', (400,), "The MLP's hidden widths, of the encoder and (in the same order) the decoder."),
    ('model.conv_features', (32, 64), 'Channels of the conv nets: one stride-2 3x3 layer each in the encoder, one 2x '
     'upsampling stage each in the decoder.'),
    ('model.latent_dim', 20, 'Size of z_1, the bottom (or only) stochastic layer.'),
    ('model.upper_latent_dims', (), 'Stochastic layers above z_1, bottom-up (Burda et al. '
     "2015's two layers: (50,))."),
    ('model.upper_hidden', (), 'The deterministic widths between z_l and z_{l+1}, one tuple per '
     'entry of upper_latent_dims.'),
    ('model.activation', 'relu', f'One of {ACTIVATIONS}.'),
    ('model.likelihood', 'bernoulli', 'p(x | z): bernoulli (binary data), gaussian (dequantised: '
     'log p(x) in discrete units), discretized_logistic, logistic_mixture (num_mixtures '
     'components per pixel, Salimans et al. 2017; channel-autoregressive for colour), '
     'local_bernoulli (binary data, each pixel also conditioned on its causal neighbours '
     'within context_radius), causal_bernoulli (binary data, each pixel conditioned on '
     'context_features learned features of its causal past: a small PixelCNN-style network '
     'over x, context_layers deep).'),
    ('model.num_mixtures', 10, 'Components of the logistic_mixture likelihood.'),
    ('model.context_radius', 1, 'The local_bernoulli likelihood\'s context: each pixel\'s logit '
     'also reads the pixels before it within this radius (r rows of 2r + 1 above, r to the '
     'left: 4 at 1, 12 at 2), with weights the decoder emits; for causal_bernoulli the window '
     'its first layer reads.'),
    ('model.context_features', 12, 'causal_bernoulli: learned context features per pixel (the '
     'decoder emits one weight for each).'),
    ('model.context_layers', 3, 'causal_bernoulli: layers of its causal network (the first '
     'reads the context_radius window, each further one a causal 3x3 neighbourhood).'),
    ('model.prior', 'standard_normal', 'p(z) of the top layer: standard_normal, mixture '
     '(prior_components learned Gaussians) or vamp (Tomczak & Welling 2018: prior_components '
     'pseudo-inputs through the encoder); for a VQ-VAE (posterior vq) a prior over its code '
     'grid: uniform while it trains, pixelcnn (an autoregressive prior, learned afterwards by '
     'objective code_prior from the VQ-VAE in prior_workdir).'),
    ('model.prior_components', 500, 'Components of the mixture and vamp priors.'),
    ('model.posterior', 'gaussian', 'q(z_1 | x): gaussian, iaf (Kingma et al. 2016): '
     'iaf_steps MADE steps on the Gaussian, or vq (the VQ-VAE, van den Oord et al. 2017): the '
     "conv encoder's grid of latent_dim-vectors, each replaced by the nearest of "
     'codebook_size codebook vectors (a one-hot q).'),
    ('model.codebook_size', 512, 'vq: K, the codebook vectors (codes).'),
    ('model.codebook_update', 'ema', "vq: how the codebook learns: 'ema', moving averages of "
     "the vectors assigned to each code (van den Oord et al. 2017, app. A.1), or 'loss', "
     'gradients of |sg(z_e) - e|^2 (eq. 3).'),
    ('model.codebook_decay', 0.99, 'vq with ema: the decay of the moving averages.'),
    ('model.codebook_restart', 0.0, "vq with ema: a code whose moving-average count (assignments "
     'per batch) falls below this is moved to an encoder output of the batch drawn at random '
     '(dead-code restarts); 0: never.'),
    ('model.vq_residual_blocks', 2, 'vq: residual blocks after the encoder\'s strided '
     'convolutions (one stride-2 4x4 layer per entry of conv_features) and before the '
     "decoder's."),
    ('model.prior_features', 64, 'pixelcnn: channels of the prior over the code grid.'),
    ('model.prior_layers', 8, 'pixelcnn: its residual masked 3x3 layers (after a 7x7 one).'),
    ('model.prior_workdir', '', 'code_prior: the workdir of the trained VQ-VAE (objective '
     'vq_vae) whose encoder, codebook and decoder the prior is learned for; they are loaded at '
     'the first step and stay frozen.'),
    ('model.iaf_steps', 2, 'Autoregressive steps of the iaf posterior.'),
    ('model.iaf_hidden', (320, 320), 'Hidden widths of each MADE step.'),
    ('model.iaf_context_dim', 100, 'Size of the context h the encoder gives each IAF step.'),
    ('model.conditional', False, 'Conditional VAE (Sohn et al. 2015): the label joins the '
     "encoder's and the decoder's inputs."),
    ('model.class_conditional_prior', False, 'With conditional: also learn p(z | y), one '
     'Gaussian per class.'),
    ('model.hierarchy', 'bottom_up', "bottom_up (Burda's chain, the decoder on z_1) or "
     'top_down (Ladder VAE, NVAE, VDVAE: groups from the top, each with p(z_l | z_>l) and '
     'q(z_l | x, z_>l), the decoder reading the whole top-down state).'),
    ('model.groups', (), 'top_down: the latent size of each stochastic group, bottom-up: dense '
     "latents with MLP blocks for architecture 'mlp' (LVAE on MNIST: (64, 32, 16, 8, 4)), latent "
     "channels with bottleneck ResNet blocks for 'conv'."),
    ('model.group_resolutions', (), "top_down with 'conv': each group's resolution, one per "
     'group, each dividing the one below (MNIST: (28, 14, 14, 7, 1)).'),
    ('model.state_width', 256, 'top_down: the top-down state (units or channels).'),
    ('model.block_hidden', 128, "top_down: the residual blocks' inner width."),
    ('model.encoder_blocks', 1, 'top_down: bottom-up blocks per group (dense) or per resolution '
     '(spatial).'),
    ('model.merge', 'residual', 'top_down: q from the state and the bottom-up features, residual '
     "(NVAE, relative to the prior) or precision (LVAE's precision-weighted merge)."),
    ('model.scale', 'softplus', 'top_down: softplus or exp of the raw standard deviations.'),
    ('model.scan_groups', True, 'top_down: identical consecutive groups compile once (nn.scan).'),
    ('model.remat', False, "top_down: recompute each group's activations in the backward pass "
     '(less memory, more compute).'),

    ('objective.name', 'elbo', f'One of {OBJECTIVES}: the ELBO, the IWAE bound with '
     'num_samples samples (Burda et al. 2015), a disentangling objective: beta_tcvae (Chen '
     'et al. 2018), factor_vae (Kim & Mnih 2018), dip_vae_i and dip_vae_ii (Kumar et al. '
     '2018), or a VQ-VAE stage: vq_vae (van den Oord et al. 2017: reconstruction, commitment '
     'and codebook) and code_prior (its prior over the codes, the rest frozen).'),
    ('objective.beta', 1.0, 'The KL weight (beta-VAE; the rate-distortion trade-off). Not for '
     'iwae.'),
    ('objective.kl_warmup_steps', 0, 'Steps over which the KL weight rises linearly from 0 to '
     'beta; 0: no warm-up. Not for iwae.'),
    ('objective.free_bits', 0.0, 'A floor in nats under the KL of each latent (Kingma et al. '
     '2016, batch-averaged); 0: none. elbo only.'),
    ('objective.num_samples', 1, 'k of the IWAE bound (1 for the ELBO).'),
    ('objective.tc_weight', 1.0, 'The weight of the total correlation: beta of beta_tcvae (Chen '
     'et al. 2018, whose MI and dimension-wise KL terms take objective.beta; tc_weight = beta '
     'is the beta-VAE), gamma of factor_vae (Kim & Mnih 2018: 10 to 100 on dSprites). '
     'beta_tcvae and factor_vae only.'),
    ('objective.tc_estimator', 'mws', f'One of {objectives.TC_ESTIMATORS}: how beta_tcvae '
     'estimates q(z) from a batch, minibatch weighted or stratified sampling (Chen et al. '
     '2018; mss is unbiased). beta_tcvae only.'),
    ('objective.dip_lambda_od', 10.0, 'DIP-VAE (Kumar et al. 2018): the weight of the squared '
     'off-diagonal covariances. dip_vae_i and dip_vae_ii only.'),
    ('objective.dip_lambda_d', 100.0, "DIP-VAE: the weight of the diagonal's squared distance "
     'from 1 (the paper: 10 x dip_lambda_od for dip_vae_i, 1 x for dip_vae_ii). dip_vae_i and '
     'dip_vae_ii only.'),
    ('objective.discriminator_hidden', (1000,) * 6, "FactorVAE's discriminator: hidden widths, "
     'leaky ReLU (the paper: 6 x 1,000). factor_vae only.'),
    ('objective.discriminator_learning_rate', 1e-4, "The discriminator's Adam learning rate "
     '(its own optimiser, constant). factor_vae only.'),
    ('objective.discriminator_b1', 0.5, "The discriminator's Adam b1. factor_vae only."),
    ('objective.discriminator_b2', 0.9, "The discriminator's Adam b2. factor_vae only."),
    ('objective.commitment', 0.25, "The commitment loss's weight (the VQ-VAE paper's beta). "
     'vq_vae only.'),

    ('optimizer.name', 'adam', f'One of {OPTIMIZERS}.'),
    ('optimizer.learning_rate', 1e-3, 'The peak learning rate.'),
    ('optimizer.schedule', 'constant', f'One of {SCHEDULES}: cosine decays to 0 over the run, '
     'warmup_cosine after warmup_steps of linear warm-up; burda is the IWAE paper\'s 8 stages at '
     'learning_rate * 10^(-i/7), lasting in proportion 3^i (the paper\'s 3^i epochs, fitted to the '
     'run\'s length), burda_equal the same in equal stages. '
     'Schedules shaped by the run length refuse a change of length on resume.'),
    ('optimizer.warmup_steps', 0, 'Steps of linear warm-up from 0 (constant and warmup_cosine).'),
    ('optimizer.weight_decay', 0.0, 'Decoupled weight decay for adamw; for the others an L2 term '
     'added to the gradients.'),
    ('optimizer.grad_clip_norm', 0.0, 'Clip the global gradient norm to this; 0: no clipping.'),
    ('optimizer.skip_threshold', 0.0, "VDVAE's skip: an update whose gradient norm (before "
     'clipping) exceeds this is not applied, and counted in the logs (skipped); 0: never skip.'),
    ('optimizer.ema_decay', 0.0, 'Evaluation and samples use an exponential moving average of the '
     'parameters with this decay (VDVAE: 0.9999), kept in the checkpoints; 0: the parameters.'),
    ('optimizer.b1', 0.9, "Adam's first-moment decay; sgd's momentum (0: none)."),
    ('optimizer.b2', 0.999, "Adam's second-moment decay."),
    ('optimizer.eps', 1e-8, "Adam's epsilon."),

    ('train.batch_size', 128, 'The global batch, split over every device of every process.'),
    ('train.num_epochs', 0.0, '> 0: the training length in epochs (overrides num_steps).'),
    ('train.num_steps', 10_000, 'The training length in steps (when num_epochs is 0).'),
    ('train.steps_per_call', 10, 'Steps run in one compiled call (lax.scan); the log, eval and '
     'checkpoint intervals must be multiples of it.'),
    ('train.log_every_steps', 500, 'Steps between train lines (console, metrics.jsonl, '
     'TensorBoard).'),
    ('train.eval_every_steps', 2_500, 'Steps between evaluations on data.eval_split, with sample '
     'and reconstruction grids.'),
    ('train.checkpoint_every_steps', 2_500, 'Steps between checkpoints.'),
    ('train.max_checkpoints_to_keep', 3, 'Checkpoints kept; older ones are deleted.'),
    ('train.nan_policy', 'stop', f'One of {NAN_POLICIES}: on a non-finite loss or gradient, stop '
     '(the last checkpoint is kept), or skip the update.'),
    ('train.max_consecutive_nonfinite', 10, 'With skip: stop after this many non-finite steps in '
     'a row.'),
    ('train.num_seeds', 1, '> 1: that many seeds (seed, seed + 1, ...) trained at once, vmapped in '
     'one program; each replica keeps its own dir WORKDIR/seed_<seed>.'),
    ('train.exact_replicas', True, 'On CPU, compile the step so that a vmapped replica is '
     'bit-identical to the one-seed run; False is a little faster at small batches (on jaxlib '
     '0.10.2-0.11 only with VAE_JAX_KEEP_XLA_DEFAULTS=1, see the README), and replicas then '
     'agree with single runs to rounding.'),

    ('eval.batch_size', 500, 'Images per evaluation batch (global).'),
    ('eval.num_importance_samples', 0, 'K of the final importance-sampled log p(x) (5,000 for '
     'published numbers); 0 skips it.'),
    ('eval.importance_batch_size', 2, 'Images per call of the log p(x) estimate.'),
    ('eval.importance_chunk_size', 500, 'Samples per chunk of K (a running logsumexp bounds the '
     'memory).'),
    ('eval.disentanglement', True, 'On data with ground-truth factors (rendered_shapes, '
     'dsprites, shapes3d), end training with the beta-VAE and FactorVAE scores, MIG, DCI and '
     "SAP of the posterior means (Locatello et al. 2019's protocol) in final_metrics.json; "
     'other data have no factors to score against.'),
    ('eval.disentanglement_num_train', 10_000, 'Points each disentanglement metric fits on '
     "(disentanglement_lib's 10,000)."),
    ('eval.disentanglement_num_eval', 5_000, 'Points each disentanglement metric scores on '
     "(disentanglement_lib's 5,000)."),

    ('sampling.num_samples', 64, 'Prior samples in samples.png.'),
    ('sampling.temperature', 1.0, "Scales the prior's standard deviations when sampling."),
    ('sampling.num_reconstructions', 32, 'Evaluation images (and their reconstructions) in '
     'reconstructions.png.'),

    ('logging.tensorboard', True, 'Write TensorBoard events under WORKDIR/tensorboard.'),
    ('logging.trackers', '', "Also send the metrics, pictures, config and final metrics to "
     "experiment trackers: 'wandb', 'mlflow' or 'wandb,mlflow' (pip install -e .[trackers]); "
     'where they go is their own setting (W&B login or WANDB_MODE=offline, '
     'MLFLOW_TRACKING_URI). A resumed run continues the same tracker run.'),
    ('logging.project', 'vae_jax', 'The W&B project and the MLflow experiment of the run.'),

    ('resume.allow_config_change', False, 'Resume a workdir whose saved config differs in a '
     'field that changes what is trained (the differences are printed as warnings).'),
)

SECTIONS = {
    'data': 'What is trained on.',
    'model': 'p(z), q(z | x) and p(x | z).',
    'objective': 'What the step maximises.',
    'optimizer': 'How the parameters move.',
    'train': 'The loop.',
    'eval': 'Evaluations during and after training.',
    'sampling': 'The pictures.',
    'logging': 'Where the numbers go.',
    'resume': 'Starting again in a workdir that has checkpoints.',
}


def default_config() -> ml_collections.ConfigDict:
  """The defaults every experiment config starts from (a small MLP VAE)."""
  c = ml_collections.ConfigDict()
  for name, default, _ in FIELDS:
    *sections, leaf = name.split('.')
    node = c
    for section in sections:
      if section not in node:
        node[section] = ml_collections.ConfigDict()
      node = node[section]
    node[leaf] = default
  return c


def reference() -> str:
  """docs/config.md: every field, its default and what it does, by section."""
  lines = ['# Config reference', '',
           'Every field of `vae_jax.config.default_config()`, which every file in configs/ '
           'starts from. Set any of them on the command line: `--config.train.num_steps=500`. '
           'Fields marked *resumable* may change when a run is resumed; any other change is '
           'refused unless `resume.allow_config_change` is set.', '',
           'Generated from `vae_jax/config.py` by `python -m vae_jax.config > docs/config.md`.',
           '']
  section = None
  for name, default, doc in FIELDS:
    head = name.split('.')[0] if '.' in name else ''
    if head != section:
      if section is not None:
        lines.append('')
      section = head
      title = head or 'top level'
      lines += [f'## {title}', '']
      if head in SECTIONS:
        lines += [SECTIONS[head], '']
      lines += ['| field | default | |', '|---|---|---|']
    resumable = matches(name, RESUMABLE_PREFIXES)
    note = ' *resumable*' if resumable else ''
    text = doc.replace('|', '\\|')
    lines.append(f'| `{name}` | `{default!r}` | {text}{note} |')
  return '\n'.join(lines) + '\n'


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
  _check(isinstance(_get(config, 'data.cache'), bool), 'data.cache',
         f'expected True or False, got {config.data.cache!r}')
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
  _check(config.model.likelihood not in ('bernoulli', 'local_bernoulli', 'causal_bernoulli')
         or binary,
         'model.likelihood', f"{config.model.likelihood!r} needs binary data "
         "(data.binarization 'static' or 'dynamic')")
  bits = config.data.get('bits', 8)
  _check(bits == 8 or config.model.likelihood == 'gaussian', 'data.bits',
         f'{bits}-bit data need a likelihood with 2**{bits} levels: model.likelihood='
         f"'gaussian' (dequantised); {config.model.likelihood!r} has 256 bins")
  try:
    shape = data.image_shape(config.data)
    models.validate_config(config.model, has_labels=data.has_labels(config.data.name),
                           channels=shape[-1], image_size=shape[0])
  except (models.ModelConfigError, data.DatasetError) as e:
    raise ConfigError(str(e)) from None

  try:
    objectives.validate_config(config.objective, default_config().objective)
  except objectives.ObjectiveConfigError as e:
    raise ConfigError(str(e)) from None
  _validate_disentangling(config)
  _validate_vq(config)

  try:
    optim.validate_config(config.optimizer, default_config().optimizer)
  except optim.OptimizerConfigError as e:
    raise ConfigError(str(e)) from None

  for field in ('train.batch_size', 'train.num_steps', 'train.steps_per_call',
                'train.log_every_steps', 'train.eval_every_steps',
                'train.checkpoint_every_steps', 'train.max_checkpoints_to_keep',
                'train.max_consecutive_nonfinite', 'train.num_seeds', 'eval.batch_size',
                'eval.importance_batch_size', 'eval.importance_chunk_size',
                'eval.disentanglement_num_train', 'eval.disentanglement_num_eval',
                'sampling.num_samples', 'sampling.num_reconstructions'):
    _positive(config, field)
  _check(_number(config, 'train.num_epochs') >= 0, 'train.num_epochs', 'must be >= 0')
  default_steps = default_config().train.num_steps
  _check(not config.train.num_epochs or config.train.num_steps == default_steps,
         'train.num_steps', f'{config.train.num_steps} would be ignored: train.num_epochs='
         f'{config.train.num_epochs} sets the length (pass --config.train.num_epochs=0 to count '
         'in steps)')
  _positive(config, 'eval.num_importance_samples', allow_zero=True)
  _check(_number(config, 'sampling.temperature') > 0, 'sampling.temperature', 'must be > 0')
  _choice(config, 'train.nan_policy', NAN_POLICIES)
  _check(trackers.problem(_get(config, 'logging.trackers')) is None, 'logging.trackers',
         str(trackers.problem(config.logging.trackers)))
  _check(isinstance(_get(config, 'logging.project'), str) and config.logging.project.strip(),
         'logging.project', f'must be a non-empty name, got {config.logging.project!r}')
  _check(isinstance(_get(config, 'eval.disentanglement'), bool), 'eval.disentanglement',
         f'expected True or False, got {config.eval.disentanglement!r}')
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


# The fields a VQ-VAE's second stage (objective code_prior) shares with the VQ-VAE it
# learns a prior for: its data and its networks' shapes.
VQ_STAGE_ONE_FIELDS = ('data.name', 'data.data_dir', 'data.binarization', 'data.train_split',
                       'data.eval_split', 'data.path', 'data.bits', 'data.skip_unreadable', 'model.architecture', 'model.conv_features',
                       'model.latent_dim', 'model.activation', 'model.likelihood',
                       'model.num_mixtures', 'model.context_radius', 'model.context_features',
                       'model.context_layers', 'model.codebook_size',
                       'model.codebook_update', 'model.vq_residual_blocks')


def _validate_vq(config):
  o, m = config.objective, config.model
  vq_objective, vq_model = o.name in objectives.VQ, m.posterior == 'vq'
  _check(vq_objective or not vq_model, 'objective.name',
         f"a VQ-VAE (model.posterior='vq') trains with objective 'vq_vae' and then its prior "
         f"with 'code_prior', not {o.name!r}")
  _check(vq_model or not vq_objective, 'model.posterior',
         f"{o.name!r} trains a VQ-VAE: it needs model.posterior='vq'")
  _check(isinstance(_get(config, 'model.prior_workdir'), str), 'model.prior_workdir',
         f'expected a path, got {m.prior_workdir!r}')
  _check(bool(m.prior_workdir) == (o.name == 'code_prior'), 'model.prior_workdir',
         "names the trained VQ-VAE that objective 'code_prior' learns a prior for; "
         + ('set it' if o.name == 'code_prior' else f'{o.name!r} has no use for it'))
  if not vq_objective:
    return
  wanted = 'uniform' if o.name == 'vq_vae' else 'pixelcnn'
  _check(m.prior == wanted, 'model.prior',
         f"{o.name!r} needs model.prior={wanted!r} (the VQ-VAE trains under the uniform prior; "
         'its prior is learned afterwards)')
  _check(config.eval.num_importance_samples == 0, 'eval.num_importance_samples',
         "a VQ-VAE's q is one-hot, so every importance sample is the same code grid and the "
         'estimate would only repeat the bound (its ELBO); it must stay 0')


def _validate_disentangling(config):
  o, m = config.objective, config.model
  if o.name not in objectives.DISENTANGLING:
    return
  name = o.name
  _check(config.train.batch_size >= 2, 'train.batch_size',
         f'{name!r} estimates statistics of q(z) from the batch: it needs 2 or more')
  for field, ok in (('model.posterior', m.posterior == 'gaussian'),
                    ('model.hierarchy', m.get('hierarchy', 'bottom_up') == 'bottom_up'),
                    ('model.upper_latent_dims', not tuple(m.upper_latent_dims))):
    _check(ok, field, f'{name!r} reads the mean and variance of one diagonal Gaussian '
           "q(z | x): it needs model.posterior='gaussian', model.hierarchy='bottom_up' and no "
           'upper_latent_dims')
  if name == 'beta_tcvae':
    _check(m.prior == 'standard_normal' and not m.class_conditional_prior, 'model.prior',
           "'beta_tcvae' splits the KL into per-latent terms, which needs a prior that "
           "factorises over latents: model.prior='standard_normal' without "
           'class_conditional_prior')


def steps_per_epoch(config) -> int:
  """Whole train steps per pass over config.data.train_split at config.train.batch_size
  (train.num_epochs counts epochs in these), known before any data is read."""
  try:
    size = data.split_size(config.data, config.data.train_split)
  except data.DatasetError as e:
    raise ConfigError(str(e)) from None
  if size is None:
    raise ConfigError(f'config.data.train_split: the size of {config.data.name}\'s '
                      f'{config.data.train_split!r} split is not known before it is read; '
                      'give durations in steps')
  return size // config.train.batch_size


def steps(config, *, steps=None, epochs=None, examples=None) -> int:
  """A duration given as exactly one of steps, epochs or examples, in train steps (rounded
  down), as big_vision's `steps()`: the one conversion a config uses for the fields counted
  in steps (kl_warmup_steps, the intervals), so none hard-codes a dataset's size. Set
  data.name, data.train_split and train.batch_size first."""
  given = [name for name, value in (('steps', steps), ('epochs', epochs), ('examples', examples))
           if value is not None]
  if len(given) != 1:
    raise ValueError(f'steps(): give exactly one of steps, epochs or examples, not '
                     f'{" and ".join(given) or "none"}')
  if steps is not None:
    return int(steps)
  if examples is not None:
    return int(examples // config.train.batch_size)
  return int(epochs * steps_per_epoch(config))


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


def matches(name, prefixes) -> bool:
  """Whether field `name` is one of `prefixes` ('a.b') or under one ('a.')."""
  return any(name == p or (p.endswith('.') and name.startswith(p)) for p in prefixes)


def varying(flat_configs) -> list:
  """The fields (sorted) whose values are not the same in every one of some
  flattened configs; a field missing from some counts as a value of its own."""
  configs = list(flat_configs)
  names = sorted(set().union(*configs)) if configs else []
  return [n for n in names if len({json.dumps(c.get(n), default=str) for c in configs}) > 1]


def differing_fields(saved: dict, current: dict, ignore=RESUMABLE_PREFIXES):
  """Fields whose values differ between two configs, as 'field: old -> new'."""
  old, new = flatten(saved), flatten(json.loads(json.dumps(current, default=list)))
  diffs = []
  for name in sorted(set(old) | set(new)):
    if matches(name, ignore):
      continue
    if old.get(name, '<missing>') != new.get(name, '<missing>'):
      diffs.append(f'{name}: {old.get(name, "<missing>")!r} -> {new.get(name, "<missing>")!r}')
  return diffs


if __name__ == '__main__':
  print(reference(), end='')
