"""Encoder/decoder shapes for every architecture, likelihood and image shape; the
two-stochastic-layer wiring of Burda et al. 2015."""

import importlib.util
import os

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


def burda_two_layer_config():
  """Burda et al. 2015's two stochastic layers: 200-200 -> z_1 (100) -> 100-100 -> z_2 (50)."""
  c = config_lib.default_config().model
  c.hidden, c.latent_dim, c.activation = (200, 200), 100, 'tanh'
  c.upper_latent_dims, c.upper_hidden = (50,), ((100, 100),)
  return c


def test_two_stochastic_layers_wiring():
  model = models.make_model(burda_two_layer_config(), (28, 28, 1))
  assert model.latent_dims == (100, 50) and hash(model) == hash(model)
  x = jnp.zeros((3, 28, 28, 1))
  params = model.init({'params': jax.random.key(0)}, x, jax.random.key(1))['params']
  shapes = jax.tree.map(lambda a: a.shape, params)
  assert set(params) == {'encoder', 'decoder', 'upper_encoders_0', 'upper_priors_0'}
  # q(z_2 | z_1): 100 -> 100 -> 100 -> (mean, log_var) of 50; p(z_1 | z_2) mirrors it.
  assert [shapes['upper_encoders_0'][f'Dense_{i}']['kernel'] for i in range(3)] == [
      (100, 100), (100, 100), (100, 100)]
  assert [shapes['upper_priors_0'][f'Dense_{i}']['kernel'] for i in range(3)] == [
      (50, 100), (100, 100), (100, 200)]
  assert shapes['encoder']['Dense_2']['kernel'] == (200, 200)
  assert shapes['decoder']['Dense_0']['kernel'] == (100, 200)
  mean, log_var = model.apply({'params': params}, x, method='encode')
  assert mean.shape == log_var.shape == (3, 100)
  upper_mean, _ = model.apply({'params': params}, mean, 0, method='encode_upper')
  assert upper_mean.shape == (3, 50)
  prior_mean, _ = model.apply({'params': params}, upper_mean, 0, method='prior_upper')
  assert prior_mean.shape == (3, 100)
  assert model.apply({'params': params}, mean, method='decode').shape == (3, 28, 28, 1)
  out_a, _, _ = model.apply({'params': params}, x, jax.random.key(2))
  out_b, _, _ = model.apply({'params': params}, x, jax.random.key(2))
  out_c, _, _ = model.apply({'params': params}, x, jax.random.key(3))
  assert jnp.array_equal(out_a, out_b) and not jnp.array_equal(out_a, out_c)


def test_a_config_saved_before_upper_layers_builds_the_same_one_layer_model():
  c = config_lib.default_config().model
  old = config_lib.default_config().model
  del old['upper_latent_dims'], old['upper_hidden']  # As in an older workdir's config.json.
  x = jnp.zeros((2, 28, 28, 1))
  trees = []
  for model_config in (c, old):
    model = models.make_model(model_config, (28, 28, 1))
    assert model.latent_dims == (20,)
    trees.append(model.init({'params': jax.random.key(0)}, x, jax.random.key(1))['params'])
  assert set(trees[0]) == {'encoder', 'decoder'}
  assert jax.tree.all(jax.tree.map(jnp.array_equal, trees[0], trees[1]))


@pytest.mark.parametrize('dims,hidden', [((50,), ()), ((0,), ((8,),)), ((5,), ((8, 0),)),
                                         ((5, 4), ((8,),)), ((True,), ((8,),))])
def test_upper_layers_are_validated(dims, hidden):
  c = config_lib.default_config()
  c.model.upper_latent_dims, c.model.upper_hidden = dims, hidden
  with pytest.raises(config_lib.ConfigError, match=r'config\.model\.upper_'):
    config_lib.validate(c, num_devices=1)


def _iwae_config_module():
  """configs/iwae.py as a module (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      'iwae_config', os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'iwae.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_iwae_config_two_layers():
  module = _iwae_config_module()
  c = module.get_config('objective=iwae,k=5,layers=2')
  config_lib.validate(c, num_devices=1)
  assert (c.model.latent_dim, tuple(c.model.upper_latent_dims)) == (100, (50,))
  assert tuple(c.model.hidden) == (200, 200)
  assert tuple(map(tuple, c.model.upper_hidden)) == ((100, 100),)


def test_iwae_config_kl_warmup_in_epochs():
  module = _iwae_config_module()
  c = module.get_config('objective=elbo,k=1,layers=2,epochs=200,warmup=50')
  config_lib.validate(c, num_devices=1)
  assert c.objective.kl_warmup_steps == 125_000  # 50 epochs of 2,500 steps
  assert module.get_config('objective=iwae,k=5').objective.kl_warmup_steps == 0
  with pytest.raises(config_lib.ConfigError, match=r'config\.objective\.kl_warmup_steps'):
    config_lib.validate(module.get_config('objective=iwae,k=5,warmup=10'), num_devices=1)
