"""Generation from one- and two-stochastic-layer VAEs: known answers at the means."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import config as config_lib
from vae_jax import models
from vae_jax import sampling
from vae_jax.models import posteriors


def tiny_model(two_layers):
  c = config_lib.default_config().model
  c.hidden, c.latent_dim, c.activation = (16,), 6, 'tanh'
  if two_layers:
    c.upper_latent_dims, c.upper_hidden = (3,), ((8,),)
  model = models.make_model(c, (4, 4, 1))
  x = (jax.random.uniform(jax.random.key(0), (5, 4, 4, 1)) > 0.5).astype(jnp.float32)
  params = models.init_params(model, jax.random.key(1), (4, 4, 1))
  return model, params, x


def _apply(model, params, *args, method):
  return model.apply({'params': params}, *args, method=method)


def _prior_mean(m, z):
  """The mean of p(z_1 | z_2)."""
  return posteriors.gaussian_stats(m.upper_priors[0](z))[0]


def _decoder_mean(model, params, z1):
  """The Bernoulli mean image of the decoder at bottom latents z_1 [N, D_1]."""
  return jax.nn.sigmoid(_apply(model, params, z1, method=lambda m, z: m.decoder(z)))


def _encoder_stats(m, x):
  """(mean, log_var) of q(z_1 | x)."""
  return posteriors.gaussian_stats(m.encoder(x))


def test_two_layer_top_down_decoding_follows_the_conditional_prior_means():
  model, params, _ = tiny_model(two_layers=True)
  z2 = jax.random.normal(jax.random.key(3), (4, 3))
  z1 = _apply(model, params, z2, method=_prior_mean)
  assert z1.shape == (4, 6)
  expected = _decoder_mean(model, params, z1)
  np.testing.assert_allclose(sampling.decode_mean(model, params, z2), expected, rtol=1e-6)


@pytest.mark.parametrize('two_layers', [False, True])
def test_prior_samples_at_temperature_zero_decode_the_prior_means(two_layers):
  model, params, _ = tiny_model(two_layers)
  top_dim = model.latent_dims[-1]
  cold = sampling.prior_samples(model, params, jax.random.key(4), 3, temperature=0.0)
  np.testing.assert_allclose(cold, sampling.decode_mean(model, params, jnp.zeros((3, top_dim))),
                             rtol=1e-6)
  warm = sampling.prior_samples(model, params, jax.random.key(4), 3, temperature=1.0)
  other = sampling.prior_samples(model, params, jax.random.key(5), 3, temperature=1.0)
  assert warm.shape == (3, 4, 4, 1) and np.all((warm >= 0) & (warm <= 1))
  assert not np.allclose(warm, other)


def test_two_layer_reconstructions_go_through_z1():
  model, params, x = tiny_model(two_layers=True)
  mean, log_var = _apply(model, params, x, method=_encoder_stats)
  np.testing.assert_allclose(sampling.reconstructions(model, params, x),
                             _decoder_mean(model, params, mean), rtol=1e-6)
  # With a key: one sample of q(z_1 | x), the first D_1 of the key's noise.
  key = jax.random.key(6)
  eps = jax.random.normal(key, (1, x.shape[0], model.noise_dim))[0, :, :6]
  np.testing.assert_allclose(sampling.reconstructions(model, params, x, key),
                             _decoder_mean(model, params, mean + jnp.exp(0.5 * log_var) * eps),
                             rtol=1e-5, atol=1e-6)


def _top_mean_by_hand(model, params, x):
  """E q(z_1 | x), then (two layers) the mean of q(z_2 | z_1) at it."""
  z, _ = _apply(model, params, x, method=_encoder_stats)
  if model.upper_latent_dims:
    z, _ = _apply(model, params, z,
                  method=lambda m, z: posteriors.gaussian_stats(m.upper_encoders[0](z)))
  return z


@pytest.mark.parametrize('two_layers', [False, True])
def test_interpolation_and_traversal_move_the_top_latent(two_layers):
  model, params, x = tiny_model(two_layers)
  z_top = sampling.top_latent_mean(model, params, x[:2])
  assert z_top.shape == (2, model.latent_dims[-1])
  np.testing.assert_allclose(z_top, _top_mean_by_hand(model, params, x[:2]), rtol=1e-5,
                             atol=1e-6)
  path = sampling.interpolate(model, params, x[0], x[1], num_steps=4)
  ends = path[jnp.array([0, -1])]
  np.testing.assert_allclose(ends, sampling.decode_mean(model, params, z_top), rtol=1e-5,
                             atol=1e-6)
  values = jnp.array([-2.0, 0.5, 3.0])
  grid = sampling.traversal(model, params, x[0], [2, 0], values)
  assert grid.shape == (6, 4, 4, 1)
  moved = z_top[0].at[0].set(values[1])  # Row 1 (dim 0), column 1.
  np.testing.assert_allclose(grid[4], sampling.decode_mean(model, params, moved[None])[0],
                             rtol=1e-5, atol=1e-6)
