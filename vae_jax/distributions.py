"""Log-densities and KL terms used by the objectives and the evaluator.

Every function is elementwise (no reduction) unless its name says otherwise;
callers sum over the event dimensions with `sum_event`. All of them stay finite
for any finite input: logits are used through softplus (never sigmoid then log),
and log-variances are clipped to [LOG_VAR_MIN, LOG_VAR_MAX] so that no network
output can overflow float32 in `exp`.
"""

import math

import jax
import jax.numpy as jnp

# std between ~3e-7 and ~3e6: wider than any sensible model, narrow enough that
# exp(+-LOG_VAR) and (x - mean)^2 * exp(-log_var) stay finite in float32.
LOG_VAR_MIN = -30.0
LOG_VAR_MAX = 30.0
_LOG_2PI = math.log(2.0 * math.pi)


def clip_log_var(log_var):
  """Clips a log-variance into the range where float32 exp stays finite."""
  return jnp.clip(log_var, LOG_VAR_MIN, LOG_VAR_MAX)


def sum_event(x, event_ndims):
  """Sums the last `event_ndims` axes (the dimensions of one observation)."""
  if event_ndims == 0:
    return x
  return jnp.sum(x, axis=tuple(range(-event_ndims, 0)))


@jax.custom_jvp
def softplus(x):
  """log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|).

  Same values and gradients as jax.nn.softplus, whose extra NaN handling made
  the elementwise loop ~3x slower on CPU (1.12 vs 0.36 ns per element). The
  derivative is given explicitly (sigmoid) so that it is right at x = 0 too,
  where max and abs have kinks.
  """
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return softplus(x), jax.nn.sigmoid(x) * dx


def bernoulli_log_prob(x, logits):
  """log Bernoulli(x | sigmoid(logits)) = x * l - softplus(l), for x in [0, 1].

  Written this way (not through optax's cross-entropy) because it is exact for
  any logit, and about 2x faster in the K=5,000 importance-sampled evaluation.
  """
  return x * logits - softplus(logits)


def gaussian_log_prob(x, mean, log_var):
  """log N(x | mean, exp(log_var)), elementwise."""
  log_var = clip_log_var(log_var)
  return -0.5 * (_LOG_2PI + log_var + jnp.square(x - mean) * jnp.exp(-log_var))


def standard_normal_log_prob(z):
  """log N(z | 0, 1), elementwise."""
  return -0.5 * (_LOG_2PI + jnp.square(z))


def gaussian_kl_to_standard_normal(mean, log_var):
  """KL(N(mean, exp(log_var)) || N(0, 1)), elementwise (Kingma & Welling 2013, app. B)."""
  log_var = clip_log_var(log_var)
  return 0.5 * (jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var)


def gaussian_sample(key, mean, log_var, temperature=1.0):
  """The reparameterisation trick: mean + temperature * std * eps, eps ~ N(0, I)."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + temperature * jnp.exp(0.5 * clip_log_var(log_var)) * eps


def discretized_logistic_log_prob(x, mean, log_scale, num_bins=256):
  """log P(x) of a logistic discretised into `num_bins` bins on [-1, 1].

  x and mean live in [-1, 1] (8-bit pixel k maps to 2k/255 - 1). The edge bins
  take the whole tails (Salimans et al. 2017, PixelCNN++). Elementwise.
  """
  log_scale = jnp.clip(log_scale, -7.0, 7.0)
  half_bin = 1.0 / (num_bins - 1)
  centred = x - mean
  inv_scale = jnp.exp(-log_scale)
  plus = inv_scale * (centred + half_bin)
  minus = inv_scale * (centred - half_bin)
  # log(sigmoid(plus) - sigmoid(minus)) computed without cancellation.
  log_cdf_plus = jax.nn.log_sigmoid(plus)
  log_one_minus_cdf_minus = -jax.nn.softplus(minus)
  mid = inv_scale * centred
  log_pdf_mid = mid - log_scale - 2.0 * jax.nn.softplus(mid)
  cdf_delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
  log_prob_interior = jnp.where(
      cdf_delta > 1e-5,
      jnp.log(jnp.maximum(cdf_delta, 1e-12)),
      log_pdf_mid + math.log(2.0 * half_bin),
  )
  return jnp.where(
      x < -0.999,
      log_cdf_plus,
      jnp.where(x > 0.999, log_one_minus_cdf_minus, log_prob_interior),
  )


# The discretised logistic mixture (Salimans et al. 2017, PixelCNN++; used by VDVAE
# and NVAE). A pixel's colour channels are one joint distribution, so its
# log-prob is per pixel, [..., H, W]. The params layout is PixelCNN++'s (and
# VDVAE's), so that decoders trained there port without a permutation.


def logistic_mixture_channels(num_mix, channels):
  """Decoder outputs per pixel of a `num_mix`-component logistic mixture (PixelCNN++).

  3 * num_mix for grey (logits, means, log-scales); 10 * num_mix for RGB (logits,
  3 means, 3 log-scales, 3 colour coefficients).
  """
  if channels == 1:
    return 3 * num_mix
  if channels == 3:
    return 10 * num_mix
  raise ValueError(f'the logistic mixture models 1 or 3 channels, got {channels}')


def _split_mixture(params, num_mix, channels):
  """(logits [..., K], means [..., C, K], log_scales [..., C, K], coeffs [..., 3, K] | None)."""
  expected = logistic_mixture_channels(num_mix, channels)
  if params.shape[-1] != expected:
    raise ValueError(f'{num_mix} components over {channels} channels need {expected} '
                     f'params per pixel, got {params.shape[-1]}')
  per_channel = 2 if channels == 1 else 3
  rest = params[..., num_mix:].reshape(params.shape[:-1] + (channels, per_channel, num_mix))
  log_scales = jnp.clip(rest[..., 1, :], -7.0, 7.0)
  coeffs = jnp.tanh(rest[..., 2, :]) if channels == 3 else None
  return params[..., :num_mix], rest[..., 0, :], log_scales, coeffs


def _shift_rgb_means(means, coeffs, r, g):
  """PixelCNN++'s colour autoregression: green and blue means move with red and green."""
  return jnp.stack(jnp.broadcast_arrays(
      means[..., 0, :],
      means[..., 1, :] + coeffs[..., 0, :] * r,
      means[..., 2, :] + coeffs[..., 1, :] * r + coeffs[..., 2, :] * g,
  ), axis=-2)


def discretized_logistic_mixture_log_prob(x, params, num_mix):
  """log P(pixel) under a mixture of discretised logistics (Salimans et al. 2017), [..., H, W].

  x [..., H, W, C] in [-1, 1], C in {1, 3}; 256 bins with the tails in the edge
  bins, as in `discretized_logistic_log_prob`. params [..., H, W,
  logistic_mixture_channels(num_mix, C)], with K = num_mix:
    params[..., :K] mixture logits (weights by log-softmax);
    params[..., K:] reshaped to [..., C, P, K] (P = 2 grey, 3 RGB): for channel c,
      [..., c, 0, :] means, [..., c, 1, :] log-scales (clipped to [-7, 7]),
      [..., c, 2, :] (RGB) the c-th coefficient, through tanh:
      mean_g += coeff_0 * x_r, mean_b += coeff_1 * x_r + coeff_2 * x_g.
  That is flat index K + c * P * K + p * K + k, PixelCNN++'s and VDVAE's layout.
  """
  channels = x.shape[-1]
  logits, means, log_scales, coeffs = _split_mixture(params, num_mix, channels)
  if coeffs is not None:
    means = _shift_rgb_means(means, coeffs, x[..., 0, None], x[..., 1, None])
  per_channel = discretized_logistic_log_prob(x[..., None], means, log_scales)
  log_weights = jax.nn.log_softmax(logits, axis=-1)
  return jax.nn.logsumexp(log_weights + per_channel.sum(-2), axis=-1)


def discretized_logistic_mixture_mean(params, num_mix, channels):
  """The mixture's mean image in [0, 1], [..., H, W, C] (layout as in the log-prob).

  sum_k pi_k * mean_k per channel, where for RGB component k's green and blue
  means are shifted by its own earlier-channel means clipped to [-1, 1] (not by
  the mixture's). That is the mean of the continuous mixture; it ignores that the
  edge bins take the tails, so it is exact for the pixels only when each
  component's mass lies well inside [-1, 1].
  """
  logits, means, _, coeffs = _split_mixture(params, num_mix, channels)
  if coeffs is not None:
    # E[g | k] = mean_g + coeff_0 * E[r | k], and likewise for blue; E[r | k]
    # and E[g | k] are clipped because the data they stand in for lie in [-1, 1].
    r = jnp.clip(means[..., 0, :], -1.0, 1.0)
    g = jnp.clip(means[..., 1, :] + coeffs[..., 0, :] * r, -1.0, 1.0)
    means = _shift_rgb_means(means, coeffs, r, g)
  weights = jax.nn.softmax(logits, axis=-1)[..., None, :]
  mean = jnp.sum(weights * means, axis=-1)
  return jnp.clip(0.5 * (mean + 1.0), 0.0, 1.0)


def discretized_logistic_mixture_sample(key, params, num_mix, channels):
  """A draw from the discretised logistic mixture (Salimans et al. 2017), [..., H, W, C].

  Values k / 255 in [0, 1]. Layout as in the log-prob. One component per pixel
  (Gumbel-max), then each channel by the inverse logistic CDF.
  """
  logits, means, log_scales, coeffs = _split_mixture(params, num_mix, channels)
  key_mix, key_logistic = jax.random.split(key)
  gumbel = jax.random.gumbel(key_mix, logits.shape, logits.dtype)
  component = jnp.argmax(logits + gumbel, axis=-1)[..., None, None]

  def pick(a):
    return jnp.take_along_axis(a, component, axis=-1)[..., 0]

  # Bounded away from 0 and 1 so that the logit of u stays finite.
  u = jax.random.uniform(key_logistic, means.shape[:-1], means.dtype, 1e-5, 1.0 - 1e-5)
  value = pick(means) + jnp.exp(pick(log_scales)) * (jnp.log(u) - jnp.log1p(-u))

  def to_bin(v):
    return jnp.round(127.5 * (jnp.clip(v, -1.0, 1.0) + 1.0))

  if coeffs is None:
    bins = to_bin(value)
  else:
    # The later channels condition on the binned earlier ones, as the log-prob
    # conditions on the data, so that samples follow exactly that distribution.
    c = pick(coeffs)
    r = to_bin(value[..., 0])
    r_grid = r / 127.5 - 1.0
    g = to_bin(value[..., 1] + c[..., 0] * r_grid)
    g_grid = g / 127.5 - 1.0
    b = to_bin(value[..., 2] + c[..., 1] * r_grid + c[..., 2] * g_grid)
    bins = jnp.stack([r, g, b], axis=-1)
  return bins / 255.0
