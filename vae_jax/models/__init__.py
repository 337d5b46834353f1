"""The latent-variable models: networks, priors, posteriors, likelihoods, and the VAE.

`make_model(config.model, ...)` builds the VAE a config describes; every
family is a module in this package plus a config field, checked by
`validate_config` before anything is built.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.models import hierarchy
from vae_jax.models import likelihoods
from vae_jax.models import nets
from vae_jax.models import posteriors
from vae_jax.models import priors
from vae_jax.models import vqvae
from vae_jax.models.nets import (ACTIVATIONS, ARCHITECTURES, ConvDecoder, ConvEncoder,
                                 MLPDecoder, MLPEncoder, depth_to_space)
from vae_jax.models.vae import VAE, Layer, Terms
from vae_jax.models.vqvae import VQVAE

LIKELIHOODS = likelihoods.LIKELIHOODS
PRIORS = priors.PRIORS + vqvae.CODE_PRIORS
POSTERIORS = ('gaussian', 'iaf', 'vq')
CODEBOOK_UPDATES = vqvae.CODEBOOK_UPDATES
HIERARCHIES = ('bottom_up', 'top_down')


class ModelConfigError(ValueError):
  """A model field that cannot work; the message names the field."""


def _check(ok, field, message):
  if not ok:
    raise ModelConfigError(f'config.model.{field}: {message}')


def _check_fixed(m, fields, why):
  """Each (field, value) of `fields` must hold that value for the family `why` describes
  ('{field}' names it); an empty tuple stands for any empty sequence."""
  for field, fixed in fields:
    value = _field(m, field, fixed)
    _check(value == fixed or (fixed == () and not tuple(value)), field,
           f'{why.format(field=field)} {fixed!r}, got {value!r}')


def _positive_ints(values):
  return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def validate_config(model_config, *, has_labels, channels=None, image_size=None):
  """Rejects model fields that cannot work together, naming the first such field.

  `has_labels`: whether the dataset provides labels (a conditional VAE needs them).
  """
  m = model_config
  if _field(m, 'hierarchy', 'bottom_up') != 'bottom_up':
    _validate_top_down(m, image_size)
  _check(m.prior in PRIORS, 'prior', f'{m.prior!r} is not one of {PRIORS}')
  _check(m.posterior in POSTERIORS, 'posterior', f'{m.posterior!r} is not one of {POSTERIORS}')
  if m.posterior == 'vq' or m.prior in vqvae.CODE_PRIORS:
    _validate_vq(m, image_size)
  _check(_positive_ints([m.prior_components]), 'prior_components',
         f'must be a positive int, got {m.prior_components!r}')
  _check(_positive_ints([m.num_mixtures]), 'num_mixtures',
         f'must be a positive int, got {m.num_mixtures!r}')
  radius = _field(m, 'context_radius', 1)
  _check(_positive_ints([radius]), 'context_radius', f'must be a positive int, got {radius!r}')
  _check(radius == 1 or m.likelihood in ('local_bernoulli', 'causal_bernoulli'), 'context_radius',
         f"is the local_bernoulli and causal_bernoulli likelihoods' context; model.likelihood is "
         f'{m.likelihood!r}')
  for name in ('context_features', 'context_layers'):
    value = _field(m, name, 1)
    _check(_positive_ints([value]), name, f'must be a positive int, got {value!r}')
  _check(isinstance(m.iaf_steps, int) and m.iaf_steps >= 0, 'iaf_steps',
         f'must be an int >= 0, got {m.iaf_steps!r}')
  _check(_positive_ints(tuple(m.iaf_hidden)) and len(m.iaf_hidden) > 0, 'iaf_hidden',
         f'needs one or more positive widths, got {m.iaf_hidden!r}')
  _check(_positive_ints([m.iaf_context_dim]), 'iaf_context_dim',
         f'must be a positive int, got {m.iaf_context_dim!r}')
  for field in ('conditional', 'class_conditional_prior'):
    _check(isinstance(m[field], bool), field, f'expected True or False, got {m[field]!r}')
  _check(not m.conditional or has_labels, 'conditional',
         'this dataset has no labels (binarized_mnist provides none); a conditional VAE '
         'needs one of embedded_mnist, mnist, fashion_mnist, cifar10')
  _check(not m.class_conditional_prior or m.conditional, 'class_conditional_prior',
         'needs model.conditional=True')
  _check(not m.class_conditional_prior or m.prior == 'standard_normal', 'class_conditional_prior',
         f"replaces the prior with one Gaussian per class; model.prior must stay "
         f"'standard_normal', got {m.prior!r}")
  if m.prior == 'vamp':
    _check(m.posterior == 'gaussian', 'prior',
           "'vamp' evaluates q(z | u) at its pseudo-inputs, which needs a density in closed "
           "form: use model.posterior='gaussian'")
    _check(not m.conditional, 'prior', "'vamp' pseudo-inputs carry no label: use "
           "model.conditional=False or model.class_conditional_prior=True")
    _check(not tuple(m.upper_latent_dims), 'prior',
           "'vamp' is a prior for one stochastic layer; model.upper_latent_dims must be ()")
  if m.likelihood == 'logistic_mixture' and channels is not None:
    _check(channels in (1, 3), 'likelihood',
           f"'logistic_mixture' models 1 or 3 channels, the data have {channels}")


def _validate_vq(m, image_size):
  _check(m.posterior == 'vq', 'prior', f'{m.prior!r} is a prior over the code grid of a '
         "VQ-VAE: it needs model.posterior='vq'")
  _check(m.prior in vqvae.CODE_PRIORS, 'prior', f"a VQ-VAE's prior is over its codes: one of "
         f'{vqvae.CODE_PRIORS} (uniform while it trains, pixelcnn learned from a trained '
         f'one), got {m.prior!r}')
  _check_fixed(m, (('architecture', 'conv'), ('hierarchy', 'bottom_up'), ('conditional', False),
                   ('upper_latent_dims', ())),
               'a VQ-VAE is one conv encoder, codebook and decoder; {field} must be')
  _check(_positive_ints(tuple(m.conv_features)) and len(m.conv_features) > 0, 'conv_features',
         f'needs one or more positive widths, got {m.conv_features!r}')
  if image_size is not None:
    factor = 2 ** len(m.conv_features)
    _check(image_size % factor == 0, 'conv_features',
           f'{len(m.conv_features)} stride-2 layers need an image size divisible by {factor}, '
           f'the images are {image_size}')
  for field in ('codebook_size', 'latent_dim', 'prior_features', 'prior_layers'):
    _check(_positive_ints([m[field]]), field, f'must be a positive int, got {m[field]!r}')
  _check(isinstance(m.vq_residual_blocks, int) and m.vq_residual_blocks >= 0,
         'vq_residual_blocks', f'must be an int >= 0, got {m.vq_residual_blocks!r}')
  _check(m.codebook_update in CODEBOOK_UPDATES, 'codebook_update',
         f'{m.codebook_update!r} is not one of {CODEBOOK_UPDATES}')
  _check(0 < m.codebook_decay < 1, 'codebook_decay', f'must be in (0, 1), got {m.codebook_decay!r}')
  _check(m.codebook_restart >= 0, 'codebook_restart', f'must be >= 0, got {m.codebook_restart!r}')
  _check(m.codebook_restart == 0 or m.codebook_update == 'ema', 'codebook_restart',
         "restarts move codes by their moving-average counts, which only "
         "codebook_update='ema' keeps")


def _validate_top_down(m, image_size):
  _check(m.hierarchy in HIERARCHIES, 'hierarchy', f'{m.hierarchy!r} is not one of {HIERARCHIES}')
  groups, resolutions = tuple(m.groups), tuple(m.group_resolutions)
  _check(_positive_ints(groups) and len(groups) > 0, 'groups',
         f'a top-down hierarchy needs one positive latent size per group, got {groups!r}')
  for field in ('state_width', 'block_hidden', 'encoder_blocks'):
    _check(_positive_ints([m[field]]), field, f'must be a positive int, got {m[field]!r}')
  _check(m.merge in hierarchy.MERGES, 'merge', f'{m.merge!r} is not one of {hierarchy.MERGES}')
  _check(m.scale in hierarchy.SCALES, 'scale', f'{m.scale!r} is not one of {hierarchy.SCALES}')
  for field in ('scan_groups', 'remat'):
    _check(isinstance(m[field], bool), field, f'expected True or False, got {m[field]!r}')
  _check_fixed(m, (('prior', 'standard_normal'), ('posterior', 'gaussian'), ('conditional', False),
                   ('upper_latent_dims', ())),
               'a top-down hierarchy has its own priors p(z_l | z_>l) and Gaussian posteriors; '
               '{field} must stay')
  if m.architecture == 'conv':
    _check(len(resolutions) == len(groups) and _positive_ints(resolutions), 'group_resolutions',
           f'a spatial hierarchy needs one resolution per group ({len(groups)}), '
           f'got {resolutions!r}')
    below = image_size
    for r in resolutions:
      _check(r <= (below or r) and (below or r) % r == 0, 'group_resolutions',
             f'each resolution must divide the one below it (the image: {image_size}) and '
             f'not exceed it, got {resolutions!r}')
      below = r
  else:
    _check(not resolutions, 'group_resolutions',
           f"dense groups (architecture 'mlp') have no resolution, got {resolutions!r}")


def _upper_layers(model_config, activation):
  """The MLPs of q(z_{l+1} | z_l) and p(z_l | z_{l+1}) for the layers above z_1.

  Each p mirrors its q, as the decoder mirrors the encoder; both emit the
  (mean, log_var) of a diagonal Gaussian.
  """
  dims = tuple(model_config.get('upper_latent_dims', ()))
  hidden = tuple(tuple(h) for h in model_config.get('upper_hidden', ()))
  below = (model_config.latent_dim,) + dims[:-1]
  encoders = tuple(MLPEncoder(h, 2 * d, activation) for h, d in zip(hidden, dims))
  upper_priors = tuple(MLPEncoder(tuple(reversed(h)), 2 * d, activation)
                       for h, d in zip(hidden, below))
  return encoders, upper_priors, dims


def _field(model_config, name, default):
  """A field that configs written before it existed lack (an older workdir's config.json)."""
  return model_config.get(name, default)


def _posterior(model_config):
  if _field(model_config, 'posterior', 'gaussian') == 'iaf':
    return posteriors.IAFPosterior(model_config.iaf_steps, tuple(model_config.iaf_hidden),
                                   model_config.iaf_context_dim)
  return posteriors.DiagonalGaussian()


def _prior(model_config, top_dim, image_shape, num_classes):
  name = _field(model_config, 'prior', 'standard_normal')
  if _field(model_config, 'class_conditional_prior', False):
    return priors.ClassConditionalGaussian(top_dim, num_classes)
  if name == 'mixture':
    return priors.MixtureOfGaussians(top_dim, model_config.prior_components)
  if name == 'vamp':
    return priors.VampPrior(model_config.prior_components, tuple(image_shape))
  return priors.StandardNormal(top_dim)


def make_model(model_config, image_shape, *, levels=256, num_classes=0) -> VAE:
  """Builds the VAE described by the config's `model` fields for `image_shape`.

  `levels` is the number of pixel values of the data (2 binary, 256 8-bit), which a
  dequantised continuous likelihood needs; `num_classes` the dataset's labels, used
  when model.conditional is set. `hidden` (or `conv_features`) and `latent_dim`
  give the bottom layer x <-> z_1; `upper_latent_dims` and `upper_hidden` add
  stochastic layers above it, MLPs with the same activation.
  """
  activation = ACTIVATIONS[model_config.activation]
  channels = image_shape[-1]
  likelihood = likelihoods.make_likelihood(
      model_config.likelihood, channels=channels, levels=levels,
      num_mix=_field(model_config, 'num_mixtures', 10),
      context_radius=_field(model_config, 'context_radius', 1),
      context_features=_field(model_config, 'context_features', 12),
      context_layers=_field(model_config, 'context_layers', 3))
  if _field(model_config, 'hierarchy', 'bottom_up') == 'top_down':
    return _top_down(model_config, image_shape, likelihood, activation)
  if _field(model_config, 'posterior', 'gaussian') == 'vq':
    return _vq_vae(model_config, image_shape, likelihood, activation)
  out_channels = likelihood.out_channels(channels)
  posterior = _posterior(model_config)
  features = posterior.num_features(model_config.latent_dim)
  if model_config.architecture == 'mlp':
    encoder = MLPEncoder(tuple(model_config.hidden), features, activation)
    decoder = MLPDecoder(tuple(reversed(model_config.hidden)), tuple(image_shape), out_channels,
                         activation)
  elif model_config.architecture == 'conv':
    encoder = ConvEncoder(tuple(model_config.conv_features), features, activation)
    decoder = ConvDecoder(tuple(model_config.conv_features), tuple(image_shape), out_channels,
                          activation)
  else:
    raise ValueError(f'config.model.architecture: unknown {model_config.architecture!r}')
  upper_encoders, upper_priors, upper_dims = _upper_layers(model_config, activation)
  conditional = _field(model_config, 'conditional', False)
  top_dim = (model_config.latent_dim,) + upper_dims
  prior = _prior(model_config, top_dim[-1], image_shape, num_classes)
  return VAE(encoder, decoder, likelihood, posterior, prior, model_config.latent_dim,
             upper_encoders, upper_priors, upper_dims, num_classes if conditional else 0)


def _top_down(m, image_shape, likelihood, activation):
  if m.architecture == 'conv':
    shapes = tuple((r, r, c) for r, c in zip(m.group_resolutions, m.groups))
  else:
    shapes = tuple((d,) for d in m.groups)
  return hierarchy.TopDownVAE(
      likelihood, tuple(image_shape), shapes, m.state_width, m.block_hidden, activation,
      merge=m.merge, scale=m.scale, encoder_blocks=m.encoder_blocks, scan=m.scan_groups,
      remat=m.remat)


def _vq_vae(m, image_shape, likelihood, activation):
  features = tuple(m.conv_features)
  factor = 2 ** len(features)
  grid = (image_shape[0] // factor, image_shape[1] // factor)
  size = m.codebook_size
  if m.prior == 'pixelcnn':
    prior = vqvae.PixelCNNPrior(size, grid, m.prior_features, m.prior_layers)
  else:
    prior = vqvae.UniformCodes(size, grid)
  return VQVAE(
      vqvae.VQEncoder(features, m.latent_dim, m.vq_residual_blocks, activation),
      vqvae.VQDecoder(features, likelihood.out_channels(image_shape[-1]), m.vq_residual_blocks,
                      activation),
      vqvae.Codebook(size, m.latent_dim, ema=m.codebook_update == 'ema', decay=m.codebook_decay,
                     restart=m.codebook_restart), likelihood, prior, grid)


def init_params(model, key, image_shape):
  """The model's initial parameters from `key` (the 'params' stream), for images of image_shape.

  One compiled program (a restart reads it from the compilation cache) instead of one
  per initialiser, which took ~2 s of a warm restart. Its values are the op-by-op
  ones bit for bit (tests/test_models.py), except for a VampPrior's pseudo-inputs,
  mean + std * normal, which XLA contracts into one rounding under jit: models with
  a VampPrior initialise op by op, as they always have, so that every recorded
  number stays what it was.
  """
  if isinstance(getattr(model, 'prior', None), priors.VampPrior):
    return _init_params(model, key, tuple(image_shape))
  return _jitted_init_params(model, key, tuple(image_shape))


def _init_params(model, key, image_shape):
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  eps = jnp.zeros((1, 1, model.noise_dim))
  labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
  return model.init({'params': key}, x, eps, labels)['params']


_jitted_init_params = jax.jit(_init_params, static_argnums=(0, 2))


def count_params(params) -> int:
  """Number of scalars in a parameter pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
