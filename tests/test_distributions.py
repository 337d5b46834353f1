"""Log-likelihoods and KL terms against direct formulas and Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import distributions as d


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
  total = d.log_likelihood('discretized_logistic', x, out.reshape(1, 1, 256, 2))
  np.testing.assert_allclose(total, per_pixel.sum(), rtol=1e-5)


def test_log_likelihood_sums_over_image_axes():
  key = jax.random.key(0)
  x = (jax.random.uniform(key, (3, 4, 5, 2)) > 0.5).astype(jnp.float32)
  logits = jax.random.normal(key, (3, 4, 5, 2))
  np.testing.assert_allclose(d.log_likelihood('bernoulli', x, logits),
                             d.bernoulli_log_prob(x, logits).sum((1, 2, 3)), rtol=1e-6)
  assert d.likelihood_mean('gaussian', jnp.zeros((1, 2, 2, 2))).shape == (1, 2, 2, 1)
  with pytest.raises(ValueError, match='unknown likelihood'):
    d.log_likelihood('poisson', x, logits)


def test_softplus_matches_jax_values_and_gradients():
  x = jnp.array([-200.0, -30.0, -1.0, 0.0, 1e-3, 2.0, 40.0, 200.0])
  np.testing.assert_allclose(d.softplus(x), jax.nn.softplus(x), rtol=1e-6)
  grad = jax.vmap(jax.grad(d.softplus))(x)
  np.testing.assert_allclose(grad, jax.nn.sigmoid(x), rtol=1e-6, atol=1e-30)
