"""Linear-Gaussian VAEs written in the model contract, with log p(x) in closed form.

One layer: p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I), so p(x) = N(b, W W^T +
s^2 I) and the exact posterior is N(S W^T (x - b) / s^2, S) with S = (I + W^T W /
s^2)^-1, diagonal because W's columns are orthogonal. The encoder computes that
posterior (widened by std_scale and shifted by mean_shift if asked) from its own
copy of W and b. Images are [B, 1, X, 1] with a real-valued Gaussian likelihood.

Two layers (Burda's chain): p(z_2) = N(0, I), p(z_1 | z_2) = N(A z_2 + a, s_1^2
I), p(x | z_1) = N(W z_1 + b, s^2 I), so p(x) = N(W a + b, W (A A^T + s_1^2 I)
W^T + s^2 I). A's rows and columns are orthogonal and so are W's columns:
p(z_1 | x) and p(z_2 | z_1) are diagonal Gaussians, and with them as q every
importance weight is p(x).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from vae_jax import models
from vae_jax.models import likelihoods
from vae_jax.models import posteriors
from vae_jax.models import priors

OBS_DIM, LATENT_DIM, OBS_VAR = 6, 3, 0.25
TOP_DIM, TOP_VAR = 2, 0.3
# z_2's second latent has no child: an inactive unit, its posterior the prior.
A_MATRIX = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 0.0]])
A_BIAS = np.array([0.5, -1.0, 0.2])


def _widen(mean, var, std_scale, mean_shift):
  log_var = jnp.log(var) + 2.0 * math.log(std_scale)
  return jnp.concatenate([mean + mean_shift, jnp.broadcast_to(log_var, mean.shape)], -1)


class LinearEncoder(nn.Module):
  """The exact q(z_1 | x) of either model (with the chain's prior when `hierarchical`)."""

  std_scale: float = 1.0
  mean_shift: float = 0.0
  hierarchical: bool = False

  @nn.compact
  def __call__(self, x, cond=None):
    w = self.param('w', nn.initializers.normal(), (OBS_DIM, LATENT_DIM))
    b = self.param('b', nn.initializers.zeros, (OBS_DIM,))
    x = x.reshape(x.shape[0], OBS_DIM)
    if not self.hierarchical:
      post_var = 1.0 / (1.0 + jnp.sum(w**2, axis=0) / OBS_VAR)
      return _widen(post_var * ((x - b) @ w) / OBS_VAR, post_var, self.std_scale,
                    self.mean_shift)
    a = self.param('a', nn.initializers.normal(), (LATENT_DIM, TOP_DIM))
    a_bias = self.param('a_bias', nn.initializers.zeros, (LATENT_DIM,))
    prior_var = jnp.sum(a**2, axis=1) + TOP_VAR
    post_var = 1.0 / (1.0 / prior_var + jnp.sum(w**2, axis=0) / OBS_VAR)
    mean = post_var * (a_bias / prior_var + ((x - b) @ w) / OBS_VAR)
    return _widen(mean, post_var, self.std_scale, self.mean_shift)


class LinearDecoder(nn.Module):
  """z_1 [N, 3] -> (mean, log_var) of p(x | z_1) as [N, 1, X, 2]."""

  @nn.compact
  def __call__(self, z, cond=None):
    w = self.param('w', nn.initializers.normal(), (OBS_DIM, LATENT_DIM))
    b = self.param('b', nn.initializers.zeros, (OBS_DIM,))
    mean = z @ w.T + b
    log_var = jnp.full_like(mean, math.log(OBS_VAR))
    return jnp.stack([mean, log_var], axis=-1).reshape(z.shape[0], 1, OBS_DIM, 2)


class UpperEncoder(nn.Module):
  """The exact q(z_2 | z_1) of the chain."""

  std_scale: float = 1.0
  mean_shift: float = 0.0

  @nn.compact
  def __call__(self, z1):
    a = self.param('a', nn.initializers.normal(), (LATENT_DIM, TOP_DIM))
    a_bias = self.param('a_bias', nn.initializers.zeros, (LATENT_DIM,))
    post_var = 1.0 / (1.0 + jnp.sum(a**2, axis=0) / TOP_VAR)
    return _widen(post_var * ((z1 - a_bias) @ a) / TOP_VAR, post_var, self.std_scale,
                  self.mean_shift)


class UpperPrior(nn.Module):
  """p(z_1 | z_2) = N(A z_2 + a, s_1^2 I)."""

  @nn.compact
  def __call__(self, z2):
    a = self.param('a', nn.initializers.normal(), (LATENT_DIM, TOP_DIM))
    a_bias = self.param('a_bias', nn.initializers.zeros, (LATENT_DIM,))
    mean = z2 @ a.T + a_bias
    return jnp.concatenate([mean, jnp.full_like(mean, math.log(TOP_VAR))], -1)


def one_layer_model(std_scale=1.0, mean_shift=0.0, prior=None, posterior=None):
  """The one-layer linear-Gaussian VAE; q is its exact posterior unless widened or shifted."""
  return models.VAE(LinearEncoder(std_scale, mean_shift), LinearDecoder(),
                    likelihoods.Gaussian(levels=0), posterior or posteriors.DiagonalGaussian(),
                    prior or priors.StandardNormal(LATENT_DIM), LATENT_DIM)


def two_layer_model(std_scale=1.0, mean_shift=0.0):
  """The linear-Gaussian chain; q is its exact posterior unless widened or shifted."""
  return models.VAE(
      LinearEncoder(std_scale, mean_shift, hierarchical=True), LinearDecoder(),
      likelihoods.Gaussian(levels=0), posteriors.DiagonalGaussian(),
      priors.StandardNormal(TOP_DIM), LATENT_DIM,
      upper_encoders=(UpperEncoder(std_scale, mean_shift),), upper_priors=(UpperPrior(),),
      upper_latent_dims=(TOP_DIM,))


def _w_and_b(seed):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(OBS_DIM, LATENT_DIM)))
  w = q * np.array([2.0, 1.0, 0.5])  # Orthogonal columns: a diagonal posterior.
  return w, rng.normal(size=OBS_DIM), rng


def _f32(a):
  return jnp.asarray(a, jnp.float32)


def one_layer_problem(num_images, seed=0):
  """(params, images [N, 1, X, 1] as float32 numpy, exact log p(x) [N] in float64)."""
  w, b, rng = _w_and_b(seed)
  z = rng.normal(size=(num_images, LATENT_DIM))
  x = z @ w.T + b + math.sqrt(OBS_VAR) * rng.normal(size=(num_images, OBS_DIM))
  log_px = scipy.stats.multivariate_normal(b, w @ w.T + OBS_VAR * np.eye(OBS_DIM)).logpdf(x)
  wb = {'w': _f32(w), 'b': _f32(b)}
  params = {'encoder': dict(wb), 'decoder': dict(wb)}
  return params, x.reshape(num_images, 1, OBS_DIM, 1).astype(np.float32), log_px


def two_layer_problem(num_images, seed=0):
  """(params, images [N, 1, X, 1] as float32 numpy, exact log p(x) [N] in float64)."""
  w, b, _ = _w_and_b(seed)
  rng = np.random.default_rng(seed + 1)
  z2 = rng.normal(size=(num_images, TOP_DIM))
  z1 = z2 @ A_MATRIX.T + A_BIAS + math.sqrt(TOP_VAR) * rng.normal(size=(num_images, LATENT_DIM))
  x = z1 @ w.T + b + math.sqrt(OBS_VAR) * rng.normal(size=(num_images, OBS_DIM))
  cov_z1 = A_MATRIX @ A_MATRIX.T + TOP_VAR * np.eye(LATENT_DIM)
  log_px = scipy.stats.multivariate_normal(
      w @ A_BIAS + b, w @ cov_z1 @ w.T + OBS_VAR * np.eye(OBS_DIM)).logpdf(x)
  wb, ab = {'w': _f32(w), 'b': _f32(b)}, {'a': _f32(A_MATRIX), 'a_bias': _f32(A_BIAS)}
  params = {'encoder': {**wb, **ab}, 'decoder': dict(wb), 'upper_encoders_0': dict(ab),
            'upper_priors_0': dict(ab)}
  return params, x.reshape(num_images, 1, OBS_DIM, 1).astype(np.float32), log_px


def posterior_stats(model, params, x):
  """(mean, log_var) of q(z_1 | x), each [B, D_1]."""
  return model.apply({'params': params}, jnp.asarray(x),
                     method=lambda m, x: posteriors.gaussian_stats(m.encoder(x)))


def upper_posterior_mean(model, params, z1):
  """The mean of q(z_2 | z_1) in the chain."""
  return model.apply({'params': params}, z1,
                     method=lambda m, z: posteriors.gaussian_stats(m.upper_encoders[0](z))[0])
