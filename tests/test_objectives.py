"""Known answers for the ELBO and the IWAE bound.

The reference is tests/linear_gaussian.py's linear-Gaussian model, whose log p(x)
and posterior are known in closed form, one layer or Burda's two-layer chain,
written in the model contract like any other model.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from vae_jax import config as config_lib
from vae_jax import distributions
from vae_jax import models
from vae_jax import objectives
from vae_jax.models import likelihoods
from vae_jax.models import posteriors
from vae_jax.models import priors

import linear_gaussian as lg
from linear_gaussian import LATENT_DIM, OBS_DIM, TOP_DIM

LinearGaussianVAE = lg.one_layer_model
HierarchicalLinearGaussian = lg.two_layer_model
linear_gaussian_problem = lg.one_layer_problem
hierarchical_problem = lg.two_layer_problem

# Jitted, as the train step runs them (and whole programs compile faster than op by op).
elbo = jax.jit(objectives.elbo, static_argnums=0, static_argnames='free_bits')
iwae_bound = jax.jit(objectives.iwae_bound, static_argnums=0, static_argnames='num_samples')


def over_keys(fn, num_keys, seed=0):
  """fn(key) -> metrics, vmapped over `num_keys` keys: each metric becomes [num_keys]."""
  keys = jax.random.split(jax.random.key(seed), num_keys)
  return jax.jit(jax.vmap(fn))(keys)


def assert_mean_close(samples, expected, num_se=5.0):
  samples = np.asarray(samples, np.float64)
  se = samples.std() / math.sqrt(samples.size)
  assert abs(samples.mean() - expected) < num_se * se + 1e-4, (samples.mean(), expected, se)


ELEMENTWISE = {
    'bernoulli': lambda x, out, c: distributions.bernoulli_log_prob(x, out),
    'gaussian': lambda x, out, c: distributions.gaussian_log_prob(x, out[..., :c], out[..., c:]),
    'discretized_logistic': lambda x, out, c: distributions.discretized_logistic_log_prob(
        2.0 * x - 1.0, out[..., :c], out[..., c:]),
}


@pytest.mark.parametrize('name', sorted(ELEMENTWISE))
@pytest.mark.parametrize('lead,image_shape', [((5,), (4, 3, 1)), ((2, 5), (4, 4, 3))])
def test_likelihoods_read_the_decoder_output_as_parameter_planes(name, lead, image_shape):
  # The flat-row layout the likelihoods use for speed gives the plain per-pixel value:
  # the last axis holds C locations, then C scales.
  likelihood = likelihoods.make_likelihood(name, channels=image_shape[2], levels=256)
  kx, ko = jax.random.split(jax.random.key(0))
  x = jax.random.uniform(kx, lead[-1:] + image_shape)
  out = 2.0 * jax.random.normal(ko, lead + image_shape[:2] + (likelihood.out_channels(image_shape[2]),))
  expected = jnp.sum(ELEMENTWISE[name](x, out, image_shape[2]), axis=(-3, -2, -1))
  if name == 'gaussian':  # Dequantised: minus D log 256.
    expected = expected - math.prod(image_shape) * math.log(256)
  np.testing.assert_allclose(likelihood.log_prob(x, out), expected, rtol=1e-5)


@pytest.mark.parametrize('step,beta,warmup_steps,expected', [
    (0, 1.0, 0, 1.0), (7, 0.5, 0, 0.5), (0, 1.0, 10, 0.0), (5, 1.0, 10, 0.5),
    (5, 4.0, 10, 2.0), (10, 2.0, 10, 2.0), (1_000, 2.0, 10, 2.0)])
def test_kl_weight_schedule(step, beta, warmup_steps, expected):
  assert objectives.kl_weight(step, beta, warmup_steps) == pytest.approx(expected)
  traced = jax.jit(lambda s: objectives.kl_weight(s, beta, warmup_steps))(jnp.int32(step))
  assert traced.dtype == jnp.float32 and traced == pytest.approx(expected)


@pytest.mark.parametrize('std_scale,mean_shift', [(1.0, 0.0), (1.7, 0.8), (0.3, -2.0)])
def test_analytic_kl_matches_monte_carlo(std_scale, mean_shift):
  model = LinearGaussianVAE(std_scale, mean_shift)
  params, x, _ = linear_gaussian_problem(4)
  _, metrics = elbo(model, params, x, jax.random.key(0))
  mean, log_var = lg.posterior_stats(model, params, x)
  eps = jax.random.normal(jax.random.key(1), (100_000,) + mean.shape)
  z = mean + jnp.exp(0.5 * log_var) * eps
  log_q = distributions.gaussian_log_prob(z, mean, log_var)
  kl_samples = jnp.sum(log_q - distributions.standard_normal_log_prob(z), axis=-1)
  assert_mean_close(jnp.mean(kl_samples, axis=1), float(metrics['kl']))


def test_elbo_is_tight_with_the_exact_posterior():
  model = LinearGaussianVAE()
  params, x, log_px = linear_gaussian_problem(8)
  metrics = over_keys(lambda k: elbo(model, params, x, k)[1], 4_000)
  assert_mean_close(metrics['elbo'], log_px.mean())
  np.testing.assert_allclose(metrics['elbo'], metrics['recon'] - metrics['kl'], atol=1e-4)


@pytest.mark.parametrize('num_samples', [1, 7])
def test_iwae_bound_is_exact_with_the_exact_posterior(num_samples):
  # p(x, z) / q(z | x) = p(x) for every z when q is the true posterior.
  model = LinearGaussianVAE()
  params, x, log_px = linear_gaussian_problem(8)
  _, metrics = iwae_bound(
      model, params, x, jax.random.key(3), num_samples=num_samples)
  np.testing.assert_allclose(metrics['iwae_bound'], log_px.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['elbo'], log_px.mean(), rtol=1e-5)


def test_iwae_with_one_sample_draws_the_same_z_as_the_elbo():
  model = LinearGaussianVAE(std_scale=1.5, mean_shift=0.3)
  params, x, _ = linear_gaussian_problem(8)
  key = jax.random.key(11)
  _, elbo_metrics = elbo(model, params, x, key)
  _, iwae_metrics = iwae_bound(model, params, x, key, num_samples=1)
  np.testing.assert_allclose(iwae_metrics['recon'], elbo_metrics['recon'], rtol=1e-6)
  np.testing.assert_allclose(iwae_metrics['kl'], elbo_metrics['kl'], rtol=1e-6)


class ParamEncoder(nn.Module):
  """q(z | x) = N(mu, exp(log_var)) from parameters, whatever x."""

  @nn.compact
  def __call__(self, x, cond=None):
    mu = self.param('mu', nn.initializers.zeros, (4,))
    log_var = self.param('log_var', nn.initializers.zeros, (4,))
    return jnp.broadcast_to(jnp.concatenate([mu, log_var]), (x.shape[0], 8))


class IgnoringDecoder(nn.Module):
  """A decoder whose output does not depend on z (but is connected to it)."""

  @nn.compact
  def __call__(self, z, cond=None):
    return jnp.zeros((z.shape[0], 2, 2, 1)) + 0.0 * z[:, :1, None, None]


def param_posterior_model():
  return models.VAE(ParamEncoder(), IgnoringDecoder(), likelihoods.Bernoulli(),
                    posteriors.DiagonalGaussian(), priors.StandardNormal(4), 4)


def test_free_bits_floor_each_latent_and_stop_its_gradient():
  model = param_posterior_model()
  mu = jnp.array([0.0, 0.5, 2.0, 3.0])  # KL_d = mu_d^2 / 2 = 0, 0.125, 2, 4.5.
  params = {'encoder': {'mu': mu, 'log_var': jnp.zeros(4)}}
  x = jnp.ones((3, 2, 2, 1))
  free_bits, weight = 1.0, 0.5

  def loss(params):
    return elbo(model, params, x, jax.random.key(0), kl_weight=weight,
                           free_bits=free_bits)

  (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
  floored = np.maximum(free_bits, np.asarray(mu)**2 / 2).sum()
  assert value == pytest.approx(-metrics['recon'] + weight * floored)
  assert metrics['kl'] == pytest.approx(0.125 + 2.0 + 4.5)  # Metrics use the true KL.
  assert metrics['elbo'] == pytest.approx(metrics['recon'] - metrics['kl'])
  np.testing.assert_allclose(grads['encoder']['mu'], weight * np.array([0.0, 0.0, 2.0, 3.0]), atol=1e-6)


@pytest.mark.parametrize('weight,free_bits', [(0.0, 0.0), (0.3, 0.0), (1.0, 2.0)])
def test_elbo_metrics_do_not_depend_on_the_loss_weighting(weight, free_bits):
  model = LinearGaussianVAE(std_scale=1.5)
  params, x, _ = linear_gaussian_problem(8)
  key = jax.random.key(2)
  loss, metrics = elbo(model, params, x, key, kl_weight=weight, free_bits=free_bits)
  _, reference = elbo(model, params, x, key)
  for name in ('elbo', 'recon', 'kl'):
    assert metrics[name] == reference[name]
  if free_bits == 0.0:
    assert loss == pytest.approx(-metrics['recon'] + weight * metrics['kl'])


class ExtremeEncoder(nn.Module):
  """q's mean and log-variance set by parameters, to push them to extremes."""

  @nn.compact
  def __call__(self, x, cond=None):
    mean = self.param('mean', nn.initializers.zeros, ())
    log_var = self.param('log_var', nn.initializers.zeros, ())
    ones = jnp.ones((x.shape[0], 3))
    return jnp.concatenate([mean * ones, log_var * ones], -1)


class ExtremeDecoder(nn.Module):
  """Decoder outputs of either sign and a size set by a parameter."""

  channels: int

  @nn.compact
  def __call__(self, z, cond=None):
    out = self.param('out', nn.initializers.zeros, ())
    w = self.param('w', nn.initializers.zeros, (3,))
    signs = jnp.tile(jnp.array([1.0, -1.0, -1.0, 1.0]), self.channels)
    return out * signs.reshape(2, 2, self.channels) + (z @ w)[:, None, None, None]


def extreme_model(name):
  likelihood = likelihoods.make_likelihood(name, channels=1, levels=256)
  return models.VAE(ExtremeEncoder(), ExtremeDecoder(likelihood.out_channels(1)), likelihood,
                    posteriors.DiagonalGaussian(), priors.StandardNormal(3), 3)


@pytest.mark.parametrize('likelihood', models.LIKELIHOODS)
@pytest.mark.parametrize('objective', ['elbo', 'free_bits', 'iwae'])
def test_gradients_are_finite_for_extreme_outputs(likelihood, objective):
  model = extreme_model(likelihood)
  x = jnp.array([[0.0, 1.0], [0.3, 1.0]]).reshape(1, 2, 2, 1).repeat(2, axis=0)
  loss_fn = {
      'elbo': lambda p: elbo(model, p, x, jax.random.key(1)),
      'free_bits': lambda p: elbo(model, p, x, jax.random.key(1), free_bits=0.5),
      'iwae': lambda p: iwae_bound(model, p, x, jax.random.key(1), num_samples=4),
  }[objective]
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  for mean, log_var, out in [(1e4, 100.0, 200.0), (1e4, -100.0, -200.0),
                             (-1e4, 100.0, -200.0), (0.0, -100.0, 200.0)]:
    params = {'encoder': {'mean': jnp.float32(mean), 'log_var': jnp.float32(log_var)},
              'decoder': {'out': jnp.float32(out), 'w': jnp.zeros(3)}}
    if isinstance(model.likelihood, nn.Module):  # causal_bernoulli's network, moved off zero.
      params['likelihood'] = jax.tree.map(
          lambda v: v + 1.0, model.likelihood.init(jax.random.key(2), x, jnp.zeros(
              x.shape[:-1] + (model.likelihood.out_channels(1),)), method='log_prob')['params'])
    with jax.debug_nans(True):
      (loss, metrics), grads = grad_fn(params)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_make_loss_fn_runs_inside_a_jitted_scan():
  model = LinearGaussianVAE(std_scale=1.5)
  params, x, _ = linear_gaussian_problem(8)
  loss_fn = objectives.make_loss_fn(model, 'elbo', beta=2.0, warmup_steps=4, free_bits=0.0,
                                    num_samples=1)

  @jax.jit
  def run(params):
    def step(_, s):
      return None, loss_fn(params, x, jax.random.fold_in(jax.random.key(0), s), s)[1]
    return jax.lax.scan(step, None, jnp.arange(6))[1]

  metrics = run(params)
  np.testing.assert_allclose(metrics['kl_weight'], [0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
  assert all(np.all(np.isfinite(v)) for v in metrics.values())


def test_make_loss_fn_iwae_is_the_iwae_bound():
  model = LinearGaussianVAE(std_scale=1.5)
  params, x, _ = linear_gaussian_problem(8)
  loss_fn = objectives.make_loss_fn(model, 'iwae', beta=1.0, warmup_steps=0, free_bits=0.0,
                                    num_samples=5)
  key = jax.random.key(4)
  loss, metrics = jax.jit(loss_fn)(params, x, key, jnp.int32(3))
  expected, _ = iwae_bound(model, params, x, key, num_samples=5)
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  assert metrics['loss'] == loss


@pytest.mark.parametrize('objective,overrides,match', [
    ('iwae', {'beta': 0.5}, "objective.beta: 'iwae' has no beta"),
    ('iwae', {'warmup_steps': 10}, "objective.kl_warmup_steps: 'iwae' has no kl_warmup_steps"),
    ('iwae', {'free_bits': 0.1}, "objective.free_bits: 'iwae' has no free_bits"),
    ('beta_tcvae', {'num_samples': 3}, "objective.num_samples: 'beta_tcvae' uses one sample"),
    ('vq_vae', {'beta': 2.0}, "objective.beta: 'vq_vae' has no beta"),
    ('elbo', {'num_samples': 5}, 'one sample per datapoint'),
    ('vampprior', {}, 'unknown objective')])
def test_make_loss_fn_rejects_settings_it_would_ignore(objective, overrides, match):
  kwargs = dict(beta=1.0, warmup_steps=0, free_bits=0.0, num_samples=1)
  with pytest.raises(ValueError, match=match):
    objectives.make_loss_fn(LinearGaussianVAE(), objective, **{**kwargs, **overrides})


def test_hierarchical_log_weights_are_log_px_with_the_exact_posterior():
  model = HierarchicalLinearGaussian()
  params, x, log_px = hierarchical_problem(6)
  assert model.noise_dim == LATENT_DIM + TOP_DIM
  eps = jax.random.normal(jax.random.key(0), (9, 6, LATENT_DIM + TOP_DIM))
  log_w = jax.jit(lambda p, x, e: objectives.log_weights(objectives.terms(model, p, x, e)))(
      params, x, eps)
  np.testing.assert_allclose(log_w, np.broadcast_to(log_px, (9, 6)), rtol=1e-5)
  _, metrics = elbo(model, params, x, jax.random.key(1))
  assert metrics['elbo'] == pytest.approx(log_px.mean(), rel=1e-5)
  assert metrics['elbo'] == pytest.approx(float(metrics['recon'] - metrics['kl']), rel=1e-5)
  _, metrics = iwae_bound(model, params, x, jax.random.key(2), num_samples=7)
  assert metrics['iwae_bound'] == pytest.approx(log_px.mean(), rel=1e-5)


def test_hierarchical_elbo_is_the_one_sample_bound_on_the_same_draw():
  model = HierarchicalLinearGaussian(std_scale=1.6, mean_shift=0.4)
  params, x, log_px = hierarchical_problem(8)
  key = jax.random.key(3)
  _, elbo_metrics = elbo(model, params, x, key)
  _, iwae_metrics = iwae_bound(model, params, x, key, num_samples=1)
  for name in ('elbo', 'recon', 'kl'):
    assert elbo_metrics[name] == pytest.approx(float(iwae_metrics[name]), rel=1e-6)
  assert iwae_metrics['iwae_bound'] == pytest.approx(float(elbo_metrics['elbo']), rel=1e-6)
  assert elbo_metrics['elbo'] < log_px.mean()


def test_hierarchical_kl_terms_are_the_sampled_rate_per_latent():
  # The inactive z_2 latent has q(z | z_1) = p(z) = N(0, 1): its term is 0 for every draw.
  model = HierarchicalLinearGaussian()
  params, x, log_px = hierarchical_problem(5)
  recon, kl = jax.jit(objectives.elbo_terms, static_argnums=0)(model, params, x, jax.random.key(4))
  assert recon.shape == (5,) and kl.shape == (5, LATENT_DIM + TOP_DIM)
  np.testing.assert_array_equal(kl[:, -1], 0.0)
  np.testing.assert_allclose(recon - jnp.sum(kl, axis=-1), log_px, rtol=1e-5)


@pytest.mark.parametrize('model_class,problem', [
    (LinearGaussianVAE, linear_gaussian_problem),
    (HierarchicalLinearGaussian, hierarchical_problem)], ids=['one_layer', 'two_layers'])
def test_iwae_bound_increases_with_k_towards_log_px(model_class, problem):
  model = model_class(std_scale=1.8, mean_shift=0.7)
  params, x, log_px = problem(8)
  elbos = over_keys(lambda k: elbo(model, params, x, k)[1]['elbo'], 500)
  bounds = []
  for k in (1, 5, 50):
    metrics = over_keys(
        lambda key: iwae_bound(model, params, x, key, num_samples=k)[1], 500)
    assert np.all(metrics['iwae_bound'] >= metrics['elbo'] - 1e-5)  # Jensen, for every draw.
    bounds.append(float(np.mean(metrics['iwae_bound'])))
  assert np.mean(elbos) + 0.1 < bounds[1] < bounds[2] - 0.1 < log_px.mean()
  assert bounds[0] + 0.1 < bounds[1]
  assert_mean_close(elbos, bounds[0])  # The k = 1 bound is the ELBO in expectation.


def _dense(layer, h):
  return h @ np.asarray(layer['kernel'], np.float64) + np.asarray(layer['bias'], np.float64)


def _gaussian_mlp(net, h):
  """Mean and log-variance of a tanh MLPEncoder, in float64."""
  for i in range(len(net) - 1):
    h = np.tanh(_dense(net[f'Dense_{i}'], h))
  stats = _dense(net[f'Dense_{len(net) - 1}'], h)
  return np.split(stats, 2, axis=-1)


def _log_normal(z, mean, log_var):
  return -0.5 * (np.log(2 * np.pi) + log_var + (z - mean)**2 / np.exp(log_var))


def test_two_layer_bound_equals_a_hand_computed_value():
  # Burda et al.'s two-layer model in miniature: x (2x2) -> 3 tanh -> z_1 (2) -> 3 tanh -> z_2 (2).
  c = config_lib.default_config().model
  c.hidden, c.latent_dim, c.activation = (3,), 2, 'tanh'
  c.upper_latent_dims, c.upper_hidden = (2,), ((3,),)
  model = models.make_model(c, (2, 2, 1))
  x = jnp.array([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]]).reshape(2, 2, 2, 1)
  params = models.init_params(model, jax.random.key(0), (2, 2, 1))
  key, k = jax.random.key(5), 4
  _, metrics = iwae_bound(model, params, x, key, num_samples=k)

  p = jax.tree.map(np.asarray, params)
  eps = np.asarray(jax.random.normal(key, (k, 2, 4)), np.float64)
  flat_x = np.asarray(x, np.float64).reshape(2, 4)
  mean1, log_var1 = _gaussian_mlp(p['encoder'], flat_x)
  z1 = mean1 + np.exp(0.5 * log_var1) * eps[..., :2]
  mean2, log_var2 = _gaussian_mlp(p['upper_encoders_0'], z1)
  z2 = mean2 + np.exp(0.5 * log_var2) * eps[..., 2:]
  prior_mean1, prior_log_var1 = _gaussian_mlp(p['upper_priors_0'], z2)
  logits = _dense(p['decoder']['Dense_1'], np.tanh(_dense(p['decoder']['Dense_0'], z1)))
  log_px_z1 = np.sum(flat_x * logits - np.logaddexp(0.0, logits), axis=-1)
  log_p = log_px_z1 + np.sum(_log_normal(z1, prior_mean1, prior_log_var1)
                             + _log_normal(z2, 0.0, 0.0), axis=-1)
  log_q = np.sum(_log_normal(z1, mean1, log_var1) + _log_normal(z2, mean2, log_var2), axis=-1)
  log_w = log_p - log_q
  bound = scipy.special.logsumexp(log_w, axis=0) - math.log(k)
  assert float(metrics['iwae_bound']) == pytest.approx(bound.mean(), rel=1e-5)
  assert float(metrics['elbo']) == pytest.approx(log_w.mean(), rel=1e-5)
  assert float(metrics['recon']) == pytest.approx(log_px_z1.mean(), rel=1e-5)


def test_two_layer_gradients_reach_every_network():
  c = config_lib.default_config().model
  c.hidden, c.latent_dim, c.activation = (8,), 4, 'tanh'
  c.upper_latent_dims, c.upper_hidden = (3,), ((5, 5),)
  model = models.make_model(c, (4, 4, 1))
  x = (jax.random.uniform(jax.random.key(0), (6, 4, 4, 1)) > 0.5).astype(jnp.float32)
  params = models.init_params(model, jax.random.key(1), (4, 4, 1))
  for objective, k in (('elbo', 1), ('iwae', 5)):
    loss_fn = objectives.make_loss_fn(model, objective, beta=1.0, warmup_steps=0,
                                      free_bits=0.0, num_samples=k)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, x, jax.random.key(3), 0)[0]))(params)
    for name in ('encoder', 'decoder', 'upper_encoders_0', 'upper_priors_0'):
      leaves = jax.tree.leaves(grads[name])
      assert all(np.all(np.isfinite(g)) for g in leaves)
      assert any(np.any(g != 0) for g in leaves), name


def test_one_layer_vae_keeps_the_analytic_kl():
  c = config_lib.default_config().model
  c.hidden, c.latent_dim = (8,), 3
  model = models.make_model(c, (4, 4, 1))
  x = (jax.random.uniform(jax.random.key(0), (5, 4, 4, 1)) > 0.5).astype(jnp.float32)
  params = models.init_params(model, jax.random.key(1), (4, 4, 1))
  assert model.latent_dims == (3,)
  _, kl = objectives.elbo_terms(model, params, x, jax.random.key(3))
  mean, log_var = lg.posterior_stats(model, params, x)
  np.testing.assert_array_equal(kl, distributions.gaussian_kl_to_standard_normal(mean, log_var))
