"""Encoder/decoder shapes for every architecture, likelihood and image shape."""

import jax
import jax.numpy as jnp
import pytest

from vae_jax import config as config_lib
from vae_jax import distributions
from vae_jax import models


@pytest.mark.parametrize('architecture', ['mlp', 'conv'])
@pytest.mark.parametrize('image_shape,likelihood', [
    ((28, 28, 1), 'bernoulli'), ((28, 28, 1), 'gaussian'), ((32, 32, 3), 'discretized_logistic')])
def test_output_shapes(architecture, image_shape, likelihood):
  c = config_lib.default_config().model
  c.architecture, c.likelihood, c.latent_dim = architecture, likelihood, 7
  c.hidden, c.conv_features = (32,), (8, 16)
  model = models.make_model(c, image_shape)
  x = jnp.zeros((3,) + image_shape)
  params = model.init({'params': jax.random.key(0)}, x, jax.random.key(1))['params']
  mean, log_var = model.apply({'params': params}, x, method='encode')
  assert mean.shape == log_var.shape == (3, 7)
  out = model.apply({'params': params}, mean, method='decode')
  assert out.shape == (3,) + image_shape[:2] + (image_shape[2] * distributions.decoder_channels(likelihood),)
  assert distributions.log_likelihood(likelihood, x, out).shape == (3,)
  assert models.count_params(params) > 0


def test_call_uses_the_explicit_key():
  c = config_lib.default_config().model
  model = models.make_model(c, (28, 28, 1))
  x = jnp.full((2, 28, 28, 1), 0.5)
  params = model.init({'params': jax.random.key(0)}, x, jax.random.key(1))['params']
  out_a, _, _ = model.apply({'params': params}, x, jax.random.key(2))
  out_b, _, _ = model.apply({'params': params}, x, jax.random.key(2))
  out_c, _, _ = model.apply({'params': params}, x, jax.random.key(3))
  assert jnp.array_equal(out_a, out_b) and not jnp.array_equal(out_a, out_c)


def test_depth_to_space_moves_channel_blocks_to_pixels():
  x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(1, 1, 2, 12)  # C = 3 per output pixel
  y = models.depth_to_space(x)
  assert y.shape == (1, 2, 4, 3)
  # Input pixel (0, 0)'s 4 channel blocks land at (0,0), (0,1), (1,0), (1,1).
  assert jnp.array_equal(y[0, 0, 0], x[0, 0, 0, 0:3]) and jnp.array_equal(y[0, 0, 1], x[0, 0, 0, 3:6])
  assert jnp.array_equal(y[0, 1, 0], x[0, 0, 0, 6:9]) and jnp.array_equal(y[0, 1, 1], x[0, 0, 0, 9:12])
