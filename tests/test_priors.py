"""Known answers for the priors: direct formulas, and the VampPrior's reduction to a Gaussian."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from vae_jax import distributions
from vae_jax.models import priors


def _apply(prior, params, method, *args, **kwargs):
  return prior.apply({'params': params}, *args, method=method, **kwargs)


def test_mixture_log_prob_matches_the_direct_formula():
  prior = priors.MixtureOfGaussians(latent_dim=3, num_components=4)
  rng = np.random.default_rng(0)
  means = rng.normal(size=(4, 3))
  log_vars = rng.normal(scale=0.5, size=(4, 3))
  logits = rng.normal(size=4)
  params = {'means': jnp.asarray(means, jnp.float32), 'log_vars': jnp.asarray(log_vars, jnp.float32),
            'logits': jnp.asarray(logits, jnp.float32)}
  z = rng.normal(scale=2.0, size=(2, 5, 3))
  log_p = _apply(prior, params, 'log_prob', jnp.asarray(z, jnp.float32))
  assert log_p.shape == (2, 5)
  weights = scipy.special.softmax(logits)
  expected = np.log(sum(
      w * scipy.stats.multivariate_normal(m, np.diag(np.exp(lv))).pdf(z.reshape(-1, 3))
      for w, m, lv in zip(weights, means, log_vars))).reshape(2, 5)
  np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-5)
  assert _apply(prior, params, 'kl', jnp.zeros((5, 3)), jnp.zeros((5, 3))) is None


def test_mixture_samples_follow_the_mixture():
  prior = priors.MixtureOfGaussians(latent_dim=1, num_components=2)
  params = {'means': jnp.array([[-4.0], [4.0]]), 'log_vars': jnp.log(jnp.array([[0.25], [1.0]])),
            'logits': jnp.log(jnp.array([0.2, 0.8]))}
  z = np.asarray(_apply(prior, params, 'sample', jax.random.key(0), 40_000))[:, 0]
  assert abs(np.mean(z > 0) - 0.8) < 0.01
  assert abs(np.std(z[z < 0]) - 0.5) < 0.02 and abs(np.mean(z[z > 0]) - 4.0) < 0.03
  cold = np.asarray(_apply(prior, params, 'sample', jax.random.key(0), 40_000, 0.0))[:, 0]
  assert set(np.unique(cold)) == {-4.0, 4.0}  # Temperature 0: the component means.


class _Encoder(nn.Module):
  """A fixed 'encoder' of pseudo-inputs: mean = 2u - 1, log_var = u (per latent)."""

  def __call__(self, u):
    u = u.reshape(u.shape[0], -1)
    return 2.0 * u - 1.0, u


def test_vamp_prior_with_one_pseudo_input_is_that_inputs_posterior():
  prior = priors.VampPrior(num_components=1, image_shape=(1, 3, 1))
  u = jnp.array([[[[0.2], [0.9], [0.5]]]])
  params = {'pseudo_inputs': u}
  encode = _Encoder()
  z = jax.random.normal(jax.random.key(1), (4, 6, 3))
  log_p = _apply(prior, params, 'log_prob', z, encode=lambda x: encode.apply({}, x))
  mean, log_var = 2.0 * u.reshape(1, 3) - 1.0, u.reshape(1, 3)
  expected = jnp.sum(distributions.gaussian_log_prob(z, mean[0], log_var[0]), -1)
  np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-5)


def test_vamp_prior_is_the_average_of_its_components_and_clips_pseudo_inputs():
  prior = priors.VampPrior(num_components=2, image_shape=(1, 2, 1))
  raw = jnp.array([[[[0.3], [1.7]]], [[[-0.4], [0.6]]]])  # Clipped to [0.3, 1] and [0, 0.6].
  encoder = _Encoder()
  encode = lambda x: encoder.apply({}, x)
  z = jax.random.normal(jax.random.key(2), (5, 2))
  log_p = _apply(prior, {'pseudo_inputs': raw}, 'log_prob', z, encode=encode)
  parts = []
  for u in (jnp.array([0.3, 1.0]), jnp.array([0.0, 0.6])):
    parts.append(jnp.sum(distributions.gaussian_log_prob(z, 2.0 * u - 1.0, u), -1))
  expected = jax.nn.logsumexp(jnp.stack(parts), axis=0) - math.log(2)
  np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-5)


def test_class_conditional_prior_kl_is_the_gaussian_kl():
  prior = priors.ClassConditionalGaussian(latent_dim=2, num_classes=3)
  params = {'means': jnp.array([[0.0, 0.0], [1.0, -1.0], [2.0, 0.5]]),
            'log_vars': jnp.array([[0.0, 0.0], [0.5, -0.5], [-1.0, 1.0]])}
  labels = jnp.array([1, 2])
  mean, log_var = jnp.array([[0.3, 0.1], [1.0, 2.0]]), jnp.array([[0.2, -0.3], [0.0, 0.4]])
  kl = _apply(prior, params, 'kl', mean, log_var, labels=labels)
  eps = jax.random.normal(jax.random.key(3), (200_000, 2, 2))
  z = mean + jnp.exp(0.5 * log_var) * eps
  log_q = distributions.gaussian_log_prob(z, mean, log_var)
  log_p = _apply(prior, params, 'log_prob', z, labels=labels)
  np.testing.assert_allclose(kl, jnp.mean(log_q - log_p, axis=0), atol=0.02)
  # Class 0 is N(0, I): the KL to the standard normal.
  np.testing.assert_allclose(
      _apply(prior, params, 'kl', mean, log_var, labels=jnp.array([0, 0])),
      distributions.gaussian_kl_to_standard_normal(mean, log_var), rtol=1e-5, atol=1e-6)
