"""Posteriors q(z | x): from the encoder's features, a reparameterised sample and its log q.

A posterior module reads features [..., num_features(D)] and standard normal
noise eps [k, B, D] (k samples per image; the features broadcast over k) and
returns a `Draw`: the sample z [k, B, D], log q(z | x) per latent [k, B, D]
where q factorises over latents or per example [k, B] where it does not, and
the diagonal Gaussian's (mean, log_var) when q is one (what an analytic KL and
the active-units statistic need), else None.
"""

from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions
from vae_jax.models import flows


class Draw(NamedTuple):
  z: jax.Array
  log_q: jax.Array
  mean: Optional[jax.Array] = None
  log_var: Optional[jax.Array] = None


def gaussian_stats(features):
  """features [..., 2D] -> (mean, clipped log_var), each [..., D]."""
  mean, log_var = jnp.split(features, 2, axis=-1)
  return mean, distributions.clip_log_var(log_var)


def gaussian_draw(mean, log_var, eps):
  """z = mean + std * eps and log q per latent, written through eps.

  log q(z) = log N(eps) - log std (change of variables) is exact even when std
  is tiny next to the mean and z - mean rounds to zero in float32.
  """
  z = mean + jnp.exp(0.5 * log_var) * eps
  return Draw(z, distributions.standard_normal_log_prob(eps) - 0.5 * log_var, mean, log_var)


class DiagonalGaussian(nn.Module):
  """q(z | x) = N(mean, diag exp(log_var)), both read from the features (Kingma & Welling 2013)."""

  @staticmethod
  def num_features(latent_dim):
    return 2 * latent_dim

  def gaussian(self, features):
    """(mean, log_var) of q: what a VampPrior evaluates at its pseudo-inputs."""
    return gaussian_stats(features)

  def __call__(self, features, eps):
    return gaussian_draw(*gaussian_stats(features), eps)


class IAFPosterior(nn.Module):
  """A diagonal Gaussian followed by `num_steps` inverse autoregressive flow steps.

  Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow": the encoder also emits a context vector h
  [..., context_dim] that every step reads; log q is the Gaussian's minus the
  flow's log-determinants (eq. 9). It does not factorise over latents, so
  log q is per example and no analytic KL exists.
  """

  num_steps: int
  hidden: Sequence[int]
  context_dim: int
  forget_bias: float = 1.0  # Each step starts as a contraction by sigmoid(forget_bias).

  def num_features(self, latent_dim):
    return 2 * latent_dim + self.context_dim

  @nn.compact
  def __call__(self, features, eps):
    latent_dim = eps.shape[-1]
    stats, context = features[..., :2 * latent_dim], features[..., 2 * latent_dim:]
    draw = gaussian_draw(*gaussian_stats(stats), eps)
    lead = draw.z.shape[:-1]
    context = jnp.broadcast_to(context, lead + context.shape[-1:])
    z, log_q = flows.IAF(self.num_steps, tuple(self.hidden), self.forget_bias)(
        draw.z.reshape(-1, latent_dim), jnp.sum(draw.log_q, axis=-1).reshape(-1),
        context.reshape(-1, context.shape[-1]))
    return Draw(z.reshape(draw.z.shape), log_q.reshape(lead))
