"""Generation: prior samples, reconstructions, interpolations, traversals.

Each function is pure in (model, params, inputs, key) and returns images in
[0, 1] (the mean of p(x | z), which is what one looks at); `save_*` helpers in
generate.py and the training loop write them as PNG grids. They read only the
model's contract: `sample` (ancestral samples from the prior), `decode` (top
latents down to the likelihood's parameters) and the terms of a call. In a
model with several stochastic layers interpolations and traversals move the
top latent z_L, the one the prior p(z_L) describes, and decode it through the
means of the conditional priors below.

Each is jitted with the model static: run op by op, a hierarchy's scanned groups
were traced and compiled again at every call (`generate` on the five-group ladder
of experiments/ladder: 77 s op by op, 14 s jitted, the same pictures).
"""

import functools

import jax
import jax.numpy as jnp

from vae_jax import objectives


def _mean(module, out):
  return module.likelihood.mean(out)


def likelihood_mean(model, params, out):
  """The mean image of p(x | z) from the decoder's output, inside the model's apply (a
  likelihood may have parameters of its own: causal_bernoulli's network)."""
  return model.apply({'params': params}, out, method=_mean)


@functools.partial(jax.jit, static_argnames='model')
def decode_mean(model, params, z, labels=None):
  """The mean image of p(x | z) for top latents z [N, D_L] (through the means of the layers below)."""
  out = model.apply({'params': params}, z, labels=labels, method='decode')
  return likelihood_mean(model, params, out)


@functools.partial(jax.jit, static_argnames='model')
def top_latent_mean(model, params, x, labels=None):
  """x's top latent through posterior means: the terms with zero noise, [N, D_L].

  A diagonal Gaussian with eps = 0 is its mean, so in Burda's chain this is
  E q(z_1 | x), then each mean of q(z_{l+1} | z_l); a flow maps the mean through.
  """
  eps = jnp.zeros((1, x.shape[0], model.noise_dim))
  return objectives.terms(model, params, x, eps, labels, decode=False).layers[-1].z[0]


@functools.partial(jax.jit, static_argnames=('model', 'num_samples'))
def prior_samples(model, params, key, num_samples, temperature=1.0, labels=None):
  """Ancestral samples from the prior, every std scaled by temperature.

  temperature < 1 trades variety for fidelity. `labels` [num_samples] choose
  the classes of a conditional VAE.
  """
  out = model.apply({'params': params}, key, num_samples, temperature, labels, method='sample')
  return likelihood_mean(model, params, out)


@functools.partial(jax.jit, static_argnames='model')
def reconstructions(model, params, x, key=None, labels=None):
  """Reconstructs x through the posterior means (or one sample of q with `key`)."""
  shape = (1, x.shape[0], model.noise_dim)
  eps = jnp.zeros(shape) if key is None else jax.random.normal(key, shape)
  return likelihood_mean(model, params, objectives.terms(model, params, x, eps, labels).out[0])


@functools.partial(jax.jit, static_argnames='model')
def top_group_reconstructions(model, params, x, key, num_posterior_groups, temperature=1.0):
  """Mean images with the top `num_posterior_groups` groups of a top-down hierarchy at their
  posterior means given x and the groups below sampled from their priors (the usual
  picture of what each depth of the hierarchy keeps of x)."""
  out = model.apply({'params': params}, x, key, num_posterior_groups, temperature,
                    method='reconstruct_top')
  return likelihood_mean(model, params, out)


def side_by_side(x, x_hat):
  """Interleaves originals and reconstructions: x0, x0_hat, x1, x1_hat, ..."""
  stacked = jnp.stack([x, x_hat], axis=1)
  return stacked.reshape((-1,) + x.shape[1:])


@functools.partial(jax.jit, static_argnames=('model', 'num_steps', 'spherical'))
def interpolate(model, params, x_a, x_b, num_steps=10, spherical=False, labels=None):
  """Decodes the path between the (top-layer) posterior means of two images.

  Spherical interpolation (White 2016, "Sampling Generative Networks") stays
  near the shell where N(0, I) puts its mass; linear is the default. `labels`
  are the two images' classes in a conditional VAE (the path is drawn with the
  first one's).
  """
  z_a, z_b = top_latent_mean(model, params, jnp.stack([x_a, x_b]), labels)
  t = jnp.linspace(0.0, 1.0, num_steps).reshape((-1,) + (1,) * z_a.ndim)  # Latents of any shape.
  if spherical:
    cos = jnp.vdot(z_a, z_b) / (jnp.linalg.norm(z_a) * jnp.linalg.norm(z_b) + 1e-12)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.maximum(jnp.sin(omega), 1e-6)
    z = (jnp.sin((1 - t) * omega) * z_a + jnp.sin(t * omega) * z_b) / sin
  else:
    z = (1 - t) * z_a + t * z_b
  path_labels = None if labels is None else jnp.full((num_steps,), labels[0])
  return decode_mean(model, params, z, path_labels)


@functools.partial(jax.jit, static_argnames='model')
def traversal(model, params, x, dims, values, label=None):
  """One row per latent dim in `dims`: vary it over `values`, others at x's mean.

  The dims index the top layer's latents, flattened (a VQ-VAE's are a grid of
  vectors). Returns [len(dims) * len(values), H, W, C], row-major.
  """
  labels = None if label is None else jnp.asarray([label])
  z_image = top_latent_mean(model, params, x[None], labels)[0]
  z0 = z_image.reshape(-1)
  dims = jnp.asarray(dims)
  values = jnp.asarray(values)
  z = jnp.tile(z0, (dims.shape[0], values.shape[0], 1))
  z = z.at[jnp.arange(dims.shape[0])[:, None], jnp.arange(values.shape[0])[None, :],
           dims[:, None]].set(values[None, :])
  z = z.reshape((-1,) + z_image.shape)
  grid_labels = None if label is None else jnp.full((z.shape[0],), label)
  return decode_mean(model, params, z, grid_labels)
