"""Observation models p(x | z): they read the decoder's output.

A likelihood is a frozen dataclass (hashable, no parameters of its own):
`out_channels(C)` decoder outputs per pixel, `log_prob(x, out)` summed over an
image's [H, W, C] axes, `mean(out)` and `sample(key, out)` as images in [0, 1].
Images arrive in [0, 1]; `x` may have fewer leading axes than `out` (one image
against k decoded samples of it).

Continuous densities on discrete pixels are dequantised (Theis et al. 2016, "A
note on the evaluation of generative models"): the data arrive as (v + u) /
levels with u ~ U[0, 1) (data.to_float), and the Gaussian subtracts D log levels
so that its value is a lower bound on the discrete log P(x), in the same units
as a Bernoulli's or a discretised logistic's (bits/dim comparable).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from vae_jax import distributions

LIKELIHOODS = ('bernoulli', 'local_bernoulli', 'gaussian', 'discretized_logistic',
               'logistic_mixture')


def _flat_rows(x, out, c):
  """Each image as one row [..., 1, 1, c * H * W * C], the c parameter planes one after another.

  XLA:CPU vectorises an elementwise loop along the minor axis only, and MNIST's
  minor axis has length 1: flat rows made the K=5,000 evaluation 2.2x faster
  (Bernoulli) to 4x faster (Gaussian) on a 2-core CPU. The planes stay where the
  elementwise log-densities' split of the last axis finds them.
  """
  *lead, height, width, channels = out.shape
  out = out.reshape(*lead, height * width, c, channels // c)
  out = jnp.swapaxes(out, -3, -2).reshape(*lead, 1, 1, -1)
  return x.reshape(*x.shape[:-3], 1, 1, -1), out


def _split(out):
  return jnp.split(out, 2, axis=-1)


@dataclasses.dataclass(frozen=True)
class Bernoulli:
  """p(x | z) = prod Bernoulli(x | sigmoid(logits)), for binary images."""

  dequantize = False

  def out_channels(self, channels):
    return channels

  def log_prob(self, x, out):
    x, out = _flat_rows(x, out, 1)
    return distributions.sum_event(distributions.bernoulli_log_prob(x, out), 3)

  def mean(self, out):
    return jax.nn.sigmoid(out)

  def sample(self, key, out):
    return jax.random.bernoulli(key, jax.nn.sigmoid(out)).astype(out.dtype)


def context_size(radius):
  """Pixels before (y, x) in raster order within `radius`: r rows of 2r + 1, then r to the left."""
  return radius * (2 * radius + 1) + radius


def _windows(x, radius):
  """x [..., H, W, C] -> [..., H, W, C, m]: each pixel's causal context (0 outside the image).

  The context of (y, x) is the (r + 1) x (2r + 1) window whose last row is row y
  and whose middle column is x, read in raster order up to (y, x) itself.
  """
  height, width = x.shape[-3:-1]
  r = radius
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(r, 0), (r, r), (0, 0)])
  shifted = [padded[..., r + dy:r + dy + height, r + dx:r + dx + width, :]
             for dy in range(-r, 1) for dx in range(-r, r + 1)]
  return jnp.stack(shifted[:context_size(r)], axis=-1)


@dataclasses.dataclass(frozen=True)
class LocalBernoulli:
  """A locally autoregressive Bernoulli: pixel i's logit is a_i + sum_j w_ij x_j over its context.

  The context is the pixels before i in raster order within `radius` (r rows
  above, 2r + 1 wide, and r to the left: 4 pixels at r = 1, 12 at r = 2), 0
  outside the image; a_i and the m weights w_ij are decoder outputs, so they
  depend on z. Given z the pixels form a chain p(x | z) = prod_i p(x_i | x_<i, z),
  normalised exactly, and its local correlations (a stroke's continuation, its
  edges) no longer have to come from the latents: the VLAE / PixelVAE idea with
  a small, linear receptive field (Chen et al. 2017, Gulrajani et al. 2017), at
  the cost of m + 1 decoder outputs per pixel. `mean` and `sample` run the chain
  pixel by pixel; the mean is the mean-field image (each pixel's probability
  given its context's probabilities), exact when the weights are 0.
  """

  radius: int = 1
  dequantize = False

  def out_channels(self, channels):
    return channels * (1 + context_size(self.radius))

  def _split(self, out, channels):
    m = context_size(self.radius)
    return out[..., :channels], out[..., channels:].reshape(out.shape[:-1] + (channels, m))

  def log_prob(self, x, out):
    channels = x.shape[-1]
    base, weights = self._split(out, channels)
    logits = base + jnp.sum(weights * _windows(x, self.radius), axis=-1)
    return Bernoulli().log_prob(x, logits)

  def _chain(self, out, draw):
    """Runs the chain in raster order; `draw(index, probabilities)` gives pixel `index`'s value."""
    *lead, height, width, _ = out.shape
    r, m = self.radius, context_size(self.radius)
    channels = out.shape[-1] // (1 + m)
    base, weights = self._split(out, channels)
    padded = jnp.zeros(tuple(lead) + (height + r, width + 2 * r, channels), out.dtype)
    starts = (0,) * len(lead)

    def step(i, padded):
      y, x = i // width, i % width
      window = jax.lax.dynamic_slice(padded, starts + (y, x, 0),
                                     tuple(lead) + (r + 1, 2 * r + 1, channels))
      context = window.reshape(tuple(lead) + ((r + 1) * (2 * r + 1), channels))[..., :m, :]
      a = jax.lax.dynamic_slice(base, starts + (y, x, 0), tuple(lead) + (1, 1, channels))
      w = jax.lax.dynamic_slice(weights, starts + (y, x, 0, 0),
                                tuple(lead) + (1, 1, channels, m))
      logit = a[..., 0, 0, :] + jnp.sum(w[..., 0, 0, :, :] * jnp.swapaxes(context, -1, -2), -1)
      value = draw(i, jax.nn.sigmoid(logit))
      return jax.lax.dynamic_update_slice(padded, value[..., None, None, :],
                                          starts + (y + r, x + r, 0))

    padded = jax.lax.fori_loop(0, height * width, step, padded)
    return padded[..., r:, r:r + width, :]

  def mean(self, out):
    return self._chain(out, lambda i, p: p)

  def sample(self, key, out):
    *lead, height, width, _ = out.shape
    channels = out.shape[-1] // (1 + context_size(self.radius))
    u = jax.random.uniform(key, tuple(lead) + (height * width, channels), out.dtype)
    return self._chain(out, lambda i, p: (u[..., i, :] < p).astype(out.dtype))


@dataclasses.dataclass(frozen=True)
class Gaussian:
  """Diagonal Gaussian N(x | mean, exp(log_var)) on dequantised pixels.

  `levels` is the number of pixel values of the data (2 binary, 256 8-bit): the
  density on [0, 1] minus D log levels is a lower bound on log P(x) of the
  discrete image. levels = 0 means real-valued data: the plain density.
  """

  levels: int = 256

  @property
  def dequantize(self):
    """Whether the data must arrive dequantised: yes, unless they are real-valued."""
    return self.levels > 0

  def out_channels(self, channels):
    return 2 * channels

  def log_prob(self, x, out):
    num_values = math.prod(x.shape[-3:])
    x, out = _flat_rows(x, out, 2)
    log_density = distributions.sum_event(distributions.gaussian_log_prob(x, *_split(out)), 3)
    if self.levels:
      return log_density - num_values * math.log(self.levels)
    return log_density

  def mean(self, out):
    return jnp.clip(_split(out)[0], 0.0, 1.0)

  def sample(self, key, out):
    mean, log_var = _split(out)
    return jnp.clip(distributions.gaussian_sample(key, mean, log_var), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class DiscretizedLogistic:
  """One logistic per channel, discretised into 256 bins (Salimans et al. 2017)."""

  dequantize = False

  def out_channels(self, channels):
    return 2 * channels

  def log_prob(self, x, out):
    x, out = _flat_rows(x, out, 2)
    mean, log_scale = _split(out)
    return distributions.sum_event(
        distributions.discretized_logistic_log_prob(2.0 * x - 1.0, mean, log_scale), 3)

  def mean(self, out):
    return jnp.clip(0.5 * (_split(out)[0] + 1.0), 0.0, 1.0)

  def sample(self, key, out):
    mean, log_scale = _split(out)
    u = jax.random.uniform(key, mean.shape, minval=1e-5, maxval=1.0 - 1e-5)
    value = mean + jnp.exp(jnp.clip(log_scale, -7.0, 7.0)) * (jnp.log(u) - jnp.log1p(-u))
    return jnp.round((jnp.clip(value, -1.0, 1.0) + 1.0) * 127.5) / 255.0


@dataclasses.dataclass(frozen=True)
class LogisticMixture:
  """A mixture of `num_mix` discretised logistics per pixel (Salimans et al. 2017, PixelCNN++).

  For colour images the channels of a pixel are one joint distribution with
  channel-autoregressive means (red, then green given red, then blue), as in
  PixelCNN++, VDVAE and NVAE.
  """

  num_mix: int = 10
  channels: int = 1
  dequantize = False

  def out_channels(self, channels):
    return distributions.logistic_mixture_channels(self.num_mix, channels)

  def log_prob(self, x, out):
    x = jnp.broadcast_to(x, out.shape[:-1] + x.shape[-1:])
    per_pixel = distributions.discretized_logistic_mixture_log_prob(
        2.0 * x - 1.0, out, self.num_mix)
    return distributions.sum_event(per_pixel, 2)

  def mean(self, out):
    return distributions.discretized_logistic_mixture_mean(out, self.num_mix, self.channels)

  def sample(self, key, out):
    return distributions.discretized_logistic_mixture_sample(key, out, self.num_mix, self.channels)


def make_likelihood(name, *, channels, levels, num_mix=10, context_radius=1):
  """The likelihood called `name`, for images with `channels` channels of `levels` values."""
  if name == 'bernoulli':
    return Bernoulli()
  if name == 'local_bernoulli':
    return LocalBernoulli(context_radius)
  if name == 'gaussian':
    return Gaussian(levels)
  if name == 'discretized_logistic':
    return DiscretizedLogistic()
  if name == 'logistic_mixture':
    return LogisticMixture(num_mix, channels)
  raise ValueError(f'config.model.likelihood: unknown {name!r}; expected one of {LIKELIHOODS}')
