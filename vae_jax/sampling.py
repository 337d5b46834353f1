"""Generation: prior samples, reconstructions, interpolations, traversals.

Each function is pure in (model, params, inputs, key) and returns images in
[0, 1] (the mean of p(x | z), which is what one looks at); `save_*` helpers in
generate.py and the training loop write them as PNG grids.
"""

import jax
import jax.numpy as jnp

from vae_jax import distributions


def decode_mean(model, params, z):
  """The mean image of p(x | z) for latents z [N, D]."""
  out = model.apply({'params': params}, z, method='decode')
  return distributions.likelihood_mean(model.likelihood, out)


def prior_samples(model, params, key, num_samples, temperature=1.0):
  """Decodes z ~ N(0, temperature^2 I): temperature < 1 trades variety for fidelity."""
  z = temperature * jax.random.normal(key, (num_samples, model.latent_dim))
  return decode_mean(model, params, z)


def encode_mean(model, params, x):
  mean, _ = model.apply({'params': params}, x, method='encode')
  return mean


def reconstructions(model, params, x, key=None):
  """Reconstructs x through the posterior mean (or one posterior sample with `key`)."""
  mean, log_var = model.apply({'params': params}, x, method='encode')
  z = mean if key is None else distributions.gaussian_sample(key, mean, log_var)
  return decode_mean(model, params, z)


def side_by_side(x, x_hat):
  """Interleaves originals and reconstructions: x0, x0_hat, x1, x1_hat, ..."""
  stacked = jnp.stack([x, x_hat], axis=1)
  return stacked.reshape((-1,) + x.shape[1:])


def interpolate(model, params, x_a, x_b, num_steps=10, spherical=False):
  """Decodes the path between the posterior means of two images.

  Spherical interpolation (White 2016, "Sampling Generative Networks") stays
  near the shell where N(0, I) puts its mass; linear is the default.
  """
  z_a, z_b = encode_mean(model, params, jnp.stack([x_a, x_b]))
  t = jnp.linspace(0.0, 1.0, num_steps)[:, None]
  if spherical:
    cos = jnp.dot(z_a, z_b) / (jnp.linalg.norm(z_a) * jnp.linalg.norm(z_b) + 1e-12)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.maximum(jnp.sin(omega), 1e-6)
    z = (jnp.sin((1 - t) * omega) * z_a + jnp.sin(t * omega) * z_b) / sin
  else:
    z = (1 - t) * z_a + t * z_b
  return decode_mean(model, params, z)


def traversal(model, params, x, dims, values):
  """One row per latent dim in `dims`: vary it over `values`, others at x's mean.

  Returns [len(dims) * len(values), H, W, C], row-major.
  """
  z0 = encode_mean(model, params, x[None])[0]
  dims = jnp.asarray(dims)
  values = jnp.asarray(values)
  z = jnp.tile(z0, (dims.shape[0], values.shape[0], 1))
  z = z.at[jnp.arange(dims.shape[0])[:, None], jnp.arange(values.shape[0])[None, :],
           dims[:, None]].set(values[None, :])
  return decode_mean(model, params, z.reshape((-1, z0.shape[0])))
