"""Priors p(z): `log_prob`, `sample(key, n, temperature)` and, where it exists, an analytic KL.

Every prior takes the same keyword arguments, `labels` (class indices [B], for
a class-conditional prior) and `encode` (the posterior's (mean, log_var) of
given images, for a VampPrior), and ignores those it has no use for, so the
model calls every family the same way. `log_prob` returns per-latent values
[..., D] when the prior factorises over latents, else per-example [...].
`kl(mean, log_var)` is KL(N(mean, exp(log_var)) || p) per latent when it has a
closed form, else None (the objectives then use log q - log p).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions

PRIORS = ('standard_normal', 'mixture', 'vamp')


def gaussian_kl(mean, log_var, prior_mean, prior_log_var):
  """KL(N(mean, exp(log_var)) || N(prior_mean, exp(prior_log_var))), elementwise."""
  log_var = distributions.clip_log_var(log_var)
  prior_log_var = distributions.clip_log_var(prior_log_var)
  return 0.5 * (prior_log_var - log_var - 1.0
                + (jnp.exp(log_var) + jnp.square(mean - prior_mean)) * jnp.exp(-prior_log_var))


def _mixture_log_prob(z, log_weights, means, log_vars):
  """log sum_k w_k N(z | mean_k, exp(log_var_k)) for z [..., D], components [K, D] -> [...].

  The quadratic form sum_d (z_d - m_kd)^2 / v_kd is expanded into two [N, D] x
  [D, K] matmuls: with K = 500 components the elementwise [N, K, D] form made the
  whole train step of a 784-300-300-40 VAE 2x slower on a 2-core CPU.
  """
  log_vars = distributions.clip_log_var(log_vars)
  precision = jnp.exp(-log_vars)  # [K, D]
  lead, dim = z.shape[:-1], z.shape[-1]
  flat = z.reshape(-1, dim)
  quadratic = (jnp.square(flat) @ precision.T - 2.0 * flat @ (means * precision).T
               + jnp.sum(jnp.square(means) * precision, axis=-1))
  per_component = -0.5 * (dim * math.log(2.0 * math.pi) + jnp.sum(log_vars, axis=-1) + quadratic)
  return jax.nn.logsumexp(per_component + log_weights, axis=-1).reshape(lead)


def _sample_mixture(key, num, temperature, log_weights, means, log_vars):
  component_key, noise_key = jax.random.split(key)
  k = jax.random.categorical(component_key, log_weights, shape=(num,))
  return distributions.gaussian_sample(noise_key, means[k], log_vars[k], temperature)


class StandardNormal(nn.Module):
  """p(z) = N(0, I) (Kingma & Welling 2013)."""

  latent_dim: int

  def log_prob(self, z, **unused):
    return distributions.standard_normal_log_prob(z)

  def kl(self, mean, log_var, **unused):
    return distributions.gaussian_kl_to_standard_normal(mean, log_var)

  def sample(self, key, num, temperature=1.0, **unused):
    return temperature * jax.random.normal(key, (num, self.latent_dim))


class ClassConditionalGaussian(nn.Module):
  """p(z | y) = N(mean_y, diag exp(log_var_y)), a learned Gaussian per class (Sohn et al. 2015).

  Starts at N(0, I) for every class, so an untrained conditional VAE is the
  plain one.
  """

  latent_dim: int
  num_classes: int

  def setup(self):
    shape = (self.num_classes, self.latent_dim)
    self.means = self.param('means', nn.initializers.zeros, shape)
    self.log_vars = self.param('log_vars', nn.initializers.zeros, shape)

  def _stats(self, labels, lead):
    mean, log_var = self.means[labels], self.log_vars[labels]
    return jnp.broadcast_to(mean, lead), jnp.broadcast_to(log_var, lead)

  def log_prob(self, z, *, labels, **unused):
    return distributions.gaussian_log_prob(z, *self._stats(labels, z.shape))

  def kl(self, mean, log_var, *, labels, **unused):
    return gaussian_kl(mean, log_var, *self._stats(labels, mean.shape))

  def sample(self, key, num, temperature=1.0, *, labels, **unused):
    mean, log_var = self._stats(labels, (num, self.latent_dim))
    return distributions.gaussian_sample(key, mean, log_var, temperature)


class MixtureOfGaussians(nn.Module):
  """p(z) = sum_k w_k N(mean_k, diag exp(log_var_k)), every part learned.

  The mixture prior of Dilokthanakul et al. 2016 and Tomczak & Welling 2018
  (sec. 3, "mixture of Gaussians"). Means start spread as N(0, I) draws so the
  components can separate; weights start equal.
  """

  latent_dim: int
  num_components: int

  def setup(self):
    shape = (self.num_components, self.latent_dim)
    self.means = self.param('means', nn.initializers.normal(1.0), shape)
    self.log_vars = self.param('log_vars', nn.initializers.zeros, shape)
    self.logits = self.param('logits', nn.initializers.zeros, (self.num_components,))

  def log_prob(self, z, **unused):
    return _mixture_log_prob(z, jax.nn.log_softmax(self.logits), self.means, self.log_vars)

  def kl(self, mean, log_var, **unused):
    return None

  def sample(self, key, num, temperature=1.0, **unused):
    return _sample_mixture(key, num, temperature, jax.nn.log_softmax(self.logits),
                           self.means, self.log_vars)


class VampPrior(nn.Module):
  """p(z) = 1/K sum_k q(z | u_k), K learned pseudo-inputs u_k (Tomczak & Welling 2018).

  "VAE with a VampPrior", eq. 9: the pseudo-inputs are images, pushed through
  the model's own encoder and posterior (`encode`), so the prior follows the
  aggregate posterior. As in the paper's code they are a linear map of the
  identity clipped to [0, 1] (hardtanh), initialised N(init_mean, init_std).
  """

  num_components: int
  image_shape: tuple
  init_mean: float = 0.05
  init_std: float = 0.01

  def setup(self):
    init = lambda key, shape: self.init_mean + self.init_std * jax.random.normal(key, shape)
    self.pseudo_inputs_raw = self.param(
        'pseudo_inputs', init, (self.num_components,) + tuple(self.image_shape))

  def pseudo_inputs(self):
    return jnp.clip(self.pseudo_inputs_raw, 0.0, 1.0)

  def _components(self, encode):
    means, log_vars = encode(self.pseudo_inputs())
    return -math.log(self.num_components) * jnp.ones(means.shape[0]), means, log_vars

  def log_prob(self, z, *, encode, **unused):
    return _mixture_log_prob(z, *self._components(encode))

  def kl(self, mean, log_var, **unused):
    return None

  def sample(self, key, num, temperature=1.0, *, encode, **unused):
    return _sample_mixture(key, num, temperature, *self._components(encode))
