"""Generation: prior samples, reconstructions, interpolations, traversals.

Each function is pure in (model, params, inputs, key) and returns images in
[0, 1] (the mean of p(x | z_1), which is what one looks at); `save_*` helpers in
generate.py and the training loop write them as PNG grids.

In a model with several stochastic layers (Burda et al. 2015) prior samples are
ancestral, from z_L ~ N(0, I) down; reconstructions go through z_1 (x -> z_1 ->
x); interpolations and traversals move the top latent z_L, the one with the
N(0, I) prior, and decode it through the means of the conditional priors.
"""

import jax
import jax.numpy as jnp

from vae_jax import distributions
from vae_jax import objectives


def decode_mean(model, params, z):
  """The mean image of p(x | z_1) for bottom latents z [N, D_1]."""
  out = model.apply({'params': params}, z, method='decode')
  return distributions.likelihood_mean(model.likelihood, out)


def decode_top(model, params, z, key=None, temperature=1.0):
  """The mean image for top latents z [N, D_L], through the layers below.

  Each z_l below the top is the mean of p(z_l | z_{l+1}), or with `key` a
  sample from it with its std scaled by `temperature`. One layer: decode_mean.
  """
  num_upper = len(objectives.upper_latent_dims(model))
  keys = [None] * num_upper if key is None else list(jax.random.split(key, num_upper))
  for layer in reversed(range(num_upper)):
    mean, log_var = model.apply({'params': params}, z, layer, method='prior_upper')
    z = mean if key is None else distributions.gaussian_sample(
        keys[layer], mean, log_var, temperature)
  return decode_mean(model, params, z)


def encode_top_mean(model, params, x):
  """x's top latent through posterior means: E q(z_1 | x), then each mean of q(z_{l+1} | z_l)."""
  z, _ = model.apply({'params': params}, x, method='encode')
  for layer in range(len(objectives.upper_latent_dims(model))):
    z, _ = model.apply({'params': params}, z, layer, method='encode_upper')
  return z


def prior_samples(model, params, key, num_samples, temperature=1.0):
  """Decodes z ~ N(0, temperature^2 I): temperature < 1 trades variety for fidelity.

  With several stochastic layers z is the top one and every layer below is
  drawn from p(z_l | z_{l+1}) with its std scaled by the same temperature.
  """
  upper = objectives.upper_latent_dims(model)
  if not upper:
    z = temperature * jax.random.normal(key, (num_samples, model.latent_dim))
    return decode_mean(model, params, z)
  top_key, lower_key = jax.random.split(key)
  z = temperature * jax.random.normal(top_key, (num_samples, upper[-1]))
  return decode_top(model, params, z, lower_key, temperature)


def reconstructions(model, params, x, key=None):
  """Reconstructs x through the mean of q(z_1 | x) (or one sample of it with `key`)."""
  mean, log_var = model.apply({'params': params}, x, method='encode')
  z = mean if key is None else distributions.gaussian_sample(key, mean, log_var)
  return decode_mean(model, params, z)


def side_by_side(x, x_hat):
  """Interleaves originals and reconstructions: x0, x0_hat, x1, x1_hat, ..."""
  stacked = jnp.stack([x, x_hat], axis=1)
  return stacked.reshape((-1,) + x.shape[1:])


def interpolate(model, params, x_a, x_b, num_steps=10, spherical=False):
  """Decodes the path between the (top-layer) posterior means of two images.

  Spherical interpolation (White 2016, "Sampling Generative Networks") stays
  near the shell where N(0, I) puts its mass; linear is the default.
  """
  z_a, z_b = encode_top_mean(model, params, jnp.stack([x_a, x_b]))
  t = jnp.linspace(0.0, 1.0, num_steps)[:, None]
  if spherical:
    cos = jnp.dot(z_a, z_b) / (jnp.linalg.norm(z_a) * jnp.linalg.norm(z_b) + 1e-12)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.maximum(jnp.sin(omega), 1e-6)
    z = (jnp.sin((1 - t) * omega) * z_a + jnp.sin(t * omega) * z_b) / sin
  else:
    z = (1 - t) * z_a + t * z_b
  return decode_top(model, params, z)


def traversal(model, params, x, dims, values):
  """One row per latent dim in `dims`: vary it over `values`, others at x's mean.

  The dims index the top layer's latents. Returns [len(dims) * len(values),
  H, W, C], row-major.
  """
  z0 = encode_top_mean(model, params, x[None])[0]
  dims = jnp.asarray(dims)
  values = jnp.asarray(values)
  z = jnp.tile(z0, (dims.shape[0], values.shape[0], 1))
  z = z.at[jnp.arange(dims.shape[0])[:, None], jnp.arange(values.shape[0])[None, :],
           dims[:, None]].set(values[None, :])
  return decode_top(model, params, z.reshape((-1, z0.shape[0])))
