"""Encoder/decoder shapes for every architecture, likelihood and image shape; the
two-stochastic-layer wiring of Burda et al. 2015; every prior, posterior,
likelihood and conditioning family builds and its terms have the documented
shapes (models/vae.py: Terms, Layer)."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import models
from vae_jax import objectives
from vae_jax import sampling
from vae_jax.models import posteriors

# Decoder outputs per image channel of the likelihoods that have one number per channel each.
_PER_CHANNEL = {'bernoulli': 1, 'gaussian': 2, 'discretized_logistic': 2}


def _terms(model, params, x, key, k=1, labels=None, decode=True):
  eps = objectives.draw_noise(model, jax.random.key(key), k, x.shape[0])
  return objectives.terms(model, params, x, eps, labels, decode)


def _broadcasts_to(a, shape):
  """Whether a broadcasts to `shape` (Layer.kl, and a closed-form mean that is the same
  for the k samples of an image, come as [B, D])."""
  return jnp.broadcast_shapes(a.shape, shape) == tuple(shape)


def _encoder_stats(model, params, x):
  """(mean, log_var) of q(z_1 | x), read from the encoder's features."""
  return model.apply({'params': params}, x,
                     method=lambda m, x: posteriors.gaussian_stats(m.encoder(x)))


@pytest.mark.parametrize('architecture', ['mlp', 'conv'])
@pytest.mark.parametrize('image_shape,likelihood', [
    ((28, 28, 1), 'bernoulli'), ((28, 28, 1), 'gaussian'), ((32, 32, 3), 'discretized_logistic')])
def test_output_shapes(architecture, image_shape, likelihood):
  c = config_lib.default_config().model
  c.architecture, c.likelihood, c.latent_dim = architecture, likelihood, 7
  c.hidden, c.conv_features = (32,), (8, 16)
  model = models.make_model(c, image_shape)
  x = jnp.zeros((3,) + image_shape)
  params = models.init_params(model, jax.random.key(0), image_shape)
  mean, log_var = _encoder_stats(model, params, x)
  assert mean.shape == log_var.shape == (3, 7)
  channels = image_shape[2] * _PER_CHANNEL[likelihood]
  assert model.likelihood.out_channels(image_shape[2]) == channels
  out = model.apply({'params': params}, mean, method='decode')  # One layer: z_1 is the top.
  assert out.shape == (3,) + image_shape[:2] + (channels,)
  assert model.likelihood.log_prob(x, out).shape == (3,)
  t = _terms(model, params, x, 1, k=2)
  assert t.out.shape == (2, 3) + image_shape[:2] + (channels,)
  assert t.log_px_z.shape == (2, 3)
  (layer,) = t.layers
  assert layer.z.shape == layer.log_q.shape == layer.log_p.shape == (2, 3, 7)
  assert _broadcasts_to(layer.mean, (2, 3, 7)) and _broadcasts_to(layer.kl, (2, 3, 7))
  np.testing.assert_allclose(jnp.broadcast_to(layer.mean, (2, 3, 7))[1], mean, rtol=1e-6)
  assert models.count_params(params) > 0


def test_call_uses_the_explicit_noise():
  c = config_lib.default_config().model
  model = models.make_model(c, (28, 28, 1))
  x = jnp.full((2, 28, 28, 1), 0.5)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  t_a, t_b, t_c = (_terms(model, params, x, key) for key in (2, 2, 3))
  assert jnp.array_equal(t_a.out, t_b.out) and not jnp.array_equal(t_a.out, t_c.out)
  assert jnp.array_equal(t_a.log_px_z, t_b.log_px_z)
  assert not jnp.array_equal(t_a.log_px_z, t_c.log_px_z)


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
  assert model.noise_dim == 150
  x = jnp.zeros((3, 28, 28, 1))
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  shapes = jax.tree.map(lambda a: a.shape, params)
  assert set(params) == {'encoder', 'decoder', 'upper_encoders_0', 'upper_priors_0'}
  # q(z_2 | z_1): 100 -> 100 -> 100 -> (mean, log_var) of 50; p(z_1 | z_2) mirrors it.
  assert [shapes['upper_encoders_0'][f'Dense_{i}']['kernel'] for i in range(3)] == [
      (100, 100), (100, 100), (100, 100)]
  assert [shapes['upper_priors_0'][f'Dense_{i}']['kernel'] for i in range(3)] == [
      (50, 100), (100, 100), (100, 200)]
  assert shapes['encoder']['Dense_2']['kernel'] == (200, 200)
  assert shapes['decoder']['Dense_0']['kernel'] == (100, 200)
  mean, log_var = _encoder_stats(model, params, x)
  assert mean.shape == log_var.shape == (3, 100)
  upper_mean, _ = model.apply(
      {'params': params}, mean,
      method=lambda m, z: posteriors.gaussian_stats(m.upper_encoders[0](z)))
  assert upper_mean.shape == (3, 50)
  prior_mean, _ = model.apply(
      {'params': params}, upper_mean,
      method=lambda m, z: posteriors.gaussian_stats(m.upper_priors[0](z)))
  assert prior_mean.shape == (3, 100)
  assert model.apply({'params': params}, mean, method=lambda m, z: m.decoder(z)).shape == (
      3, 28, 28, 1)
  # decode reads the top latent z_2 [N, 50] and goes through p(z_1 | z_2) to the decoder.
  assert model.apply({'params': params}, upper_mean, method='decode').shape == (3, 28, 28, 1)
  # The terms, k = 2 samples: z_1 with log p(z_1 | z_2) per latent, z_2 under N(0, I);
  # a chain reports no analytic KL.
  t = _terms(model, params, x, 2, k=2)
  assert len(t.layers) == 2
  for layer, dim in zip(t.layers, (100, 50)):
    assert layer.z.shape == layer.log_q.shape == layer.log_p.shape == (2, 3, dim)
    assert _broadcasts_to(layer.mean, (2, 3, dim)) and layer.kl is None
  np.testing.assert_allclose(jnp.broadcast_to(t.layers[0].mean, (2, 3, 100))[1], mean, rtol=1e-6)
  # Above z_1 the mean of q(z_2 | z_1) is per sample of z_1.
  assert t.layers[1].mean.shape == (2, 3, 50)
  assert t.log_px_z.shape == (2, 3) and t.out.shape == (2, 3, 28, 28, 1)
  # At zero noise every z is its layer's mean: z_2 = E q(z_2 | E q(z_1 | x)).
  t0 = objectives.terms(model, params, x, jnp.zeros((1, 3, 150)))
  np.testing.assert_allclose(t0.layers[0].z[0], mean, rtol=1e-6)
  np.testing.assert_allclose(t0.layers[1].z[0], upper_mean, rtol=1e-5, atol=1e-6)
  t_a, t_b, t_c = (_terms(model, params, x, key) for key in (2, 2, 3))
  assert jnp.array_equal(t_a.out, t_b.out) and not jnp.array_equal(t_a.out, t_c.out)
  for a, b, c_ in zip(t_a.layers, t_b.layers, t_c.layers):
    assert jnp.array_equal(a.z, b.z) and not jnp.array_equal(a.z, c_.z)


def _without(model_config, *fields):
  for field in fields:
    del model_config[field]
  return model_config


# Fields that configs saved before each feature existed lack (an older workdir's config.json).
_UPPER_FIELDS = ('upper_latent_dims', 'upper_hidden')
_FAMILY_FIELDS = ('prior', 'prior_components', 'posterior', 'iaf_steps', 'iaf_hidden',
                  'iaf_context_dim', 'num_mixtures', 'conditional', 'class_conditional_prior')


@pytest.mark.parametrize('missing', [_UPPER_FIELDS, _FAMILY_FIELDS, _UPPER_FIELDS + _FAMILY_FIELDS])
def test_a_config_saved_before_upper_layers_builds_the_same_one_layer_model(missing):
  c = config_lib.default_config().model
  old = _without(config_lib.default_config().model, *missing)
  trees = []
  for model_config in (c, old):
    model = models.make_model(model_config, (28, 28, 1), num_classes=10)
    assert model.latent_dims == (20,) and model.num_classes == 0
    trees.append(models.init_params(model, jax.random.key(0), (28, 28, 1)))
  assert set(trees[0]) == {'encoder', 'decoder'}
  assert jax.tree.all(jax.tree.map(jnp.array_equal, trees[0], trees[1]))


@pytest.mark.parametrize('dims,hidden', [((50,), ()), ((0,), ((8,),)), ((5,), ((8, 0),)),
                                         ((5, 4), ((8,),)), ((True,), ((8,),))])
def test_upper_layers_are_validated(dims, hidden):
  c = config_lib.default_config()
  c.model.upper_latent_dims, c.model.upper_hidden = dims, hidden
  with pytest.raises(config_lib.ConfigError, match=r'config\.model\.upper_'):
    config_lib.validate(c, num_devices=1)


def _config_module(name):
  """configs/<name>.py as a module (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      f'{name}_config',
      os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _iwae_config_module():
  return _config_module('iwae')


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


def test_quickstart_one_layer_param_tree():
  c = _config_module('quickstart').get_config()
  config_lib.validate(c, num_devices=1)
  model = models.make_model(c.model, (28, 28, 1), levels=data.levels(c.data.binarization),
                            num_classes=10)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  dense = lambda fan_in, fan_out: {'kernel': (fan_in, fan_out), 'bias': (fan_out,)}
  assert jax.tree.map(lambda a: a.shape, params) == {
      'encoder': {'Dense_0': dense(784, 400), 'Dense_1': dense(400, 40)},
      'decoder': {'Dense_0': dense(20, 400), 'Dense_1': dense(400, 784)},
  }


# ----------------------------------------------------------------------------- families


def _family_config(**fields):
  c = config_lib.default_config()
  c.model.hidden, c.model.latent_dim = (16,), 4
  c.model.prior_components = 3
  c.model.iaf_steps, c.model.iaf_hidden, c.model.iaf_context_dim = 2, (8,), 5
  c.model.num_mixtures = 2
  for name, value in fields.items():
    c.model[name] = value
  return c


def _images(shape, batch=3, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch,) + shape)


def _build(c, shape, *, levels=256, num_classes=0):
  model = models.make_model(c.model, shape, levels=levels, num_classes=num_classes)
  return model, models.init_params(model, jax.random.key(0), shape)


def _assert_terms(t, *, k, batch, dims, factorised, analytic_kl, out_shape):
  """The Terms shapes of models/vae.py's docstrings, for one stochastic layer or several."""
  assert t.log_px_z.shape == (k, batch)
  assert t.out.shape == (k, batch) + out_shape
  assert len(t.layers) == len(dims)
  for layer, dim in zip(t.layers, dims):
    assert layer.z.shape == (k, batch, dim) and _broadcasts_to(layer.mean, (k, batch, dim))
    per = (k, batch, dim) if factorised else (k, batch)
    assert layer.log_q.shape == layer.log_p.shape == per
    if analytic_kl:
      assert _broadcasts_to(layer.kl, layer.z.shape)
    else:
      assert layer.kl is None
  log_w = objectives.log_weights(t)
  assert log_w.shape == (k, batch) and bool(jnp.all(jnp.isfinite(log_w)))
  assert objectives.rates(t).shape[:2] == (k, batch)


@pytest.mark.parametrize('prior', ['mixture', 'vamp'])
def test_mixture_and_vamp_priors_build_and_their_terms_have_the_documented_shapes(prior):
  c = _family_config(prior=prior)
  config_lib.validate(c, num_devices=1)
  model, params = _build(c, (28, 28, 1))
  shapes = jax.tree.map(lambda a: a.shape, params)
  if prior == 'mixture':
    assert shapes['prior'] == {'means': (3, 4), 'log_vars': (3, 4), 'logits': (3,)}
  else:
    assert shapes['prior'] == {'pseudo_inputs': (3, 28, 28, 1)}
  assert set(params) == {'encoder', 'decoder', 'prior'}
  x = _images((28, 28, 1))
  t = _terms(model, params, x, 1, k=2)
  # A mixture's log p does not factorise over latents: both densities are per example.
  _assert_terms(t, k=2, batch=3, dims=(4,), factorised=False, analytic_kl=False,
                out_shape=(28, 28, 1))
  # The Gaussian posterior still gives its closed-form mean: the encoder's.
  np.testing.assert_allclose(jnp.broadcast_to(t.layers[0].mean, (2, 3, 4))[1],
                             _encoder_stats(model, params, x)[0], rtol=1e-6)
  samples = sampling.prior_samples(model, params, jax.random.key(4), 5)
  assert samples.shape == (5, 28, 28, 1) and bool(jnp.all((samples >= 0) & (samples <= 1)))


def test_iaf_posterior_builds_and_its_terms_have_the_documented_shapes():
  c = _family_config(posterior='iaf')
  config_lib.validate(c, num_devices=1)
  model, params = _build(c, (28, 28, 1))
  # The encoder emits the Gaussian's (mean, log_var) and the 5-dim context.
  assert params['encoder']['Dense_1']['kernel'].shape == (16, 2 * 4 + 5)
  assert 'posterior' in params
  x = _images((28, 28, 1))
  t = _terms(model, params, x, 1, k=2)
  # A flow's log q does not factorise, so neither term is per latent; no analytic KL.
  _assert_terms(t, k=2, batch=3, dims=(4,), factorised=False, analytic_kl=False,
                out_shape=(28, 28, 1))
  assert jnp.array_equal(t.layers[0].mean, t.layers[0].z)  # No closed-form mean: the sample.
  # The flow moves z off the Gaussian's mean + std * eps, and log q off the Gaussian's;
  # with no steps it is that Gaussian.
  eps = _noise(model, 1, 2, 3)
  for steps in (2, 0):
    c.model.iaf_steps = steps
    model, params = _build(c, (28, 28, 1))
    (layer,) = objectives.terms(model, params, x, eps).layers
    features = model.apply({'params': params}, x, method=lambda m, x: m.encoder(x))
    gaussian = posteriors.gaussian_draw(*posteriors.gaussian_stats(features[:, :8]), eps)
    same_z = np.allclose(layer.z, gaussian.z, rtol=1e-5, atol=1e-6)
    same_log_q = np.allclose(layer.log_q, jnp.sum(gaussian.log_q, -1), rtol=1e-5)
    assert (same_z, same_log_q) == ((False, False) if steps else (True, True)), steps


@pytest.mark.parametrize('shape', [(8, 8, 3), (28, 28, 1)])
def test_logistic_mixture_likelihood_builds_and_its_terms_have_the_documented_shapes(shape):
  c = _family_config(likelihood='logistic_mixture')
  model, params = _build(c, shape)
  per_pixel = 3 * 2 if shape[-1] == 1 else 10 * 2  # K = 2 components.
  assert model.likelihood.out_channels(shape[-1]) == per_pixel
  x = jnp.round(_images(shape) * 255.0) / 255.0
  t = _terms(model, params, x, 1, k=2)
  _assert_terms(t, k=2, batch=3, dims=(4,), factorised=True, analytic_kl=True,
                out_shape=shape[:2] + (per_pixel,))
  assert bool(jnp.all(t.log_px_z < 0))  # A discrete probability: log P <= 0.
  mean = model.likelihood.mean(t.out)
  assert mean.shape == (2, 3) + shape and bool(jnp.all((mean >= 0) & (mean <= 1)))
  assert sampling.reconstructions(model, params, x).shape == x.shape


@pytest.mark.parametrize('levels', [256, 2])
def test_gaussian_log_px_is_the_density_minus_d_log_levels(levels):
  c = _family_config(likelihood='gaussian')
  model, params = _build(c, (28, 28, 1), levels=levels)
  assert model.likelihood.out_channels(1) == 2 and model.likelihood.dequantize
  x = _images((28, 28, 1))
  t = _terms(model, params, x, 1, k=2)
  _assert_terms(t, k=2, batch=3, dims=(4,), factorised=True, analytic_kl=True,
                out_shape=(28, 28, 2))
  out = np.asarray(t.out, np.float64)
  mean, log_var = out[..., :1], np.clip(out[..., 1:], -30.0, 30.0)
  density = np.sum(-0.5 * (np.log(2 * np.pi) + log_var + (np.asarray(x) - mean) ** 2
                           / np.exp(log_var)), axis=(-3, -2, -1))
  np.testing.assert_allclose(t.log_px_z, density - 784 * math.log(levels), rtol=1e-5)
  plain = models.make_model(c.model, (28, 28, 1), levels=0)  # Real-valued data: the density.
  assert not plain.likelihood.dequantize
  np.testing.assert_allclose(objectives.terms(plain, params, x, _noise(model, 1, 2, 3)).log_px_z,
                             density, rtol=1e-5)


def _noise(model, key, k, batch):
  return objectives.draw_noise(model, jax.random.key(key), k, batch)


@pytest.mark.parametrize('class_conditional_prior', [False, True])
def test_conditional_vae_reads_the_labels(class_conditional_prior):
  c = _family_config(conditional=True, class_conditional_prior=class_conditional_prior)
  config_lib.validate(c, num_devices=1)
  model, params = _build(c, (28, 28, 1), num_classes=10)
  assert model.num_classes == 10
  # The one-hot label joins the encoder's and the decoder's inputs.
  assert params['encoder']['Dense_0']['kernel'].shape == (784 + 10, 16)
  assert params['decoder']['Dense_0']['kernel'].shape == (4 + 10, 16)
  if class_conditional_prior:
    assert jax.tree.map(lambda a: a.shape, params['prior']) == {'means': (10, 4),
                                                                'log_vars': (10, 4)}
    # Away from its N(0, I) start, so that the label also moves p(z | y).
    params = dict(params, prior={
        'means': jax.random.normal(jax.random.key(9), (10, 4)),
        'log_vars': 0.1 * jax.random.normal(jax.random.key(10), (10, 4))})
  else:
    assert 'prior' not in params
  x = _images((28, 28, 1))
  eps = _noise(model, 1, 2, 3)
  labels_a, labels_b = jnp.array([0, 1, 2]), jnp.array([3, 4, 5])
  t_a = objectives.terms(model, params, x, eps, labels_a)
  t_b = objectives.terms(model, params, x, eps, labels_b)
  _assert_terms(t_a, k=2, batch=3, dims=(4,), factorised=True, analytic_kl=True,
                out_shape=(28, 28, 1))
  assert not jnp.allclose(t_a.out, t_b.out)
  assert not jnp.allclose(t_a.log_px_z, t_b.log_px_z)
  assert not jnp.allclose(t_a.layers[0].z, t_b.layers[0].z)  # Through the encoder.
  if class_conditional_prior:
    # Same z, the label's own Gaussian: log p(z | y) and the KL move with y.
    z = t_a.layers[0].z
    log_p = model.apply({'params': params}, z, labels_b,
                        method=lambda m, z, y: m.prior.log_prob(z, labels=y))
    assert not jnp.allclose(t_a.layers[0].log_p, log_p)
    np.testing.assert_allclose(
        t_a.layers[0].log_p, model.apply({'params': params}, z, labels_a,
                                         method=lambda m, z, y: m.prior.log_prob(z, labels=y)),
        rtol=1e-6)
  z_top = jnp.zeros((3, 4))
  assert not jnp.allclose(sampling.decode_mean(model, params, z_top, labels_a),
                          sampling.decode_mean(model, params, z_top, labels_b))
  samples_a = sampling.prior_samples(model, params, jax.random.key(4), 3, labels=labels_a)
  samples_b = sampling.prior_samples(model, params, jax.random.key(4), 3, labels=labels_b)
  assert samples_a.shape == (3, 28, 28, 1) and not jnp.allclose(samples_a, samples_b)
  with pytest.raises(ValueError, match='needs labels'):
    objectives.terms(model, params, x, eps)
  with pytest.raises(ValueError, match='needs labels'):
    sampling.decode_mean(model, params, z_top)
  with pytest.raises(ValueError):
    sampling.prior_samples(model, params, jax.random.key(4), 3)


@pytest.mark.parametrize('class_conditional_prior', [False, True])
def test_conditional_prior_samples_without_labels_say_so(class_conditional_prior):
  c = _family_config(conditional=True, class_conditional_prior=class_conditional_prior)
  model, params = _build(c, (28, 28, 1), num_classes=10)
  with pytest.raises(ValueError, match='needs labels'):
    sampling.prior_samples(model, params, jax.random.key(4), 3)


def _init_cases():
  from test_families import FAMILIES, family_config  # pylint: disable=g-import-not-at-top
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  cases = {name: (lambda name=name: family_config(name)) for name in FAMILIES}
  cases['mlp'] = tiny_config
  cases['conv'] = lambda: tiny_config(model__architecture='conv')
  cases['vq_vae'] = lambda: tiny_config(model__posterior='vq', model__architecture='conv',
                                        data__binarization='static')
  return cases


_INIT_CASES = _init_cases()


@pytest.mark.parametrize('name', sorted(_INIT_CASES))
def test_the_compiled_initialisation_equals_the_op_by_op_one(name):
  # Every recorded number starts from these parameters: one program must give the
  # values the op-by-op initialisation always gave, to the bit.
  from vae_jax import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.build_experiment(_INIT_CASES[name]())
  key = jax.random.key(7)
  compiled = models.init_params(exp.model, key, exp.dataset.image_shape)
  op_by_op = models._init_params(exp.model, key, exp.dataset.image_shape)  # pylint: disable=protected-access
  assert jax.tree.structure(compiled) == jax.tree.structure(op_by_op)
  for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(op_by_op)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The optimiser state too (experiment.init_state compiles exp.tx.init).
  compiled, op_by_op = jax.jit(exp.tx.init)(op_by_op), exp.tx.init(op_by_op)
  assert jax.tree.structure(compiled) == jax.tree.structure(op_by_op)
  for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(op_by_op)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
