"""The VAE: p(z) p(x | z) and q(z | x), and the terms every objective and evaluation reads.

Called on images x [B, H, W, C] with standard normal noise eps [k, B,
noise_dim] (k samples per image; `objectives.draw_noise` makes it from a key),
the model returns `Terms`: log p(x | z) [k, B] and, per stochastic layer
bottom-up, `Layer(z, log_q, log_p, kl, mean)`. The ELBO, the IWAE bound, the
importance-sampled log p(x), active units and KL per dimension are written once
against these terms (objectives.py, evaluate.py); prior samples,
reconstructions, interpolations and traversals against `decode` and `sample`
(sampling.py). Nothing outside this file asks how many layers there are.
"""

from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import distributions
from vae_jax.models import posteriors


class Layer(NamedTuple):
  """One stochastic layer's terms for k samples of B images.

  z [k, B, D]; log_q and log_p per latent [k, B, D] when both densities
  factorise over the layer's latents, else per example [k, B]; kl the analytic
  KL(q || p) per latent (broadcastable to z) where it exists, else None; mean
  E[z | x, the layers it is conditioned on] in closed form where q gives it
  (a diagonal Gaussian), else the sample z; log_var the diagonal Gaussian's log
  variance [k, B, D] where q is one (what the objectives that estimate the
  aggregate posterior q(z) from a batch read), else None.
  """
  z: jax.Array
  log_q: jax.Array
  log_p: jax.Array
  kl: Optional[jax.Array]
  mean: jax.Array
  log_var: Optional[jax.Array] = None


class Terms(NamedTuple):
  log_px_z: Optional[jax.Array]  # [k, B]; None when called with decode=False.
  layers: tuple
  out: Optional[jax.Array]  # The decoder's output [k, B, H, W, c], read by the likelihood.


def make_layer(draw, log_p, kl=None):
  """A Layer from a posterior draw and log p; per-latent terms only where both factorise."""
  log_q = draw.log_q
  if log_q.shape != log_p.shape:
    lead = draw.z.shape[:2]
    log_q, log_p = (jnp.sum(a.reshape(lead + (-1,)), -1) for a in (log_q, log_p))
  return Layer(draw.z, log_q, log_p, kl, draw.z if draw.mean is None else draw.mean,
               draw.log_var)


def _rows(a):
  """[k, B, ...] -> [k * B, ...]."""
  return a.reshape((-1,) + a.shape[2:])


def _unrows(a, k):
  return a.reshape((k, -1) + a.shape[1:])


class VAE(nn.Module):
  """A VAE with one stochastic layer or Burda's bottom-up chain of several.

  One layer (Kingma & Welling 2013, "Auto-Encoding Variational Bayes"):
  q(z | x) from `posterior` on the encoder's features, p(z) = `prior`, p(x | z)
  = `likelihood` on the decoder's output. With `upper_encoders` and
  `upper_priors` it has L = 1 + len(upper_latent_dims) layers (Burda et al.
  2015, "Importance Weighted Autoencoders", sec. 5):

    q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}),
    p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1), p(z_L) = `prior`,

  every conditional between layers a diagonal Gaussian. A chain reports no
  analytic KL: each layer's rate is Burda's single-sample log q - log p.

  With num_classes > 0 it is a conditional VAE (Sohn et al. 2015, "Learning
  Structured Output Representation using Deep Conditional Generative Models"):
  the one-hot label joins the encoder's and the decoder's inputs, and the
  prior may be class-conditional.
  """

  encoder: nn.Module
  decoder: nn.Module
  likelihood: object
  posterior: nn.Module
  prior: nn.Module
  latent_dim: int  # Of z_1.
  upper_encoders: Sequence[nn.Module] = ()
  upper_priors: Sequence[nn.Module] = ()
  upper_latent_dims: Sequence[int] = ()
  num_classes: int = 0

  @property
  def latent_dims(self):
    """(D_1, ..., D_L), bottom-up."""
    return (self.latent_dim,) + tuple(self.upper_latent_dims)

  @property
  def noise_dim(self):
    """Standard normal draws per sample: D_1 + ... + D_L."""
    return sum(self.latent_dims)

  def _condition(self, labels):
    if not self.num_classes:
      return None
    if labels is None:
      raise ValueError(f'a conditional VAE ({self.num_classes} classes) needs labels')
    return jax.nn.one_hot(labels, self.num_classes)

  def _gaussian_of(self, images):
    """(mean, log_var) of q(z_1 | images): how a VampPrior evaluates its pseudo-inputs."""
    return self.posterior.gaussian(self.encoder(images))

  def _prior_kwargs(self, labels):
    return {'labels': labels, 'encode': self._gaussian_of}

  def __call__(self, x, eps, labels=None, decode=True):
    cond = self._condition(labels)
    eps_layers = jnp.split(eps, np.cumsum(self.latent_dims)[:-1], axis=-1)
    k = eps.shape[0]
    draws = [self.posterior(self.encoder(x, cond), eps_layers[0])]
    for encoder, e in zip(self.upper_encoders, eps_layers[1:]):
      features = _unrows(encoder(_rows(draws[-1].z)), k)
      draws.append(posteriors.gaussian_draw(*posteriors.gaussian_stats(features), e))
    layers = []
    for below, prior in zip(draws, self.upper_priors):  # p(z_l | z_{l+1}), l < L.
      above = draws[len(layers) + 1].z
      mean, log_var = posteriors.gaussian_stats(_unrows(prior(_rows(above)), k))
      layers.append(make_layer(below, distributions.gaussian_log_prob(below.z, mean, log_var)))
    top = draws[-1]
    kwargs = self._prior_kwargs(labels)
    kl = None
    if len(draws) == 1 and top.mean is not None:
      kl = self.prior.kl(top.mean, top.log_var, **kwargs)
    layers.append(make_layer(top, self.prior.log_prob(top.z, **kwargs), kl))
    if not decode:
      return Terms(None, tuple(layers), None)
    out = self._decode_bottom(draws[0].z, cond)
    return Terms(self.likelihood.log_prob(x, out), tuple(layers), out)

  def _decode_bottom(self, z1, cond):
    """Decoder output [k, B, ...] for z_1 [k, B, D_1]: the k * B rows as one batch."""
    k, batch = z1.shape[:2]
    if cond is not None:
      cond = jnp.broadcast_to(cond, (k,) + cond.shape[-2:]).reshape(k * batch, -1)
    return _unrows(self.decoder(_rows(z1), cond), k)

  def decode(self, z, key=None, temperature=1.0, labels=None):
    """Decoder output for top latents z [N, D_L], through the layers below.

    Each z_l below the top is the mean of p(z_l | z_{l+1}), or with `key` a
    sample from it with its std scaled by `temperature`.
    """
    num_upper = len(self.upper_priors)
    keys = [None] * num_upper if key is None else list(jax.random.split(key, num_upper))
    for layer in reversed(range(num_upper)):
      mean, log_var = posteriors.gaussian_stats(self.upper_priors[layer](z))
      z = mean if key is None else distributions.gaussian_sample(
          keys[layer], mean, log_var, temperature)
    return self._decode_bottom(z[None], self._condition(labels))[0]

  def sample(self, key, num, temperature=1.0, labels=None):
    """Decoder output of `num` ancestral samples from the prior, each std scaled by temperature."""
    self._condition(labels)  # A conditional model refuses to sample without labels.
    kwargs = self._prior_kwargs(labels)
    if not self.upper_priors:
      return self.decode(self.prior.sample(key, num, temperature, **kwargs), labels=labels)
    top_key, lower_key = jax.random.split(key)
    z = self.prior.sample(top_key, num, temperature, **kwargs)
    return self.decode(z, lower_key, temperature, labels)
