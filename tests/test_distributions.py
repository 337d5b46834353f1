"""Log-likelihoods and KL terms against direct formulas and Monte Carlo."""

import itertools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax import distributions as d
from vae_jax.models import likelihoods


def test_bernoulli_matches_direct_formula():
  x = jnp.array([0.0, 1.0, 0.0, 1.0, 0.3])
  logits = jnp.array([-2.0, 0.5, 3.0, -0.1, 1.2])
  p = jax.nn.sigmoid(logits)
  direct = x * jnp.log(p) + (1 - x) * jnp.log1p(-p)
  np.testing.assert_allclose(d.bernoulli_log_prob(x, logits), direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('logit', [-200.0, -50.0, 50.0, 200.0])
def test_bernoulli_finite_for_extreme_logits(logit):
  for x in (0.0, 1.0):
    value, grad = jax.value_and_grad(lambda l: d.bernoulli_log_prob(x, l))(jnp.float32(logit))
    assert np.isfinite(value) and np.isfinite(grad)
  # The probable outcome has log-probability ~0, the improbable one ~ -|logit|.
  np.testing.assert_allclose(d.bernoulli_log_prob(float(logit > 0), logit), 0.0, atol=1e-6)
  np.testing.assert_allclose(d.bernoulli_log_prob(float(logit < 0), logit), -abs(logit), rtol=1e-6)


def test_gaussian_matches_direct_formula():
  x, mean, log_var = 0.7, -0.2, math.log(0.3)
  var = 0.3
  direct = -0.5 * math.log(2 * math.pi * var) - (x - mean) ** 2 / (2 * var)
  np.testing.assert_allclose(d.gaussian_log_prob(x, mean, log_var), direct, rtol=1e-6)
  np.testing.assert_allclose(d.standard_normal_log_prob(0.5),
                             -0.5 * math.log(2 * math.pi) - 0.125, rtol=1e-6)


def test_gaussian_likelihood_integrates_to_one():
  grid = np.linspace(-10, 10, 20001)
  density = np.exp(d.gaussian_log_prob(jnp.asarray(grid), 0.3, jnp.log(0.8)))
  np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-4)


@pytest.mark.parametrize('log_var', [-100.0, -30.0, 0.0, 30.0, 1e4])
def test_gaussian_terms_finite_for_extreme_log_var(log_var):
  def total(mean, lv):
    return (d.gaussian_log_prob(0.5, mean, lv) + d.gaussian_kl_to_standard_normal(mean, lv)
            + d.gaussian_sample(jax.random.key(0), mean, lv).sum())
  value, grads = jax.value_and_grad(total, argnums=(0, 1))(jnp.float32(0.1), jnp.float32(log_var))
  assert np.isfinite(value) and all(np.isfinite(g) for g in grads)


def test_kl_matches_monte_carlo():
  mean = jnp.array([0.5, -1.0, 2.0])
  log_var = jnp.array([0.0, -1.0, 0.7])
  z = d.gaussian_sample(jax.random.key(1), jnp.broadcast_to(mean, (400_000, 3)),
                        jnp.broadcast_to(log_var, (400_000, 3)))
  mc = (d.gaussian_log_prob(z, mean, log_var) - d.standard_normal_log_prob(z)).mean(0)
  np.testing.assert_allclose(d.gaussian_kl_to_standard_normal(mean, log_var), mc, atol=0.02)
  np.testing.assert_allclose(d.gaussian_kl_to_standard_normal(jnp.zeros(2), jnp.zeros(2)), 0.0)


def test_discretized_logistic_is_a_distribution_over_256_values():
  values = jnp.arange(256) / 255.0
  out = jnp.stack([jnp.full((256,), 0.1), jnp.full((256,), -2.0)], -1)
  x = values.reshape(1, 1, 256, 1)
  per_pixel = d.discretized_logistic_log_prob(2 * values - 1, out[:, 0], out[:, 1])
  np.testing.assert_allclose(jnp.exp(per_pixel).sum(), 1.0, rtol=1e-4)
  total = likelihoods.DiscretizedLogistic().log_prob(x, out.reshape(1, 1, 256, 2))
  np.testing.assert_allclose(total, per_pixel.sum(), rtol=1e-5)


def test_log_likelihood_sums_over_image_axes():
  key = jax.random.key(0)
  x = (jax.random.uniform(key, (3, 4, 5, 2)) > 0.5).astype(jnp.float32)
  logits = jax.random.normal(key, (3, 4, 5, 2))
  np.testing.assert_allclose(likelihoods.Bernoulli().log_prob(x, logits),
                             d.bernoulli_log_prob(x, logits).sum((1, 2, 3)), rtol=1e-6)
  assert likelihoods.Gaussian().mean(jnp.zeros((1, 2, 2, 2))).shape == (1, 2, 2, 1)
  with pytest.raises(ValueError, match='config.model.likelihood: unknown'):
    likelihoods.make_likelihood('poisson', channels=2, levels=2)


@pytest.mark.parametrize('channels', [1, 3])
def test_logistic_mixture_likelihood_sums_pixels_and_broadcasts_over_samples(channels):
  likelihood = likelihoods.make_likelihood('logistic_mixture', channels=channels, levels=256,
                                           num_mix=3)
  key_x, key_out = jax.random.split(jax.random.key(4))
  x = jnp.round(jax.random.uniform(key_x, (2, 3, 4, channels)) * 255) / 255
  out = jax.random.normal(key_out, (5, 2, 3, 4, likelihood.out_channels(channels)))
  # Jitted: one compilation each instead of a compiled program per operation.
  per_pixel = jax.jit(d.discretized_logistic_mixture_log_prob, static_argnums=2)(2 * x - 1, out, 3)
  log_prob = jax.jit(likelihood.log_prob)(x, out)
  np.testing.assert_allclose(log_prob, per_pixel.sum((-2, -1)), rtol=1e-5)
  assert log_prob.shape == (5, 2)
  assert (jax.jit(likelihood.mean)(out).shape == jax.jit(likelihood.sample)(key_x, out).shape
          == (5, 2, 3, 4, channels))


def test_dequantised_gaussian_is_a_bound_in_discrete_units():
  # On 2-level pixels, integrating the density over each bin of width 1/2 gives P(x);
  # E_u log p((x + u) / 2) - D log 2 is below log P(x) (Jensen) and close for a smooth density.
  likelihood = likelihoods.Gaussian(levels=2)
  mean, log_var = jnp.array(0.6), jnp.log(jnp.array(0.3))
  out = jnp.stack([mean, log_var]).reshape(1, 1, 1, 2)
  u = (jnp.arange(20_000) + 0.5) / 20_000
  for pixel in (0.0, 1.0):
    y = ((pixel + u) / 2).reshape(-1, 1, 1, 1)
    bound = jnp.mean(likelihood.log_prob(y, jnp.broadcast_to(out, (len(u), 1, 1, 2))))
    cdf = jax.scipy.stats.norm.cdf
    edges = jnp.array([pixel / 2, (pixel + 1) / 2])
    exact = jnp.log(jnp.diff(cdf(edges, mean, jnp.sqrt(0.3)))[0])
    assert bound <= exact and exact - bound < 0.05


def test_softplus_matches_jax_values_and_gradients():
  x = jnp.array([-200.0, -30.0, -1.0, 0.0, 1e-3, 2.0, 40.0, 200.0])
  np.testing.assert_allclose(d.softplus(x), jax.nn.softplus(x), rtol=1e-6)
  grad = jax.vmap(jax.grad(d.softplus))(x)
  np.testing.assert_allclose(grad, jax.nn.sigmoid(x), rtol=1e-6, atol=1e-30)


# The discretised logistic mixture. Params are built through the documented flat
# layout (index K + c * P * K + p * K + k), not through the module's own reshape.
_GRID = (2.0 * np.arange(256) / 255.0 - 1.0).astype(np.float32)
# Jitted once each, and inputs drawn with numpy: op-by-op dispatch made these
# tests ~3x slower.
_logistic_log_prob = jax.jit(d.discretized_logistic_log_prob)
_mix_log_prob = jax.jit(d.discretized_logistic_mixture_log_prob, static_argnums=2)
_mix_mean = jax.jit(d.discretized_logistic_mixture_mean, static_argnums=(1, 2))
_mix_sample = jax.jit(d.discretized_logistic_mixture_sample, static_argnums=(2, 3))


def _value_grad_mean_sample(x, params, num_mix, channels):
  value, grad = jax.value_and_grad(
      lambda p: d.discretized_logistic_mixture_log_prob(x, p, num_mix).sum())(params)
  return (value, grad, d.discretized_logistic_mixture_mean(params, num_mix, channels),
          d.discretized_logistic_mixture_sample(jax.random.key(0), params, num_mix, channels))


_mix_all = jax.jit(_value_grad_mean_sample, static_argnums=(2, 3))  # One compilation.


def _mixture_params(logits, means, log_scales, coeffs=None):
  """Flat per-pixel params from [..., K] logits and [..., C, K] means/log-scales/coeffs."""
  blocks = [means, log_scales] + ([] if coeffs is None else [coeffs])
  rest = np.stack(blocks, axis=-2)  # [..., C, P, K]
  flat = np.concatenate([logits, rest.reshape(rest.shape[:-3] + (-1,))], axis=-1)
  return jnp.asarray(flat, jnp.float32)


def test_logistic_mixture_channels():
  assert d.logistic_mixture_channels(5, 1) == 15
  assert d.logistic_mixture_channels(10, 3) == 100
  with pytest.raises(ValueError, match='1 or 3 channels'):
    d.logistic_mixture_channels(5, 2)
  with pytest.raises(ValueError, match='need 30 params'):
    d.discretized_logistic_mixture_log_prob(jnp.zeros((1, 1, 3)), jnp.zeros((1, 1, 29)), 3)


def test_grey_mixture_sums_to_one_over_256_values():
  k = 4
  rng = np.random.default_rng(0)
  logits = 3.0 * rng.normal(size=(6, k))
  means = rng.uniform(-1.3, 1.3, (6, 1, k))
  log_scales = rng.uniform(-7.5, 7.5, (6, 1, k))
  # Extremes: the log-scale clip on both sides, and sharp components at or past the edges.
  log_scales[0], log_scales[1], log_scales[2] = -7.0, 7.0, -7.0
  means[2] = [[-1.0, 1.0, 0.999, -0.9961]]
  params = _mixture_params(logits, means, log_scales)  # [6 pixels, 12]
  log_p = _mix_log_prob(_GRID[:, None, None], params, k)
  assert log_p.shape == (256, 6)
  np.testing.assert_allclose(np.exp(log_p).sum(0), 1.0, atol=1e-5)


def test_rgb_mixture_sums_to_one_over_all_colours():
  k = 3
  rng = np.random.default_rng(1)
  logits = rng.normal(size=k)
  means = rng.uniform(-0.9, 0.9, (3, k))
  log_scales = rng.uniform(-5.0, -1.0, (3, k))
  coeffs = 1.5 * rng.normal(size=(3, k))
  params = _mixture_params(logits, means, log_scales, coeffs)
  gb = np.stack(np.meshgrid(_GRID, _GRID, indexing='ij'), -1)  # [256, 256, 2]

  @jax.jit
  def mass_per_red(r):
    x = jnp.concatenate([jnp.full((256, 256, 1), r), gb], -1)
    return jnp.exp(d.discretized_logistic_mixture_log_prob(x, params, k)).sum()

  per_red = np.asarray(jax.lax.map(mass_per_red, _GRID), np.float64)
  np.testing.assert_allclose(per_red.sum(), 1.0, atol=1e-4)
  # The red marginal is the mixture of the red logistics alone.
  red = _mix_log_prob(
      _GRID[:, None], _mixture_params(logits, means[:1], log_scales[:1]), k)
  np.testing.assert_allclose(per_red, np.exp(red), atol=1e-5)


def test_one_component_grey_mixture_is_the_discretized_logistic():
  rng = np.random.default_rng(2)
  x = rng.choice(_GRID, (2, 4, 5, 1))
  out = (rng.normal(size=(2, 4, 5, 3)) * [5.0, 1.0, 3.0]).astype(np.float32)
  expected = _logistic_log_prob(x[..., 0], out[..., 1], out[..., 2])
  np.testing.assert_allclose(_mix_log_prob(x, out, 1), expected, rtol=1e-6, atol=1e-6)


def test_one_component_rgb_without_coefficients_is_three_independent_logistics():
  rng = np.random.default_rng(4)
  x = rng.choice(_GRID, (3, 5, 3))
  means = rng.uniform(-1, 1, (3, 5, 3, 1)).astype(np.float32)
  log_scales = rng.uniform(-6, 0, (3, 5, 3, 1)).astype(np.float32)
  params = _mixture_params(np.full((3, 5, 1), 2.0), means, log_scales, np.zeros_like(means))
  assert params.shape == (3, 5, 10)
  expected = _logistic_log_prob(x, means[..., 0], log_scales[..., 0]).sum(-1)
  np.testing.assert_allclose(_mix_log_prob(x, params, 1), expected, rtol=1e-6)


def test_rgb_mixture_matches_direct_formula():
  k = 2
  rng = np.random.default_rng(7)
  x = rng.choice(_GRID, (4, 3))
  logits = rng.normal(size=(4, k))
  means = rng.uniform(-1, 1, (4, 3, k)).astype(np.float32)
  log_scales = rng.uniform(-4, 0, (4, 3, k)).astype(np.float32)
  raw = rng.normal(size=(4, 3, k)).astype(np.float32)
  c = np.asarray(jnp.tanh(raw))
  r, g, b = x[:, 0, None], x[:, 1, None], x[:, 2, None]
  per_component = np.asarray(
      _logistic_log_prob(r, means[:, 0], log_scales[:, 0])
      + _logistic_log_prob(g, means[:, 1] + c[:, 0] * r, log_scales[:, 1])
      + _logistic_log_prob(b, means[:, 2] + c[:, 1] * r + c[:, 2] * g, log_scales[:, 2]),
      np.float64)
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = np.log(np.sum(weights * np.exp(per_component), -1))
  params = _mixture_params(logits, means, log_scales, raw)
  # atol: a bin of probability ~1e-5 loses ~1e-3 of its log to float32
  # cancellation in sigmoid(plus) - sigmoid(minus), so the summation order shows.
  np.testing.assert_allclose(_mix_log_prob(x, params, k), expected, rtol=1e-5, atol=3e-3)


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('scale', [1e4, 1e-4])
def test_mixture_finite_for_extreme_params(channels, scale):
  k = 3
  n = d.logistic_mixture_channels(k, channels)
  rng = np.random.default_rng(8)
  params = jnp.asarray(scale * rng.choice([-1.0, 1.0], (2, 3, 4, n)), jnp.float32)
  x = rng.choice(_GRID, (2, 3, 4, channels))
  x[0, 0, :2] = [[-1.0], [1.0]]

  value, grad, mean, sample = _mix_all(x, params, k, channels)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  assert mean.shape == sample.shape == x.shape
  assert np.all(np.isfinite(mean)) and np.all(np.isfinite(sample))


def _assert_on_grid(sample):
  levels = np.asarray(sample) * 255.0
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert levels.min() >= 0.0 and levels.max() <= 255.0


def test_sharp_mixture_sample_and_mean_sit_at_the_component_mean():
  # log-scale -7 (scale 1/1097) puts ~97% of a component in its mean's bin and
  # the rest in the two neighbours; the dominant logit picks the component.
  n, k = 4000, 2
  mean_bins = np.array([[40.0, 200.0, 255.0], [10.0, 20.0, 30.0]])  # [K, C]
  means = (2.0 * mean_bins / 255.0 - 1.0).T + 1e-4  # [C, K]
  params = _mixture_params(np.array([30.0, 0.0]), means, np.full((3, k), -7.0),
                           np.zeros((3, k)))
  sample = _mix_sample(
      jax.random.key(10), np.broadcast_to(params, (n, 1, 1, 20)), k, 3)
  _assert_on_grid(sample)
  levels = np.round(np.asarray(sample)[:, 0, 0] * 255.0)
  assert np.all(np.abs(levels - np.asarray(mean_bins[0])) <= 2)
  log_p_bin = _logistic_log_prob(means[:, 0] - 1e-4, means[:, 0], -7.0)
  hit = (levels == np.asarray(mean_bins[0])).mean(0)
  np.testing.assert_allclose(hit, np.exp(log_p_bin), atol=5 * math.sqrt(0.03 / n))
  mean = _mix_mean(params, k, 3)
  np.testing.assert_allclose(mean, mean_bins[0] / 255.0, atol=1e-3)


def test_sharp_rgb_sample_follows_the_colour_coefficients():
  # Each channel's bin is shifted by the coefficients times the earlier channels' bins.
  n = 2000
  means = np.array([[0.5], [-0.2], [0.1]])
  raw = np.array([[0.8], [-0.6], [1.2]])
  c = np.tanh(np.asarray(raw[:, 0]))
  params = _mixture_params(np.zeros(1), means, np.full((3, 1), -7.0), raw)
  sample = _mix_sample(
      jax.random.key(11), np.broadcast_to(params, (n, 10)), 1, 3)
  _assert_on_grid(sample)
  x = 2.0 * np.asarray(sample, np.float64) - 1.0
  expected_g = 0.5 * (-0.2 + c[0] * x[:, 0] + 1.0) * 255.0
  expected_b = 0.5 * (0.1 + c[1] * x[:, 0] + c[2] * x[:, 1] + 1.0) * 255.0
  assert np.all(np.abs(x[:, 1] * 127.5 + 127.5 - expected_g) <= 2.5)
  assert np.all(np.abs(x[:, 2] * 127.5 + 127.5 - expected_b) <= 2.5)
  mean = np.asarray(_mix_mean(params, 1, 3))
  r_mean = 0.5
  g_mean = -0.2 + c[0] * r_mean
  b_mean = 0.1 + c[1] * r_mean + c[2] * g_mean
  np.testing.assert_allclose(mean, 0.5 * (np.array([r_mean, g_mean, b_mean]) + 1), atol=1e-6)
  np.testing.assert_allclose(mean, x.mean(0) * 0.5 + 0.5, atol=2e-3)


def _assert_frequencies_match(counts, log_p, n):
  p = np.exp(np.asarray(log_p, np.float64))
  freq = counts / n
  tolerance = 5.0 * np.sqrt(p * (1 - p) / n) + 2e-4
  assert np.all(np.abs(freq - p) <= tolerance), np.max(np.abs(freq - p) - tolerance)


def test_grey_mixture_sample_frequencies_match_log_prob():
  n, k = 100_000, 2
  params = _mixture_params(np.array([[0.3, -0.4], [1.0, 0.0]]),
                           np.array([[[-0.3, 0.9]], [[-0.999, 0.2]]]),
                           np.array([[[-3.0, -4.5]], [[-2.0, -3.0]]]))  # 2 pixels
  sample = _mix_sample(
      jax.random.key(12), np.broadcast_to(params, (n, 1, 2, 6)), k, 1)
  _assert_on_grid(sample)
  levels = np.round(np.asarray(sample)[:, 0, :, 0] * 255.0).astype(int)
  log_p = _mix_log_prob(_GRID[:, None, None], params, k)  # [256, 2]
  for pixel in range(2):
    _assert_frequencies_match(np.bincount(levels[:, pixel], minlength=256), log_p[:, pixel], n)


def test_rgb_mixture_sample_frequencies_match_log_prob():
  # Scales of a third of a bin keep the support to a few hundred colours, so the
  # joint frequencies (and with them the colour conditioning) can be checked.
  n, k = 200_000, 2
  means = np.array([[-0.5, 0.6], [0.1, -0.3], [0.4, 0.98]])
  raw = np.array([[0.9, -1.5], [-0.4, 0.7], [0.6, 2.0]])
  params = _mixture_params(np.array([0.4, -0.2]), means, np.full((3, k), -6.0), raw)
  sample = _mix_sample(
      jax.random.key(13), np.broadcast_to(params, (n, 20)), k, 3)
  levels = np.round(np.asarray(sample) * 255.0).astype(int)
  colours, counts = np.unique(levels, axis=0, return_counts=True)
  log_p = _mix_log_prob(
      jnp.asarray(2.0 * colours / 255.0 - 1.0, jnp.float32), params, k)
  # Nearly all the mass lies on the colours seen, and each is seen as often as it should be.
  assert np.exp(np.asarray(log_p, np.float64)).sum() > 0.999
  _assert_frequencies_match(counts, log_p, n)


def _all_binary_images(height, width):
  grid = np.array(list(itertools.product([0.0, 1.0], repeat=height * width)), np.float32)
  return jnp.asarray(grid.reshape(-1, height, width, 1))


@pytest.mark.parametrize('radius', [1, 2])
def test_local_bernoulli_sums_to_one_over_every_binary_image(radius):
  # 3x4 binary images: all 4,096 of them; the chain's probabilities sum to 1.
  lik = likelihoods.LocalBernoulli(radius)
  assert lik.out_channels(1) == 1 + likelihoods.context_size(radius)
  assert likelihoods.context_size(radius) == (4, 12)[radius - 1]
  out = 1.5 * jax.random.normal(jax.random.key(radius), (3, 4, lik.out_channels(1)))
  log_p = jax.vmap(lambda x: lik.log_prob(x, out))(_all_binary_images(3, 4))
  assert float(jax.nn.logsumexp(log_p)) == pytest.approx(0.0, abs=1e-5)


def test_local_bernoulli_matches_the_chain_written_out():
  # p(x) = prod_i sigmoid-Bernoulli(x_i | a_i + sum_j w_ij x_j), the context read by hand.
  lik = likelihoods.LocalBernoulli(1)
  height, width = 3, 4
  out = np.asarray(jax.random.normal(jax.random.key(3), (height, width, 5)), np.float64)
  x = np.asarray(jax.random.uniform(jax.random.key(4), (height, width, 1)) > 0.5, np.float64)
  total = 0.0
  for y in range(height):
    for c in range(width):
      context = [(y - 1, c - 1), (y - 1, c), (y - 1, c + 1), (y, c - 1)]
      values = [x[i, j, 0] if 0 <= i < height and 0 <= j < width else 0.0 for i, j in context]
      logit = out[y, c, 0] + np.dot(out[y, c, 1:], values)
      p = 1.0 / (1.0 + np.exp(-logit))
      total += math.log(p if x[y, c, 0] else 1.0 - p)
  assert float(lik.log_prob(jnp.asarray(x, jnp.float32), jnp.asarray(out, jnp.float32))) == (
      pytest.approx(total, abs=1e-4))
  # One image against k decoded samples of it, as the bound computes it.
  outs = jnp.stack([jnp.asarray(out, jnp.float32), jnp.zeros((height, width, 5))])[:, None]
  both = lik.log_prob(jnp.asarray(x, jnp.float32)[None], outs)
  assert both.shape == (2, 1)
  np.testing.assert_allclose(both[:, 0], [total, height * width * math.log(0.5)], atol=1e-4)


@pytest.mark.parametrize('radius', [1, 2])
def test_local_bernoulli_sample_frequencies_match_log_prob(radius):
  lik = likelihoods.LocalBernoulli(radius)
  n = 200_000
  out = 1.5 * jax.random.normal(jax.random.key(7), (3, 3, lik.out_channels(1)))
  images = _all_binary_images(3, 3)
  log_p = jax.vmap(lambda x: lik.log_prob(x, out))(images)
  sample = jax.jit(lambda k: lik.sample(k, jnp.broadcast_to(out, (n,) + out.shape)))(
      jax.random.key(8))
  assert set(np.unique(np.asarray(sample))) <= {0.0, 1.0}
  index = np.asarray(sample).reshape(n, 9).astype(int) @ (2 ** np.arange(8, -1, -1))
  _assert_frequencies_match(np.bincount(index, minlength=512), log_p, n)


def test_local_bernoulli_mean_is_the_mean_field_chain():
  lik = likelihoods.LocalBernoulli(1)
  out = jax.random.normal(jax.random.key(9), (2, 3, 4, 5))
  # Without context weights the pixels are independent and the mean is exact.
  independent = out.at[..., 1:].set(0.0)
  np.testing.assert_allclose(lik.mean(independent), jax.nn.sigmoid(independent[..., :1]),
                             rtol=1e-6)
  # With them, each pixel's probability given its context's probabilities.
  mean = np.asarray(lik.mean(out), np.float64)
  a, w = np.asarray(out[..., 0], np.float64), np.asarray(out[..., 1:], np.float64)
  padded = np.pad(mean[..., 0], [(0, 0), (1, 0), (1, 1)])
  for y in range(3):
    for c in range(4):
      context = np.stack([padded[:, y, c], padded[:, y, c + 1], padded[:, y, c + 2],
                          padded[:, y + 1, c]], -1)
      expected = 1.0 / (1.0 + np.exp(-(a[:, y, c] + np.sum(w[:, y, c] * context, -1))))
      np.testing.assert_allclose(mean[:, y, c, 0], expected, rtol=1e-5)


def _causal(radius=1, features=3, layers=3, shape=(3, 4), key=11, scale=0.7):
  """A CausalBernoulli with every parameter moved off its initial value (so the residual
  kernels, zero at initialisation, say something), and a decoder output for it."""
  lik = likelihoods.CausalBernoulli(radius, features, layers)
  out = 1.5 * jax.random.normal(jax.random.key(key), shape + (lik.out_channels(1),))
  params = lik.init(jax.random.key(key + 1), jnp.zeros(shape + (1,)), out,
                    method='log_prob')['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key + 2), len(leaves))
  params = jax.tree.unflatten(tree, [v + scale * jax.random.normal(k, v.shape)
                                     for v, k in zip(leaves, keys)])
  return lik, {'params': params}, out


@pytest.mark.parametrize('radius', [1, 2])
def test_causal_bernoulli_sums_to_one_over_every_binary_image(radius):
  lik, params, out = _causal(radius)
  assert lik.out_channels(1) == 4
  log_p = jax.jit(lambda x: lik.apply(params, x, out, method='log_prob'))(
      _all_binary_images(3, 4))
  assert float(jax.nn.logsumexp(log_p)) == pytest.approx(0.0, abs=1e-5)


def test_causal_bernoulli_logits_read_only_earlier_pixels_and_see_past_the_window():
  lik, params, out = _causal(radius=1, layers=3, shape=(4, 5))
  x = jax.random.uniform(jax.random.key(12), (4, 5, 1))
  jac = jax.jacfwd(lambda x: lik.apply(params, x, out, method='logits'))(x)
  jac = np.asarray(jac).reshape(20, 20)  # [pixel i, pixel j], raster order.
  assert np.all(jac[np.triu_indices(20)] == 0.0)  # Never x_j for j >= i.
  # Pixel (3, 3) reads (1, 1), two rows up: outside the radius-1 window of the first
  # layer, inside the field of view the residual layers add.
  assert abs(jac[3 * 5 + 3, 1 * 5 + 1]) > 1e-4


def test_causal_bernoulli_at_initialisation_is_local_bernoulli_through_its_embedding():
  lik = likelihoods.CausalBernoulli(2, 5, 3)
  x = (jax.random.uniform(jax.random.key(13), (2, 4, 5, 1)) > 0.5).astype(jnp.float32)
  out = jax.random.normal(jax.random.key(14), (3, 2, 4, 5, lik.out_channels(1)))
  params = lik.init(jax.random.key(15), x, out, method='log_prob')
  embed = params['params']['embed']  # [12 window pixels, 5 features]; kernels and biases 0.
  local_out = jnp.concatenate([out[..., :1], out[..., 1:] @ embed.T], axis=-1)
  np.testing.assert_allclose(lik.apply(params, x, out, method='log_prob'),
                             likelihoods.LocalBernoulli(2).log_prob(x, local_out), rtol=1e-5)


def test_causal_bernoulli_sample_frequencies_match_log_prob():
  lik, params, out = _causal(radius=1, shape=(3, 3), key=16)
  n = 200_000
  log_p = lik.apply(params, _all_binary_images(3, 3), out, method='log_prob')
  sample = jax.jit(lambda k: lik.apply(params, k, jnp.broadcast_to(out, (n,) + out.shape),
                                       method='sample'))(jax.random.key(17))
  assert set(np.unique(np.asarray(sample))) <= {0.0, 1.0}
  index = np.asarray(sample).reshape(n, 9).astype(int) @ (2 ** np.arange(8, -1, -1))
  _assert_frequencies_match(np.bincount(index, minlength=512), log_p, n)


def test_causal_bernoulli_mean_is_the_mean_field_chain():
  lik, params, out = _causal(radius=1, shape=(3, 4), key=18)
  out = jnp.stack([out, -out])
  mean = lik.apply(params, out, method='mean')
  assert mean.shape == (2, 3, 4, 1)
  # Each pixel is its probability given the chain's values before it: a fixed point.
  logits = lik.apply(params, mean, out, method='logits')
  np.testing.assert_allclose(mean, jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)


_MISCOMPILED = """
import jax, jax.numpy as jnp, numpy as np
import vae_jax
w = jax.random.normal(jax.random.key(1), (3, 4, 1, 3))
e = jax.random.normal(jax.random.key(3), (3,))
x = (jax.random.uniform(jax.random.key(2), (4096, 3, 4, 1)) > 0.5).astype(jnp.float32)
f = lambda x: 1.0 + jnp.sum(w * (x[..., None] * e), -1)
print(float(np.abs(jax.jit(f)(x) - f(x)).max()))
"""


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='an XLA:CPU miscompilation')
def test_importing_vae_jax_keeps_xla_cpu_from_miscompiling_a_broadcast_multiply_sum():
  # jaxlib 0.10.2's YNNPACK fusions got this program wrong past ~96k elements (by 3.8 here).
  # vae_jax, imported before any computation, restricts them to dots and convolutions.
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = os.path.join(os.path.dirname(__file__), '..')
  run = subprocess.run([sys.executable, '-c', _MISCOMPILED], env=env, capture_output=True,
                       text=True, check=True, timeout=120)
  assert float(run.stdout.strip().splitlines()[-1]) < 1e-5
  if vae_jax._jaxlib_version() and vae_jax._YNN_MISCOMPILES[0] <= vae_jax._jaxlib_version() < (
      vae_jax._YNN_MISCOMPILES[1]):
    # A user's own setting of the flag is left alone.
    env['XLA_FLAGS'] = f'{vae_jax.YNN_FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'
    check = subprocess.run(
        [sys.executable, '-c', 'import os, vae_jax; print(os.environ["XLA_FLAGS"])'], env=env,
        capture_output=True, text=True, check=True, timeout=60)
    assert check.stdout.strip() == env['XLA_FLAGS']
    del env['XLA_FLAGS']
    env['VAE_JAX_KEEP_XLA_DEFAULTS'] = '1'
    check = subprocess.run(
        [sys.executable, '-c', 'import os, vae_jax; print(os.environ.get("XLA_FLAGS", ""))'],
        env=env, capture_output=True, text=True, check=True, timeout=60)
    assert check.stdout.strip() == ''
