"""Known answers for the importance-sampled log-likelihood and the other evaluations.

The reference is tests/linear_gaussian.py's linear-Gaussian model: p(z) = N(0, I),
p(x | z) = N(W z + b, s^2 I), with exact log p(x) and posterior, and its two-layer
chain. With the exact posterior as q every importance weight is p(x), so the
estimate is exact for any K. Each prior and posterior family the linear model can
express (a mixture, a VampPrior, a Gaussian per class, an IAF posterior) has a
closed-form log p(x) too, which the estimate must reach.
"""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from vae_jax import distributions
from vae_jax import evaluate
from vae_jax import evaluate_workdir
from vae_jax import generate
from vae_jax import models
from vae_jax import objectives
from vae_jax import train
from vae_jax.models import likelihoods
from vae_jax.models import posteriors
from vae_jax.models import priors

import linear_gaussian as lg
from linear_gaussian import LATENT_DIM, OBS_DIM, OBS_VAR, TOP_DIM
from test_train import tiny_config

LinearGaussianVAE = lg.one_layer_model
HierarchicalLinearGaussian = lg.two_layer_model
linear_gaussian_problem = lg.one_layer_problem
hierarchical_problem = lg.two_layer_problem

log_likelihood = jax.jit(evaluate.importance_sampled_log_likelihood, static_argnums=0,
                         static_argnames=('num_samples', 'chunk_size'))


# Every estimator test runs on the one-layer model and on test_objectives.py's
# two-layer linear-Gaussian chain, whose exact posterior factorises as
# q(z_1 | x) q(z_2 | z_1) with diagonal Gaussians.
LAYERS = pytest.mark.parametrize('model_class,problem', [
    (LinearGaussianVAE, linear_gaussian_problem),
    (HierarchicalLinearGaussian, hierarchical_problem)], ids=['one_layer', 'two_layers'])


@LAYERS
@pytest.mark.parametrize('num_samples,chunk_size', [(1, 1), (10, 3), (200, 64), (1000, 300)])
def test_exact_posterior_gives_the_exact_log_likelihood(model_class, problem, num_samples,
                                                       chunk_size):
  model = model_class()
  params, x, log_px = problem(5)
  estimate = log_likelihood(model, params, x, jax.random.key(0), num_samples=num_samples,
                            chunk_size=chunk_size)
  np.testing.assert_allclose(estimate, log_px, rtol=1e-5)


@LAYERS
def test_estimate_converges_from_below_as_k_grows(model_class, problem):
  model = model_class(std_scale=1.2, mean_shift=0.2)  # Wrong, but wider than p(z|x).
  params, x, log_px = problem(5)
  keys = jax.random.split(jax.random.key(1), 1000)
  small_k = jax.vmap(lambda k: log_likelihood(
      model, params, x, k, num_samples=3, chunk_size=3))(keys)
  gap_small_k = log_px - np.mean(small_k, axis=0)
  se = np.std(small_k, axis=0) / math.sqrt(len(keys))
  assert np.all(gap_small_k > 3 * se)  # Below log p(x) in expectation (Jensen).
  large_k = log_likelihood(model, params, x, jax.random.key(2), num_samples=5000,
                           chunk_size=1000)
  assert np.all(np.abs(large_k - log_px) < 0.05)  # ~4 standard deviations, measured.
  assert np.all(np.abs(large_k - log_px) < gap_small_k)


@LAYERS
@pytest.mark.parametrize('chunk_size', [1, 10, 36, 100])
def test_chunking_changes_only_float_rounding(model_class, problem, chunk_size):
  model = model_class(std_scale=2.0, mean_shift=-0.5)
  params, x, _ = problem(4)
  key = jax.random.key(3)
  reference = log_likelihood(model, params, x, key, num_samples=37, chunk_size=37)
  chunked = log_likelihood(model, params, x, key, num_samples=37, chunk_size=chunk_size)
  np.testing.assert_allclose(chunked, reference, rtol=1e-6, atol=1e-5)


def test_memory_is_bounded_whatever_k():
  """The compiled estimate's scratch memory depends on the chunk, not on K."""
  model = LinearGaussianVAE(std_scale=2.0)
  params, x, _ = linear_gaussian_problem(2)
  key = jax.random.key(0)

  def temp_bytes(num_samples, chunk_size):
    compiled = log_likelihood.lower(model, params, x, key, num_samples=num_samples,
                                    chunk_size=chunk_size).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, huge = temp_bytes(1_000, 100), temp_bytes(1_000_000, 100)
  assert huge <= 1.05 * small + 1024, (small, huge)
  # The check can fail: unchunked, the scratch grows with K.
  assert temp_bytes(10_000, 10_000) > 5 * small


@LAYERS
@pytest.mark.parametrize('batch_size', [1, 3, 10])
def test_evaluate_log_likelihood_over_a_split(model_class, problem, batch_size):
  model = model_class(std_scale=1.5)
  params, x, _ = problem(7)
  key = jax.random.key(4)
  result = evaluate.evaluate_log_likelihood(
      model, params, x, key, num_samples=20, batch_size=batch_size, chunk_size=6, progress=False)
  # Image n is keyed by its index, so batching and padding leave each estimate unchanged.
  per_image = log_likelihood(model, params, x, key, num_samples=20, chunk_size=20)
  assert result['log_px'] == pytest.approx(float(np.mean(per_image)), abs=1e-5)
  dims = np.prod(x.shape[1:])  # OBS_DIM pixels
  assert result['bits_per_dim'] == pytest.approx(-result['log_px'] / (dims * math.log(2)))
  assert result['num_samples'] == 20 and result['num_images'] == 7


def test_evaluate_log_likelihood_is_exact_with_the_exact_posterior():
  model = LinearGaussianVAE()
  params, x, log_px = linear_gaussian_problem(9)
  result = evaluate.evaluate_log_likelihood(
      model, params, x, jax.random.key(5), num_samples=30, batch_size=4, chunk_size=8,
      progress=False)
  assert result['log_px'] == pytest.approx(log_px.mean(), rel=1e-5)


@pytest.mark.parametrize('log_px,shape,expected', [
    (-math.log(2) * 784, (28, 28, 1), 1.0), (-100.0, (28, 28, 1), 100 / (784 * math.log(2))),
    (-3072 * 2 * math.log(2), (32, 32, 3), 2.0)])
def test_bits_per_dim(log_px, shape, expected):
  assert evaluate.bits_per_dim(log_px, shape) == pytest.approx(expected)


class PartlyActiveEncoder(nn.Module):
  """A posterior mean that reads x in the `active` latents and is constant in the rest."""

  active: tuple
  latent_dim: int = 5

  def __call__(self, x, cond=None):
    x = x.reshape(x.shape[0], -1)
    projection = jnp.arange(1.0, 1.0 + x.shape[1] * self.latent_dim).reshape(x.shape[1], -1)
    mask = jnp.zeros(self.latent_dim).at[jnp.array(self.active, int)].set(1.0)
    mean = (x @ projection) / x.shape[1] * mask + 0.7
    return jnp.concatenate([mean, jnp.full_like(mean, -1.0) + 0.1 * jnp.arange(self.latent_dim)],
                           -1)


class ZeroDecoder(nn.Module):

  def __call__(self, z, cond=None):
    return jnp.zeros((z.shape[0], 2, 2, 1))


def PartlyActiveVAE(active):  # pylint: disable=invalid-name
  return models.VAE(PartlyActiveEncoder(active), ZeroDecoder(), likelihoods.Bernoulli(),
                    posteriors.DiagonalGaussian(), priors.StandardNormal(5), 5)


@pytest.mark.parametrize('active', [(), (0,), (1, 3), (0, 1, 2, 3, 4)])
def test_active_units_counts_the_latents_the_encoder_uses(active):
  model = PartlyActiveVAE(active)
  images = np.random.default_rng(0).random((11, 2, 2, 1)).astype(np.float32)
  result = evaluate.active_units(model, {}, images, batch_size=4)
  assert result['active_units'] == len(active)
  variance = np.asarray(result['posterior_mean_variance'])
  assert variance.shape == (5,)
  inactive = [d for d in range(5) if d not in active]
  np.testing.assert_array_equal(variance[inactive], 0.0)
  assert np.all(variance[list(active)] > 0.01)


def test_kl_per_dimension_is_the_mean_analytic_kl():
  model = PartlyActiveVAE((1, 3))
  images = np.random.default_rng(1).random((11, 2, 2, 1)).astype(np.float32)
  kl = evaluate.kl_per_dimension(model, {}, images, batch_size=4)
  mean, log_var = lg.posterior_stats(model, {}, images)
  expected = np.mean(distributions.gaussian_kl_to_standard_normal(mean, log_var), axis=0)
  np.testing.assert_allclose(kl, expected, rtol=1e-5)


@pytest.mark.parametrize('batch_size', [3, 9])
def test_evaluate_elbo_averages_the_elbo_over_a_split(batch_size):
  model = LinearGaussianVAE(std_scale=1.5)
  params, x, _ = linear_gaussian_problem(9)
  key = jax.random.key(6)
  result = evaluate.evaluate_elbo(model, params, x, key, batch_size=batch_size)
  assert set(result) == {'elbo', 'recon', 'kl'}
  assert result['elbo'] == pytest.approx(result['recon'] - result['kl'], abs=1e-4)
  _, metrics = objectives.elbo(model, params, jnp.asarray(x), key)
  assert result['kl'] == pytest.approx(float(metrics['kl']), rel=1e-5)  # KL is deterministic.
  if batch_size == len(x):  # One batch: the same draw as objectives.elbo at fold_in(key, 0).
    _, metrics = objectives.elbo(model, params, jnp.asarray(x), jax.random.fold_in(key, 0))
    assert result['elbo'] == pytest.approx(float(metrics['elbo']), rel=1e-5)


def _exact_posterior_means(params, x):
  """E_q[z_1 | x] and E_q[z_2 | x] of HierarchicalLinearGaussian, in float64."""
  model = HierarchicalLinearGaussian()
  mean1, _ = lg.posterior_stats(model, params, x)
  mean2 = lg.upper_posterior_mean(model, params, mean1)  # Linear in z_1.
  return np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)


def test_two_layers_active_units_per_layer():
  model = HierarchicalLinearGaussian()
  params, x, _ = hierarchical_problem(300)
  result = evaluate.active_units(model, params, x, batch_size=128, key=jax.random.key(5),
                                 num_samples=400)
  mean1, mean2 = _exact_posterior_means(params, x)
  variance = np.asarray(result['posterior_mean_variance'])
  np.testing.assert_allclose(variance[:LATENT_DIM], np.var(mean1, axis=0), rtol=1e-4)
  # Above z_1, E_q[z_2 | x] averages 400 draws of z_1: a Monte Carlo error of ~2%.
  np.testing.assert_allclose(variance[LATENT_DIM:], np.var(mean2, axis=0), rtol=0.05, atol=1e-6)
  assert variance[-1] == 0.0  # z_2's second latent has no child: inactive.
  assert result['active_units_per_layer'] == [LATENT_DIM, TOP_DIM - 1]
  assert result['active_units'] == LATENT_DIM + TOP_DIM - 1
  # z_1's statistics are in closed form, z_2's are Monte Carlo: only those move with the key.
  other = evaluate.active_units(model, params, x, batch_size=128, key=jax.random.key(6),
                                num_samples=400)['posterior_mean_variance']
  np.testing.assert_allclose(other[:LATENT_DIM], variance[:LATENT_DIM], rtol=1e-6)
  assert other[LATENT_DIM] != variance[LATENT_DIM]


def test_two_layers_kl_per_dimension_sums_to_the_kl():
  # With the exact posterior, KL(q(z | x) || p(z)) = E_q[log p(x | z_1)] - log p(x),
  # and E_q[log p(x | z_1)] is Gaussian algebra: z_1 ~ N(m_1, v_1) through x ~ N(W z_1 + b, s^2).
  model = HierarchicalLinearGaussian()
  params, x, log_px = hierarchical_problem(50)
  kl = evaluate.kl_per_dimension(model, params, x, batch_size=16, key=jax.random.key(6),
                                 num_samples=2000)
  assert kl.shape == (LATENT_DIM + TOP_DIM,) and kl[-1] == 0.0
  mean1, log_var1 = lg.posterior_stats(model, params, x)
  w = np.asarray(params['decoder']['w'], np.float64)
  b = np.asarray(params['decoder']['b'], np.float64)
  residual = x.reshape(-1, OBS_DIM) - np.asarray(mean1, np.float64) @ w.T - b
  spread = np.exp(np.asarray(log_var1, np.float64)) @ (w**2).T
  expected_recon = -0.5 * np.sum(np.log(2 * np.pi * OBS_VAR) + (residual**2 + spread) / OBS_VAR,
                                 axis=-1)
  assert np.sum(kl) == pytest.approx(np.mean(expected_recon - log_px), rel=1e-2)


def test_one_layer_active_units_has_one_layer():
  result = evaluate.active_units(PartlyActiveVAE((0, 2)), {},
                                 np.random.default_rng(0).random((11, 2, 2, 1)), batch_size=4)
  assert result['active_units_per_layer'] == [2]


def test_two_layer_workdir_trains_evaluates_and_generates(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(model__upper_latent_dims=(3,), model__upper_hidden=((16,),),
                       objective__name='iwae', objective__num_samples=3,
                       logging__tensorboard=False)
  train.train_and_evaluate(config, workdir)
  results = evaluate_workdir.evaluate_workdir(workdir, 'test', num_samples=20, num_images=60,
                                              progress=False)
  assert len(results['active_units_per_layer']) == 2
  assert len(results['posterior_mean_variance']) == len(results['kl_per_dim']) == 4 + 3
  assert results['elbo'] < results['log_px'] < 0
  assert results['kl'] == pytest.approx(results['recon'] - results['elbo'])
  out_dir = str(tmp_path / 'generated')
  generate.generate(workdir, out_dir, [0.5, 1.0], 4, [0, 1], [0, 1], 0, traverse_dims=3)
  assert sorted(os.listdir(out_dir)) == ['interpolation.png', 'kl_per_layer.png',
                                         'reconstructions.png', 'samples_t0.5.png',
                                         'samples_t1.png', 'traversal.png']


# The prior and posterior families on the linear-Gaussian likelihood p(x | z) =
# N(W z + b, s^2 I). A Gaussian prior N(m, S) gives p(x) = N(W m + b, W S W^T + s^2 I),
# a mixture of them the mixture of those; q is the standard-normal model's exact
# posterior widened a little, wrong for these priors but covering them, so the
# estimate converges from below to the closed form as K grows.

def _marginal(w, b, mean, var):
  """log N(x; W mean + b, W diag(var) W^T + s^2 I) as a scipy frozen distribution."""
  return scipy.stats.multivariate_normal(w @ mean + b, w @ np.diag(var) @ w.T
                                         + OBS_VAR * np.eye(OBS_DIM))


def _family_problem(model, num_images=6, seed=0):
  """Params for `model` (the problem's W and b, the rest from init) and its images."""
  params, x, _ = linear_gaussian_problem(num_images, seed)
  full = models.init_params(model, jax.random.key(seed), (1, OBS_DIM, 1))
  full = {**full, **params}
  w = np.asarray(params['decoder']['w'], np.float64)
  b = np.asarray(params['decoder']['b'], np.float64)
  return full, x, w, b


def _assert_estimate_reaches(model, params, x, exact, labels=None, num_samples=20_000):
  estimate = jax.jit(evaluate.importance_sampled_log_likelihood, static_argnums=0,
                     static_argnames=('num_samples', 'chunk_size'))(
      model, params, jnp.asarray(x), jax.random.key(7), num_samples=num_samples,
      chunk_size=2_000, labels=labels)
  np.testing.assert_allclose(estimate, exact, atol=0.03)


def test_mixture_prior_log_likelihood_matches_the_closed_form():
  model = LinearGaussianVAE(std_scale=1.3, prior=priors.MixtureOfGaussians(LATENT_DIM, 3))
  params, x, w, b = _family_problem(model)
  means = np.array([[0.6, -0.3, 0.0], [-0.5, 0.4, 0.3], [0.0, 0.0, -0.6]])
  log_vars = np.log([[0.8, 1.0, 0.9], [0.7, 1.2, 1.0], [1.0, 0.6, 0.8]])
  logits = np.array([0.3, -0.2, 0.0])
  params['prior'] = {'means': jnp.asarray(means, jnp.float32),
                     'log_vars': jnp.asarray(log_vars, jnp.float32),
                     'logits': jnp.asarray(logits, jnp.float32)}
  log_weights = logits - scipy.special.logsumexp(logits)
  flat = x.reshape(len(x), OBS_DIM).astype(np.float64)
  exact = scipy.special.logsumexp(
      [lw + _marginal(w, b, m, np.exp(lv)).logpdf(flat)
       for lw, m, lv in zip(log_weights, means, log_vars)], axis=0)
  _assert_estimate_reaches(model, params, x, exact)


def test_vamp_prior_log_likelihood_matches_the_closed_form():
  # p(z) = 1/K sum_k q(z | u_k): a mixture of the encoder's Gaussians at the pseudo-inputs.
  model = LinearGaussianVAE(std_scale=3.0,
                            prior=priors.VampPrior(2, (1, OBS_DIM, 1), init_mean=0.5, init_std=0.3))
  params, x, w, b = _family_problem(model)
  u = np.clip(np.asarray(params['prior']['pseudo_inputs']), 0.0, 1.0)
  # q(z | u) of the prior is the encoder's at std_scale 3, as the model evaluates it.
  mean_u, log_var_u = lg.posterior_stats(model, params, u)
  flat = x.reshape(len(x), OBS_DIM).astype(np.float64)
  exact = scipy.special.logsumexp(
      [_marginal(w, b, np.asarray(m, np.float64), np.exp(np.asarray(lv, np.float64))).logpdf(flat)
       for m, lv in zip(mean_u, log_var_u)], axis=0) - math.log(2)
  _assert_estimate_reaches(model, params, x, exact)


def test_class_conditional_prior_log_likelihood_matches_the_closed_form():
  model = models.VAE(lg.LinearEncoder(1.3), lg.LinearDecoder(), likelihoods.Gaussian(levels=0),
                     posteriors.DiagonalGaussian(), priors.ClassConditionalGaussian(LATENT_DIM, 2),
                     LATENT_DIM, num_classes=2)
  params, x, w, b = _family_problem(model)
  means = np.array([[0.5, -0.5, 0.2], [-0.4, 0.3, 0.0]])
  log_vars = np.log([[0.8, 1.1, 0.9], [1.0, 0.7, 1.2]])
  params['prior'] = {'means': jnp.asarray(means, jnp.float32),
                     'log_vars': jnp.asarray(log_vars, jnp.float32)}
  labels = np.array([0, 1, 1, 0, 1, 0])
  flat = x.reshape(len(x), OBS_DIM).astype(np.float64)
  exact = np.array([_marginal(w, b, means[y], np.exp(log_vars[y])).logpdf(row)
                    for y, row in zip(labels, flat)])
  _assert_estimate_reaches(model, params, x, exact, labels=jnp.asarray(labels))


class ContextEncoder(nn.Module):
  """The exact posterior's statistics followed by a context vector read from x."""

  context_dim: int = 4

  @nn.compact
  def __call__(self, x, cond=None):
    stats = lg.LinearEncoder(1.5, name='LinearEncoder_0')(x)
    context = nn.Dense(self.context_dim)(x.reshape(x.shape[0], -1))
    return jnp.concatenate([stats, context], -1)


def test_iaf_posterior_log_likelihood_matches_the_closed_form():
  # Standard-normal prior, so log p(x) is the problem's; q is the exact posterior, widened,
  # pushed through two IAF steps with random weights: no longer exact, still consistent.
  # A forget bias of 4 keeps each step near the identity (gate 0.98), so q still covers
  # the posterior and K = 20,000 samples pin the estimate down.
  model = models.VAE(ContextEncoder(), lg.LinearDecoder(), likelihoods.Gaussian(levels=0),
                     posteriors.IAFPosterior(2, (8,), 4, forget_bias=4.0),
                     priors.StandardNormal(LATENT_DIM),
                     LATENT_DIM)
  params, x, log_px = linear_gaussian_problem(6)
  full = models.init_params(model, jax.random.key(1), (1, OBS_DIM, 1))
  full['encoder']['LinearEncoder_0'] = params['encoder']
  full['decoder'] = params['decoder']
  # Perturb the flow so it really moves the samples: every weight and bias random.
  leaves, tree = jax.tree.flatten(full['posterior'])
  keys = jax.random.split(jax.random.key(2), len(leaves))
  full['posterior'] = jax.tree.unflatten(
      tree, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  t = objectives.terms(model, full, jnp.asarray(x), jnp.ones((1, 6, LATENT_DIM)))
  exact_q = jnp.sum(posteriors.gaussian_draw(*lg.posterior_stats(lg.one_layer_model(1.5), params, x),
                                             jnp.ones((1, 6, LATENT_DIM))).log_q, -1)
  assert not np.allclose(t.layers[0].log_q, exact_q, atol=1e-2)  # The flow is not identity.
  _assert_estimate_reaches(model, full, x, log_px)
