"""Generation from one- and two-stochastic-layer VAEs: known answers at the means."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import config as config_lib
from vae_jax import models
from vae_jax import sampling


def tiny_model(two_layers):
  c = config_lib.default_config().model
  c.hidden, c.latent_dim, c.activation = (16,), 6, 'tanh'
  if two_layers:
    c.upper_latent_dims, c.upper_hidden = (3,), ((8,),)
  model = models.make_model(c, (4, 4, 1))
  x = (jax.random.uniform(jax.random.key(0), (5, 4, 4, 1)) > 0.5).astype(jnp.float32)
  params = model.init({'params': jax.random.key(1)}, x, jax.random.key(2))['params']
  return model, params, x


def _apply(model, params, *args, method):
  return model.apply({'params': params}, *args, method=method)


def test_two_layer_top_down_decoding_follows_the_conditional_prior_means():
  model, params, _ = tiny_model(two_layers=True)
  z2 = jax.random.normal(jax.random.key(3), (4, 3))
  z1, _ = _apply(model, params, z2, 0, method='prior_upper')
  expected = jax.nn.sigmoid(_apply(model, params, z1, method='decode'))
  np.testing.assert_allclose(sampling.decode_top(model, params, z2), expected, rtol=1e-6)


@pytest.mark.parametrize('two_layers', [False, True])
def test_prior_samples_at_temperature_zero_decode_the_prior_means(two_layers):
  model, params, _ = tiny_model(two_layers)
  top_dim = model.latent_dims[-1]
  cold = sampling.prior_samples(model, params, jax.random.key(4), 3, temperature=0.0)
  np.testing.assert_allclose(cold, sampling.decode_top(model, params, jnp.zeros((3, top_dim))),
                             rtol=1e-6)
  warm = sampling.prior_samples(model, params, jax.random.key(4), 3, temperature=1.0)
  other = sampling.prior_samples(model, params, jax.random.key(5), 3, temperature=1.0)
  assert warm.shape == (3, 4, 4, 1) and np.all((warm >= 0) & (warm <= 1))
  assert not np.allclose(warm, other)


def test_two_layer_reconstructions_go_through_z1():
  model, params, x = tiny_model(two_layers=True)
  mean, _ = _apply(model, params, x, method='encode')
  np.testing.assert_allclose(sampling.reconstructions(model, params, x),
                             sampling.decode_mean(model, params, mean), rtol=1e-6)


@pytest.mark.parametrize('two_layers', [False, True])
def test_interpolation_and_traversal_move_the_top_latent(two_layers):
  model, params, x = tiny_model(two_layers)
  z_top = sampling.encode_top_mean(model, params, x[:2])
  assert z_top.shape == (2, model.latent_dims[-1])
  path = sampling.interpolate(model, params, x[0], x[1], num_steps=4)
  ends = path[jnp.array([0, -1])]
  np.testing.assert_allclose(ends, sampling.decode_top(model, params, z_top), rtol=1e-5, atol=1e-6)
  values = jnp.array([-2.0, 0.5, 3.0])
  grid = sampling.traversal(model, params, x[0], [2, 0], values)
  assert grid.shape == (6, 4, 4, 1)
  moved = z_top[0].at[0].set(values[1])  # Row 1 (dim 0), column 1.
  np.testing.assert_allclose(grid[4], sampling.decode_top(model, params, moved[None])[0],
                             rtol=1e-5, atol=1e-6)
