"""The top-down hierarchy (models/hierarchy.py) against answers known without it.

log p(x) by importance sampling against brute-force integration over a
two-group model's latents; the analytic KL per group against the mean of
log q - log p; the Ladder VAE's precision-weighted merge against the product
of the two densities; scanned groups against the same groups unrolled (and
rematerialised); the program's size against the depth; the pictures a
hierarchy draws (prior samples, per-group temperatures, the top m groups
from q) against the passes they are made of.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from vae_jax import config as config_lib
from vae_jax import evaluate
from vae_jax import models
from vae_jax import objectives
from vae_jax.models import hierarchy
from vae_jax.models import likelihoods

from test_train import tiny_config

BERNOULLI = likelihoods.make_likelihood('bernoulli', channels=1, levels=2, num_mix=1)
LOCAL_BERNOULLI = likelihoods.make_likelihood('local_bernoulli', channels=1, levels=2,
                                              context_radius=1)
CAUSAL_BERNOULLI = likelihoods.make_likelihood('causal_bernoulli', channels=1, levels=2,
                                               context_radius=1, context_features=3,
                                               context_layers=2)


@jax.jit
def perturbed(params, key, scale=0.3):
  """Params with every leaf moved, so zero-initialised prior nets say something."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  # normal(k, shape) is the first prod(shape) of normal(k, (n,)) for any larger n
  # (threefry counts per element): one program for all the leaves, not one per shape.
  longest = max(v.size for v in leaves)
  noise = jax.vmap(lambda k: jax.random.normal(k, (longest,)))(keys)
  return jax.tree.unflatten(tree, [v + scale * n[:v.size].reshape(v.shape)
                                   for v, n in zip(leaves, noise)])


def widened(params, shift):
  """Params whose posteriors are wider (raw scale + shift): q then covers p(z | x), and
  importance sampling with a few thousand draws is accurate."""
  def widen(path, value):
    names = [getattr(p, 'key', '') for p in path]
    if 'posterior' in names and names[-2:] == ['Dense_2', 'bias']:
      half = value.shape[-1] // 2
      return value.at[..., half:].add(shift)
    return value
  return jax.tree_util.tree_map_with_path(widen, params)


def build(shapes, image_shape=(4, 4, 1), key=0, likelihood=BERNOULLI, **kwargs):
  kwargs = dict(dict(width=16, hidden=8), **kwargs)
  model = hierarchy.TopDownVAE(likelihood, image_shape, tuple(shapes), **kwargs)
  # Jitted: compiling the init once is quicker than running its ops one by one.
  params = jax.jit(lambda k: models.init_params(model, k, image_shape))(jax.random.key(key))
  return model, perturbed(params, jax.random.key(key + 100))


def binary_images(n, shape=(4, 4, 1), key=5):
  return (jax.random.uniform(jax.random.key(key), (n,) + shape) > 0.5).astype(jnp.float32)


@pytest.mark.parametrize('merge,likelihood', [
    pytest.param(merge, BERNOULLI, id=merge) for merge in hierarchy.MERGES] + [
        pytest.param('precision', LOCAL_BERNOULLI, id='precision-local_bernoulli'),
        pytest.param('precision', CAUSAL_BERNOULLI, id='precision-causal_bernoulli')])
def test_log_likelihood_matches_brute_force_integration(merge, likelihood):
  # Two groups of one latent each over 2x2 binary images: p(x) is a 2-d
  # integral, summed on a grid; the estimator must agree.
  model, params = build([(1,), (1,)], image_shape=(2, 2, 1), width=6, hidden=6, merge=merge,
                        likelihood=likelihood)
  params = widened(params, 2.0 if merge == 'residual' else 3.0)
  x = jnp.asarray([[[[1.0], [0.0]], [[1.0], [1.0]]]])
  grid = np.linspace(-7.0, 7.0, 561)
  z1, z2 = (a.reshape(-1, 1) for a in np.meshgrid(grid, grid, indexing='ij'))
  rows = z1.shape[0]
  given = jnp.asarray(np.concatenate([z1, z2], axis=1), jnp.float32)
  out, groups = jax.jit(lambda p, z: model.apply(
      {'params': p}, jnp.broadcast_to(x, (rows, 2, 2, 1)), jnp.zeros((rows, 2)), hierarchy.GIVEN,
      1.0, z, method='_pass'))(params, given)
  # Through the model: a likelihood may have parameters (causal_bernoulli's network).
  log_px_z = model.apply({'params': params}, x, out[None],
                         method=lambda m, x, out: m.likelihood.log_prob(x, out))
  log_joint = (log_px_z[0]
               + sum(jnp.sum(g[2], axis=-1) for g in groups))
  step = grid[1] - grid[0]
  exact = float(jax.nn.logsumexp(log_joint) + 2 * math.log(step))
  estimate = evaluate.importance_sampled_log_likelihood(
      model, params, x, jax.random.key(1), num_samples=40000, chunk_size=4000)
  assert float(estimate[0]) == pytest.approx(exact, abs=0.02)
  # The ELBO (averaged over 2,000 draws) is below it, by the KL from q to the true posterior.
  recon, kl = objectives.elbo_terms(model, params, jnp.broadcast_to(x, (2000, 2, 2, 1)),
                                    jax.random.key(2))
  assert float(jnp.mean(recon - jnp.sum(kl, -1))) < exact


@pytest.mark.parametrize('merge', hierarchy.MERGES)
def test_analytic_kl_is_the_mean_of_log_q_minus_log_p(merge):
  model, params = build([(3,), (2,), (2,)], merge=merge)
  x = binary_images(2)
  eps = jax.random.normal(jax.random.key(3), (4000, 2, model.noise_dim))  # 4,000 draws.
  layers = jax.jit(lambda p, e: objectives.terms(model, p, x, e, decode=False).layers)(params, eps)
  # The top group's KL is exact given x; a lower group's is given the groups above,
  # so its expectation over their samples is what log q - log p estimates.
  for layer in layers:
    analytic = jnp.mean(jnp.sum(layer.kl, -1), axis=0)
    sampled = jnp.mean(jnp.sum(layer.log_q - layer.log_p, -1), axis=0)
    stderr = jnp.std(jnp.sum(layer.log_q - layer.log_p, -1), axis=0) / math.sqrt(4000)
    np.testing.assert_array_less(jnp.abs(analytic - sampled), 5 * stderr + 1e-4)


def test_precision_merge_is_the_normalised_product_of_the_two_gaussians():
  mean_a, log_std_a = jnp.asarray([0.3, -2.0]), jnp.asarray([0.1, -0.7])
  mean_b, log_std_b = jnp.asarray([1.5, 0.4]), jnp.asarray([-0.4, 0.5])
  mean, log_std = hierarchy.precision_merge(mean_a, log_std_a, mean_b, log_std_b)
  z = np.linspace(-4, 4, 9)[:, None]
  def log_n(m, ls):
    return scipy.stats.norm.logpdf(z, np.asarray(m), np.exp(np.asarray(ls)))
  # log N(z; merged) - log N(z; a) - log N(z; b) does not depend on z.
  ratio = log_n(mean, log_std) - log_n(mean_a, log_std_a) - log_n(mean_b, log_std_b)
  np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), atol=1e-5)


def _unstacked(params, count):
  """Scanned params (a leading group axis under 'stage_0', 'encoder') -> the unrolled names."""
  out = {}
  for name, value in params.items():
    if name in ('stage_0', 'encoder'):
      for i in range(count):
        out[f'{name}_{i}'] = jax.tree.map(lambda v, i=i: v[i], value)
    else:
      out[name] = value
  return out


@pytest.mark.parametrize('remat', [False, True])
def test_scanned_groups_equal_the_same_groups_unrolled(remat):
  count = 4
  scanned, params = build([(3,)] * count, merge='precision')
  unrolled = hierarchy.TopDownVAE(BERNOULLI, (4, 4, 1), ((3,),) * count, width=16, hidden=8,
                                  merge='precision', scan=False, remat=remat)
  x = binary_images(3)
  eps = jax.random.normal(jax.random.key(4), (2, 3, scanned.noise_dim))
  flat_params = _unstacked(params, count)
  assert jax.tree.structure(flat_params) == jax.tree.structure(
      models.init_params(unrolled, jax.random.key(0), (4, 4, 1)))
  a = objectives.terms(scanned, params, x, eps)
  b = objectives.terms(unrolled, flat_params, x, eps)
  np.testing.assert_allclose(a.log_px_z, b.log_px_z, rtol=1e-5, atol=1e-4)
  for la, lb in zip(a.layers, b.layers):
    np.testing.assert_allclose(la.z, lb.z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(la.kl, lb.kl, rtol=1e-5, atol=1e-5)

  def loss(model, p):
    return -jnp.mean(objectives.elbo(model, p, x, jax.random.key(7))[0])
  grads_a = _unstacked(jax.grad(lambda p: loss(scanned, p))(params), count)
  grads_b = jax.grad(lambda p: loss(unrolled, p))(flat_params)
  for ga, gb in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(ga, gb, rtol=1e-3, atol=1e-4 * float(jnp.abs(gb).max()) + 1e-6)


def _matmuls(shapes, scan):
  """How many matmuls the gradient program of the ELBO holds (each scan body counted once)."""
  model = hierarchy.TopDownVAE(BERNOULLI, (4, 4, 1), tuple(shapes), width=16, hidden=8, scan=scan)
  params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), (4, 4, 1)))
  x = binary_images(2)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: -jnp.mean(
      objectives.elbo(model, p, x, jax.random.key(0))[0])))(params)
  return str(jaxpr).count('dot_general')


def test_identical_groups_compile_once():
  # The program of a scanned stage does not grow with its number of groups; unrolled, it does.
  assert _matmuls([(4,)] * 20, True) == _matmuls([(4,)] * 2, True)
  assert _matmuls([(4,)] * 10, False) > 4 * _matmuls([(4,)] * 2, False)


def test_spatial_groups_at_several_resolutions():
  shapes = [(8, 8, 2), (4, 4, 2), (4, 4, 2), (2, 2, 3), (1, 1, 4)]
  model, params = build(shapes, image_shape=(8, 8, 1))
  x = binary_images(2, (8, 8, 1))
  eps = jax.random.normal(jax.random.key(4), (3, 2, model.noise_dim))
  t = objectives.terms(model, params, x, eps)
  assert t.log_px_z.shape == (3, 2)
  assert [layer.z.shape[-1] for layer in t.layers] == [128, 32, 32, 12, 4]
  assert model.latent_dims == (128, 32, 32, 12, 4)
  assert all(layer.kl is not None and layer.kl.shape == layer.z.shape for layer in t.layers)
  out = model.apply({'params': params}, jax.random.key(0), 5, 0.8, method='sample')
  assert out.shape == (5, 8, 8, 1)


def test_reconstructions_from_the_top_m_groups():
  model, params = build([(4,), (3,), (2,)])
  x = binary_images(3)
  key = jax.random.key(9)
  def top(m):
    return model.apply({'params': params}, x, key, m, method='reconstruct_top')
  # Every group from q at its mean: the reconstruction through posterior means.
  zero = jnp.zeros((1, 3, model.noise_dim))
  np.testing.assert_allclose(top(3), objectives.terms(model, params, x, zero).out[0],
                             rtol=1e-5, atol=1e-5)
  # No group from q: a prior sample with the same noise.
  np.testing.assert_allclose(
      top(0), model.apply({'params': params}, key, 3, method='sample'), rtol=1e-5, atol=1e-5)
  # In between the top groups come from x: two draws of the rest differ, the top agrees.
  other = model.apply({'params': params}, x, jax.random.key(10), 1, method='reconstruct_top')
  assert not np.allclose(top(1), other)


def test_a_likelihood_with_parameters_is_trained_and_drawn_through_the_model():
  # causal_bernoulli's network is the model's: its parameters sit under 'likelihood',
  # the loss reaches them, and the pictures run its chain inside the model's apply.
  from vae_jax import sampling  # pylint: disable=g-import-not-at-top
  model, params = build([(3,), (2,)], likelihood=CAUSAL_BERNOULLI)
  assert set(params['likelihood']) == {'embed', 'bias', 'kernels', 'biases'}
  x = binary_images(3)
  loss = lambda p: -jnp.mean(objectives.elbo_terms(model, p, x, jax.random.key(1))[0])
  grads = jax.jit(jax.grad(loss))(params)['likelihood']
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))
  out = jax.jit(lambda p: model.apply({'params': p}, jax.random.key(2), 4,
                                      method='sample'))(params)
  samples = sampling.prior_samples(model, params, jax.random.key(2), 4)
  expected = jax.jit(lambda p, out: model.apply(
      {'params': p}, out, method=lambda m, out: m.likelihood.mean(out)))(params, out)
  np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-6)
  assert samples.shape == (4, 4, 4, 1) and 0.0 <= float(samples.min()) <= float(
      samples.max()) <= 1.0
  # The mean image is the chain's fixed point, so it is not the chain-free sigmoid(a).
  assert float(jnp.max(jnp.abs(samples - jax.nn.sigmoid(out[..., :1])))) > 1e-3
  recon = sampling.reconstructions(model, params, x)
  assert recon.shape == x.shape and bool(jnp.all(jnp.isfinite(recon)))


def test_temperature_per_group():
  model, params = build([(4,), (3,), (2,)])
  apply = jax.jit(lambda key, temperature: model.apply(
      {'params': params}, key, 4, temperature, method='sample'))
  def sample(key, temperature):
    return apply(jax.random.key(key), jnp.asarray(temperature, jnp.float32))
  np.testing.assert_allclose(sample(0, [1.0, 1.0, 1.0]), sample(0, 1.0), rtol=1e-6)
  # At temperature 0 every group is its prior mean: the noise does not matter.
  np.testing.assert_allclose(sample(0, 0.0), sample(1, 0.0), rtol=1e-6)
  # Each group's temperature is its own: warming one group alone moves the samples,
  # and warming the bottom or the top group moves them differently.
  cold = sample(0, 0.0)
  bottom, top = sample(0, [1.0, 0.0, 0.0]), sample(0, [0.0, 0.0, 1.0])
  assert 0 < float(jnp.abs(bottom - cold).max()) and 0 < float(jnp.abs(top - cold).max())
  assert not np.allclose(bottom, top)
  # decode(z_top) with the prior means below is sample at temperature 0 given that z_top.
  z_top = jnp.zeros((4, 2))
  decoded = model.apply({'params': params}, z_top, method='decode')
  assert decoded.shape == (4, 4, 4, 1)


@pytest.mark.parametrize('overrides,match', [
    (dict(model__groups=()), 'config.model.groups'),
    (dict(model__groups=(4, 0)), 'config.model.groups'),
    (dict(model__groups=(4,), model__merge='sum'), 'config.model.merge'),
    (dict(model__groups=(4,), model__scale='relu'), 'config.model.scale'),
    (dict(model__groups=(4,), model__prior='vamp'), 'config.model.prior'),
    (dict(model__groups=(4,), model__posterior='iaf'), 'config.model.posterior'),
    (dict(model__groups=(4,), model__group_resolutions=(7,)), 'config.model.group_resolutions'),
    (dict(model__groups=(4, 4), model__architecture='conv', model__group_resolutions=(7,)),
     'one resolution per group'),
    (dict(model__groups=(4, 4), model__architecture='conv', model__group_resolutions=(7, 14)),
     'must divide the one below'),
    (dict(model__groups=(4, 4), model__architecture='conv', model__group_resolutions=(28, 3)),
     'must divide the one below'),
    (dict(model__groups=(4,), model__state_width=0), 'config.model.state_width'),
])
def test_hierarchy_fields_are_validated(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(tiny_config(model__hierarchy='top_down', **overrides))


def test_cifar10_hierarchy_config_trains_through_mock_data(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vae_jax import data  # pylint: disable=g-import-not-at-top
  from vae_jax import train  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      'cifar10_hierarchy', os.path.join(root, 'configs', 'cifar10_hierarchy.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  full = module.get_config()
  config_lib.validate(full)
  assert full.model.group_resolutions[0] == 32 and full.model.likelihood == 'logistic_mixture'
  config = module.get_config('runlocal')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.logging.tensorboard = False
  data.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
      metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  finally:
    data.clear_cache()
  # 8-bit colour in discrete units: log P(x) < 0, and no worse than ~8 bits per dimension
  # plus what 20 steps cannot fix.
  bits = -metrics['elbo'] / (32 * 32 * 3 * math.log(2))
  assert 0 < bits < 16
