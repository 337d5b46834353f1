"""Observation models p(x | z): they read the decoder's output.

A likelihood is a frozen dataclass (hashable, no parameters of its own), or for
CausalBernoulli a Flax module the model owns (its network's parameters under the
model's 'likelihood' key, so its methods run inside the model's apply):
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

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions

LIKELIHOODS = ('bernoulli', 'local_bernoulli', 'causal_bernoulli', 'gaussian',
               'discretized_logistic', 'logistic_mixture')


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


def _uniform_draws(key, out, planes):
  """A chain's `draw` for sampling: pixel i is 1 where its uniform is below its probability.

  out [..., H, W, channels * planes]: the decoder output of a chain likelihood.
  """
  *lead, height, width, _ = out.shape
  channels = out.shape[-1] // planes
  u = jax.random.uniform(key, tuple(lead) + (height * width, channels), out.dtype)
  return lambda i, p: (u[..., i, :] < p).astype(out.dtype)


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
    return self._chain(out, _uniform_draws(key, out, 1 + context_size(self.radius)))


# The taps of a causal 3x3 convolution over features that already exclude their own pixel
# (PixelCNN's mask B): the row above and the pixel to the left, and the pixel itself.
_CAUSAL_TAPS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0))


def _causal_features(x, embed, bias, kernels, biases, radius):
  """x [..., H, W, C] -> [..., H, W, C, F]: features of each pixel's causal past, per channel.

  The first layer reads the pixel's `radius` context window (PixelCNN's mask A:
  never the pixel itself); each further layer adds a causal 3x3 convolution of
  the GELU of the features (mask B) as a residual. Feature (y, x) then depends
  on the pixels before (y, x) in raster order only: every tap of mask B points
  at a position earlier in the raster or at the pixel itself, whose features
  already exclude it. The receptive field grows by a row and a column per layer.
  """
  height, width = x.shape[-3:-1]
  g = jnp.einsum('...m,mf->...f', _windows(x, radius), embed) + bias
  for kernel, b in zip(kernels, biases):
    h = jax.nn.gelu(g)
    padded = jnp.pad(h, [(0, 0)] * (h.ndim - 4) + [(1, 0), (1, 1), (0, 0), (0, 0)])
    taps = jnp.stack([padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width, :, :]
                      for dy, dx in _CAUSAL_TAPS], axis=-2)
    g = g + jnp.einsum('...tf,tfg->...g', taps, kernel) + b
  return g


def _weighted(weights, features):
  """sum_f weights * features over the last axis, as a contraction.

  Written as multiply-then-sum, jaxlib 0.10.2's XLA:CPU miscompiled it inside a
  larger fusion: with a bias added to the features and a constant added to the
  result, its YNNPACK elementwise fusion returned wrong values past the first
  ~96k elements (4,096 3x4 images), so the chain no longer summed to 1 (the test
  test_causal_bernoulli_sums_to_one_over_every_binary_image caught it). A dot
  is emitted as a dot.
  """
  return jnp.einsum('...f,...f->...', weights, features)


class CausalBernoulli(nn.Module):
  """A Bernoulli chain whose context is learned: pixel i's logit is a_i + sum_c w_ic g_c(x_<i).

  LocalBernoulli's linear context, made a small learned network: g is a
  PixelCNN-style stack of causal layers over the image (the first reads the
  `radius` window, each of the `layers - 1` others a causal 3x3 neighbourhood of
  the features below, as a residual), shared by every pixel and every image, with
  `features` channels; a_i and the `features` weights w_ic are decoder outputs,
  so they depend on z. The network reads x, not z, so under importance sampling
  it runs once per image whatever the number of samples. Its residual kernels
  start at zero, so at initialisation it is LocalBernoulli(radius) seen through a
  learned linear map of the window. Given z the chain is normalised exactly.

  This likelihood has parameters (the network's), so it is a Flax module the
  model owns: its `log_prob`, `mean` and `sample` run inside the model's apply
  (sampling.likelihood_mean), and the parameters sit under the model's
  'likelihood' key. `mean` and `sample` run the chain pixel by pixel, the whole
  network at each pixel; the mean is the mean-field image.
  """

  radius: int = 2
  features: int = 12
  layers: int = 3
  dequantize = False

  def setup(self):
    m, f = context_size(self.radius), self.features
    self.embed = self.param('embed', nn.initializers.lecun_normal(), (m, f))
    self.bias = self.param('bias', nn.initializers.zeros, (f,))
    self.kernels = self.param('kernels', nn.initializers.zeros,
                              (self.layers - 1, len(_CAUSAL_TAPS), f, f))
    self.biases = self.param('biases', nn.initializers.zeros, (self.layers - 1, f))

  def out_channels(self, channels):
    return channels * (1 + self.features)

  def context(self, x):
    """The learned context features [..., H, W, C, F] of x [..., H, W, C]."""
    return _causal_features(x, self.embed, self.bias, self.kernels, self.biases, self.radius)

  def _split(self, out, channels):
    return out[..., :channels], out[..., channels:].reshape(
        out.shape[:-1] + (channels, self.features))

  def logits(self, x, out):
    """Each pixel's logit given its causal past in x (teacher forcing), [..., H, W, C]."""
    channels = x.shape[-1]
    base, weights = self._split(out, channels)
    return base + _weighted(weights, self.context(x))

  def log_prob(self, x, out):
    return Bernoulli().log_prob(x, self.logits(x, out))

  def _chain(self, out, draw):
    """The chain in raster order; `draw(index, probabilities)` gives pixel `index`'s value."""
    *lead, height, width, _ = out.shape
    channels = out.shape[-1] // (1 + self.features)
    base, weights = self._split(out, channels)
    params = (self.embed, self.bias, self.kernels, self.biases)  # Arrays: no module calls in the loop.

    def step(i, image):
      y, x = i // width, i % width
      g = _causal_features(image, *params, self.radius)[..., y, x, :, :]
      logit = base[..., y, x, :] + _weighted(weights[..., y, x, :, :], g)
      value = draw(i, jax.nn.sigmoid(logit))
      return image.at[..., y, x, :].set(value)

    image = jnp.zeros(tuple(lead) + (height, width, channels), out.dtype)
    return jax.lax.fori_loop(0, height * width, step, image)

  def mean(self, out):
    return self._chain(out, lambda i, p: p)

  def sample(self, key, out):
    return self._chain(out, _uniform_draws(key, out, 1 + self.features))


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


def make_likelihood(name, *, channels, levels, num_mix=10, context_radius=1, context_features=12,
                    context_layers=3):
  """The likelihood called `name`, for images with `channels` channels of `levels` values."""
  if name == 'bernoulli':
    return Bernoulli()
  if name == 'local_bernoulli':
    return LocalBernoulli(context_radius)
  if name == 'causal_bernoulli':
    return CausalBernoulli(context_radius, context_features, context_layers)
  if name == 'gaussian':
    return Gaussian(levels)
  if name == 'discretized_logistic':
    return DiscretizedLogistic()
  if name == 'logistic_mixture':
    return LogisticMixture(num_mix, channels)
  raise ValueError(f'config.model.likelihood: unknown {name!r}; expected one of {LIKELIHOODS}')
