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


# Observation models. The decoder emits `decoder_channels(name)` numbers per image
# channel; `log_likelihood` reads them. Images arrive in [0, 1].
LIKELIHOODS = ('bernoulli', 'gaussian', 'discretized_logistic')


def decoder_channels(likelihood):
  """How many decoder outputs one image channel needs under `likelihood`."""
  return {'bernoulli': 1, 'gaussian': 2, 'discretized_logistic': 2}[likelihood]


def _split(out):
  loc, scale = jnp.split(out, 2, axis=-1)
  return loc, scale


def log_likelihood(likelihood, x, out):
  """log p(x | z) summed over an image's [H, W, C] axes; x in [0, 1]."""
  if likelihood == 'bernoulli':
    elementwise = bernoulli_log_prob(x, out)
  elif likelihood == 'gaussian':
    mean, log_var = _split(out)
    elementwise = gaussian_log_prob(x, mean, log_var)
  elif likelihood == 'discretized_logistic':
    mean, log_scale = _split(out)
    elementwise = discretized_logistic_log_prob(2.0 * x - 1.0, mean, log_scale)
  else:
    raise ValueError(f'unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}')
  return sum_event(elementwise, 3)


def likelihood_mean(likelihood, out):
  """The mean of p(x | z) as an image in [0, 1] (what we draw in grids)."""
  if likelihood == 'bernoulli':
    return jax.nn.sigmoid(out)
  mean, _ = _split(out)
  if likelihood == 'discretized_logistic':
    mean = 0.5 * (mean + 1.0)
  return jnp.clip(mean, 0.0, 1.0)
