"""Disentanglement: the rendered factor data, known answers for the five metrics and
for the three disentangling objectives, and each objective's train + resume run.

The metric checks use `rendered_shapes` (drawn here, offline) and two codes whose
scores are known: the factors themselves, permuted and scaled (every metric near
its maximum), and Gaussian noise that ignores the image (near chance). Numbers
seen with disentanglement_lib's sample sizes halved (2,000 / 1,000 points):
exact 1.0, 1.0, MIG 0.994, DCI 1.000 / 1.000 / 1.0, SAP 0.32; random 0.199,
0.218, 0.001, 0.001 / 0.001 / 0.21, 0.004. The tests use fewer points and
bounds with room for their sampling error.
"""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
import tensorflow_datasets as tfds

from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import disentanglement
from vae_jax import experiment
from vae_jax import logs as vlog
from vae_jax import models
from vae_jax import objectives
from vae_jax import train

from test_config import load_config_file
from test_data import data_config
from test_train import assert_trees_equal, restored_state, tiny_config

SIZES = tuple(n for _, n in data.FACTORS['rendered_shapes'])


@pytest.fixture(scope='module')
def shapes():
  """GroundTruth of rendered_shapes and a lookup image -> its row."""
  factors = data.all_factor_combinations(SIZES)
  images = data.render_shapes(factors)
  gt = disentanglement.GroundTruth(images, factors, SIZES, name='rendered_shapes')
  rows = {image.tobytes(): i for i, image in enumerate(images)}
  return gt, rows


def code_of(rows, codes):
  """A representation function that looks each image's code up: codes [N, D] by row."""
  return lambda images: codes[[rows[image.tobytes()] for image in images]]


def exact_codes(gt):
  """The factors permuted and scaled, one code per factor."""
  perm = np.array([3, 0, 4, 1, 2])
  return gt.factors[:, perm] * np.array([0.5, -2.0, 3.0, 1.0, -0.25]) + 7.0


def scores(gt, represent, **kwargs):
  return disentanglement.evaluate(gt, represent, seed=0, **kwargs)


# --- The rendered data -------------------------------------------------------------------

def test_rendered_shapes_are_every_factor_combination_once_and_all_distinct():
  ds = data.load(_rendered_config())
  assert ds.train.shape == (4608, 32, 32, 1) and ds.train.dtype == np.uint8
  assert set(np.unique(ds.train)) == {0, 1}
  assert ds.train_factors.dtype == np.int32 and ds.train_factors.shape == (4608, 5)
  np.testing.assert_array_equal(ds.train_factors, data.all_factor_combinations(SIZES))
  assert ds.factor_names == ('shape', 'scale', 'orientation', 'x_position', 'y_position')
  assert ds.factor_sizes == SIZES
  assert len({image.tobytes() for image in ds.train}) == 4608
  # Every image shows a shape of some size, inside the frame.
  ink = ds.train.reshape(4608, -1).sum(axis=1)
  assert ink.min() >= 10 and ink.max() < 400
  assert ds.train[:, 0].max() == ds.train[:, -1].max() == 0
  # The evaluation images are a fixed subset of the training images, with their factors.
  keep = data.factor_eval_subset('rendered_shapes', 4608)
  assert len(keep) == 512 and len(np.unique(keep)) == 512
  np.testing.assert_array_equal(ds.eval, ds.train[keep])
  np.testing.assert_array_equal(ds.eval_factors, ds.train_factors[keep])


def _rendered_config(**overrides):
  return data_config('rendered_shapes', 'static', **{'train_split': 'train',
                                                      'eval_split': 'train', **overrides})


def test_each_factor_moves_the_shape_as_named():
  base = np.array([[0, 1, 0, 3, 3]])
  def centre(factors):
    image = data.render_shapes(factors)[0, ..., 0].astype(float)
    ys, xs = np.nonzero(image)
    return xs.mean(), ys.mean(), image.sum()
  x0, y0, ink0 = centre(base)
  x1, y1, _ = centre(base + [[0, 0, 0, 2, 0]])
  assert x1 - x0 == pytest.approx(4.0, abs=0.6) and abs(y1 - y0) < 0.6
  x2, y2, _ = centre(base + [[0, 0, 0, 0, 2]])
  assert y2 - y0 == pytest.approx(4.0, abs=0.6) and abs(x2 - x0) < 0.6
  _, _, ink_big = centre(base + [[0, 2, 0, 0, 0]])
  assert ink_big > 1.5 * ink0


def test_factor_datasets_refuse_a_second_split():
  with pytest.raises(data.DatasetError, match='eval_split'):
    data.load(_rendered_config(eval_split='test'))


@pytest.mark.parametrize('name,shape,factors', [
    ('dsprites', (64, 64, 1), 5), ('shapes3d', (64, 64, 3), 6)])
def test_tfds_factor_datasets_through_mock_data(tmp_path, name, shape, factors):
  c = data_config(name, 'none' if name == 'shapes3d' else 'static', tmp_path,
                  train_split='train', eval_split='train')
  data.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
      ds = data.load(c)
      source = tfds.builder(name).as_data_source(split='train')
      records = [source[i] for i in range(20)]
  finally:
    data.clear_cache()
  assert ds.train.shape == (20,) + shape and ds.train.dtype == np.uint8
  assert ds.train_factors.shape == (20, factors) and ds.train_factors.dtype == np.int32
  assert len(ds.factor_names) == len(ds.factor_sizes) == factors
  # Each factor is the record's label_<name>, in the table's order and range.
  for i, record in enumerate(records):
    np.testing.assert_array_equal(ds.train[i], record['image'])
    assert ds.train_factors[i].tolist() == [int(record[f'label_{n}']) for n in ds.factor_names]
  assert (ds.train_factors >= 0).all() and (ds.train_factors < np.array(ds.factor_sizes)).all()
  assert ds.num_eval == 20 and ds.eval_factors.shape == (20, factors)


# --- The ground truth and the metrics ---------------------------------------------------

def test_ground_truth_refuses_a_missing_combination(shapes):
  gt, _ = shapes
  partial = disentanglement.GroundTruth(gt.images[1:], gt.factors[1:], SIZES, name='partial')
  np.testing.assert_array_equal(partial.images_of(gt.factors[5:7]), gt.images[5:7])
  with pytest.raises(ValueError, match=r'partial: no image has the factors \[0, 0, 0, 0, 0\]'):
    partial.images_of(gt.factors[:2])
  with pytest.raises(ValueError, match='do not match'):
    disentanglement.GroundTruth(gt.images, gt.factors[:, :4], SIZES)


def test_mutual_information_matches_sklearn():
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.integers(0, 7, 3000)
  b = (a + rng.integers(0, 3, 3000)) % 5 * 10 - 3  # Dependent, other labels.
  assert disentanglement._mutual_information(a, b) == pytest.approx(
      metrics.mutual_info_score(a, b), rel=1e-10)
  assert disentanglement._mutual_information(a, a) == pytest.approx(
      scipy.stats.entropy(np.bincount(a)), rel=1e-10)


def test_exact_factors_score_near_the_top(shapes):
  gt, rows = shapes
  s = scores(gt, code_of(rows, exact_codes(gt)), num_train=800, num_eval=400)
  assert s['beta_vae_score'] > 0.97 and s['factor_vae_score'] > 0.97
  assert s['mig'] > 0.9
  assert s['dci_disentanglement'] > 0.95 and s['dci_completeness'] > 0.95
  assert s['dci_informativeness'] > 0.95
  # A linear SVM on one ordered code cannot cut out the middle values of a
  # many-valued factor: SAP stays well below 1 even here (0.32 at 2,000 points,
  # 0.19 at 800), but far above a random code's (0.004).
  assert s['sap'] > 0.1


def test_random_codes_score_near_chance(shapes):
  gt, _ = shapes
  rng = np.random.default_rng(1)
  s = scores(gt, lambda images: rng.normal(size=(len(images), 5)), num_train=800, num_eval=400)
  assert s['beta_vae_score'] < 0.35 and s['factor_vae_score'] < 0.35  # Chance: 1/5.
  assert s['mig'] < 0.05
  assert s['dci_disentanglement'] < 0.15 and s['dci_completeness'] < 0.15
  assert s['sap'] < 0.05


def test_a_factor_coded_twice_loses_its_mig_gap(shapes):
  gt, rows = shapes
  codes = gt.factors.astype(np.float64)
  doubled = np.concatenate([codes[:, :1], codes], axis=1)  # Factor 0 in two codes.
  s = scores(gt, code_of(rows, doubled), metrics=('mig', 'dci'), num_train=800, num_eval=400)
  assert s['mig'] == pytest.approx(0.8, abs=0.03)  # Four of five factors keep their gap.
  assert s['dci_disentanglement'] > 0.9  # Each code still predicts one factor,
  assert s['dci_completeness'] < 0.95  # but factor 0 is spread over two codes.


def test_a_constant_code_is_ignored(shapes):
  gt, rows = shapes
  codes = np.concatenate([exact_codes(gt), np.zeros((len(gt.factors), 1))], axis=1)
  s = scores(gt, code_of(rows, codes), metrics=('factor_vae', 'sap'), num_train=400,
             num_eval=200)
  assert s['factor_vae_active_dims'] == 5 and s['factor_vae_score'] > 0.97
  assert s['sap'] > 0.1


def test_metrics_are_a_function_of_the_seed(shapes):
  gt, rows = shapes
  represent = code_of(rows, exact_codes(gt) + np.sin(np.arange(len(gt.factors)))[:, None])
  a = disentanglement.evaluate(gt, represent, 3, metrics=('mig', 'sap'), num_train=300, num_eval=100)
  b = disentanglement.evaluate(gt, represent, 3, metrics=('mig', 'sap'), num_train=300, num_eval=100)
  c = disentanglement.evaluate(gt, represent, 4, metrics=('mig', 'sap'), num_train=300, num_eval=100)
  assert a == b and a != c


def test_codes_are_encoded_in_bounded_chunks(shapes, monkeypatch):
  gt, rows = shapes
  monkeypatch.setattr(disentanglement, '_CHUNK', 1000)
  seen = []
  lookup = code_of(rows, exact_codes(gt))
  def represent(images):
    seen.append(len(images))
    return lookup(images)
  disentanglement.evaluate(gt, represent, 0, metrics=('beta_vae', 'factor_vae', 'mig'),
                           num_train=100, num_eval=50)
  assert max(seen) <= 1000 and sum(seen) > 10_000


# --- The total-correlation estimators ---------------------------------------------------

def _gaussians(rng, n, d):
  return (jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
          jnp.asarray(rng.normal(size=(n, d)) * 0.5 - 0.5, jnp.float32))


@pytest.mark.parametrize('estimator', objectives.TC_ESTIMATORS)
def test_batch_weights_sum_to_one_per_row(estimator):
  w = np.exp(np.asarray(objectives.log_batch_weights(6, 50, estimator), np.float64))
  np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
  if estimator == 'mss':  # Own image 1/N, the next one (N - M) / (N M), the rest 1/M.
    np.testing.assert_allclose(np.diagonal(w), 1 / 50, rtol=1e-6)
    np.testing.assert_allclose(w[0, 1], (50 - 5) / (50 * 5), rtol=1e-6)
    np.testing.assert_allclose(w[5, 0], (50 - 5) / (50 * 5), rtol=1e-6)
    np.testing.assert_allclose(w[0, 2:], 1 / 5, rtol=1e-6)


def test_mss_batch_weights_refuse_a_batch_larger_than_the_data():
  objectives.log_batch_weights(10, 10, 'mss')  # The whole data: the other M = N - 1 images.
  with pytest.raises(ValueError, match='tc_estimator'):
    objectives.log_batch_weights(11, 10, 'mss')
  with pytest.raises(ValueError, match='tc_estimator'):
    objectives.log_batch_weights(4, 10, 'nope')


def test_mss_estimate_of_q_z_is_unbiased_over_every_batch():
  """E over every ordered batch of B distinct images of q^(z) = (1/N) sum_n q(z | x_n)."""
  n, b, d = 5, 3, 2
  mean, log_var = _gaussians(np.random.default_rng(0), n, d)
  z = jnp.asarray([[0.3, -0.2]], jnp.float32)
  log_w = objectives.log_batch_weights(b, n, 'mss')
  for own in range(n):
    estimates = []
    for others in itertools.permutations([i for i in range(n) if i != own], b - 1):
      batch = np.array((own,) + others)
      mi, tc, dwkl = objectives.decomposed_kl(
          jnp.repeat(z, b, axis=0), mean[batch], log_var[batch], jnp.zeros(b), log_w)
      log_qz_x = np.sum(scipy.stats.norm.logpdf(
          np.asarray(z[0]), np.asarray(mean[own]), np.exp(0.5 * np.asarray(log_var[own]))))
      estimates.append(math.exp(log_qz_x - float(mi[0])))  # log q^(z) = log q(z|x) - MI.
    exact = np.mean([np.prod(scipy.stats.norm.pdf(np.asarray(z[0]), np.asarray(mean[i]),
                                                  np.exp(0.5 * np.asarray(log_var[i]))))
                     for i in range(n)])
    assert np.mean(estimates) == pytest.approx(exact, rel=1e-4)


def test_mws_with_the_whole_data_as_batch_is_the_exact_decomposition():
  n, d = 6, 3
  rng = np.random.default_rng(2)
  mean, log_var = _gaussians(rng, n, d)
  z = mean + jnp.exp(0.5 * log_var) * jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  log_pz = jnp.sum(jax.scipy.stats.norm.logpdf(z), axis=-1)
  mi, tc, dwkl = objectives.decomposed_kl(z, mean, log_var, log_pz,
                                          objectives.log_batch_weights(n, 1000, 'mws'))
  zz, mm, ss = (np.asarray(a, np.float64) for a in (z, mean, jnp.exp(0.5 * log_var)))
  pairs = scipy.stats.norm.logpdf(zz[:, None, :], mm[None], ss[None])  # [n, n, d]
  log_qz_x = pairs[np.arange(n), np.arange(n)].sum(-1)
  log_qz = scipy.special.logsumexp(pairs.sum(-1), axis=1) - math.log(n)
  log_marginals = (scipy.special.logsumexp(pairs, axis=1) - math.log(n)).sum(-1)
  np.testing.assert_allclose(mi, log_qz_x - log_qz, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(tc, log_qz - log_marginals, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dwkl, log_marginals - np.asarray(log_pz), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mi + tc + dwkl, log_qz_x - np.asarray(log_pz), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('estimator', objectives.TC_ESTIMATORS)
def test_identical_posteriors_have_no_mutual_information_or_total_correlation(estimator):
  mean, log_var = _gaussians(np.random.default_rng(3), 1, 4)
  b = 8
  z = jnp.asarray(np.random.default_rng(4).normal(size=(b, 4)), jnp.float32)
  mi, tc, _ = objectives.decomposed_kl(z, jnp.repeat(mean, b, 0), jnp.repeat(log_var, b, 0),
                                       jnp.zeros(b), objectives.log_batch_weights(b, 100, estimator))
  np.testing.assert_allclose(mi, 0.0, atol=1e-5)
  np.testing.assert_allclose(tc, 0.0, atol=1e-5)


# --- The objectives on a small model -----------------------------------------------------

_SHAPE = (4, 4, 1)


@pytest.fixture(scope='module')
def small():
  model_config = config_lib.default_config().model
  model_config.hidden, model_config.latent_dim = (16,), 3
  model = models.make_model(model_config, _SHAPE)
  params = models.init_params(model, jax.random.key(0), _SHAPE)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (8,) + _SHAPE), jnp.float32)
  return model, params, x


def test_beta_tcvae_with_tc_weight_beta_is_the_sampled_kl_beta_elbo(small):
  model, params, x = small
  key = jax.random.key(5)
  loss, metrics = jax.jit(lambda p: objectives.beta_tcvae(
      model, p, x, key, kl_weight=3.0, tc_weight=3.0, dataset_size=100))(params)
  t = objectives.terms(model, params, x, objectives.draw_noise(model, key, 1, len(x)))
  layer = t.layers[0]
  sampled_kl = jnp.sum((layer.log_q - layer.log_p)[0], axis=-1)
  np.testing.assert_allclose(loss, -jnp.mean(t.log_px_z[0]) + 3.0 * jnp.mean(sampled_kl),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics['mi'] + metrics['tc'] + metrics['dimwise_kl'],
                             jnp.mean(sampled_kl), rtol=1e-5, atol=1e-5)
  # With tc_weight 0 the total correlation leaves the loss, the rest stays.
  loss0, _ = objectives.beta_tcvae(model, params, x, key, kl_weight=3.0, tc_weight=0.0,
                                   dataset_size=100)
  np.testing.assert_allclose(loss - loss0, 3.0 * metrics['tc'], rtol=1e-4, atol=1e-4)


def test_dip_regularizer_closed_form():
  mean = jnp.asarray([[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0]])
  log_var = jnp.log(jnp.asarray([[0.5, 1.0], [1.5, 2.0], [1.0, 3.0]]))
  cov = np.cov(np.asarray(mean).T, bias=True)  # [[8/3, -1/3], [-1/3, 2/3]].
  for kind, c in (('i', cov), ('ii', cov + np.diag([1.0, 2.0]))):
    expected = 10.0 * 2 * c[0, 1] ** 2 + 100.0 * ((c[0, 0] - 1) ** 2 + (c[1, 1] - 1) ** 2)
    got = objectives.dip_regularizer(mean, log_var, lambda_od=10.0, lambda_d=100.0, kind=kind)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_dip_vae_is_the_negative_elbo_plus_its_regularizer(small):
  model, params, x = small
  key = jax.random.key(6)
  loss, metrics = objectives.dip_vae(model, params, x, key, lambda_od=2.0, lambda_d=5.0,
                                     kind='ii')
  ref, ref_metrics = objectives.elbo(model, params, x, key)
  np.testing.assert_allclose(metrics['elbo'], ref_metrics['elbo'], rtol=1e-5)
  np.testing.assert_allclose(loss, ref + metrics['dip_regularizer'], rtol=1e-5)


def test_permute_dims_shuffles_each_latent_on_its_own():
  z = jnp.arange(64 * 3, dtype=jnp.float32).reshape(64, 3)
  p = np.asarray(objectives.permute_dims(jax.random.key(0), z))
  for d in range(3):
    assert sorted(p[:, d].tolist()) == np.asarray(z[:, d]).tolist()
  order = (p - np.asarray(z[:1])) / 3  # Each column's row order.
  assert not np.array_equal(order[:, 0], order[:, 1])
  assert not np.array_equal(order[:, 1], order[:, 2])


def test_factor_vae_each_loss_trains_only_its_own_parameters(small):
  model, params, x = small
  c = config_lib.default_config().objective
  c.name, c.discriminator_hidden = 'factor_vae', (8, 8)
  params = dict(params, **objectives.extra_params(c, model, jax.random.key(0)))
  discriminator = objectives.Discriminator((8, 8))
  key = jax.random.key(7)

  def parts(p):
    total, metrics = objectives.factor_vae(model, p, x, key, tc_weight=10.0,
                                           discriminator=discriminator)
    return total, metrics

  grad_total = jax.grad(lambda p: parts(p)[0])(params)
  grad_vae = jax.grad(lambda p: parts(p)[1]['loss'])(params)
  grad_d = jax.grad(lambda p: parts(p)[1]['discriminator_loss'])(params)
  d = objectives.DISCRIMINATOR
  for name in params:
    if name == d:
      assert_trees_equal(grad_total[d], grad_d[d])  # The discriminator sees only its loss,
      assert all(not np.any(g) for g in jax.tree.leaves(grad_vae[d]))  # not the VAE's.
    else:
      assert_trees_equal(grad_total[name], grad_vae[name])  # The VAE sees only its own,
      assert all(not np.any(g) for g in jax.tree.leaves(grad_d[name]))
  assert any(np.any(g) for g in jax.tree.leaves(grad_d[d]))
  _, metrics = parts(params)
  # TC is the discriminator's log-odds on q(z) samples; at init they hover near 0.
  assert abs(float(metrics['tc'])) < 1.0
  assert float(metrics['discriminator_loss']) == pytest.approx(math.log(2), abs=0.1)


def test_discriminator_init_leaves_the_model_parameters_as_they_are(small):
  model, params, _ = small
  c = config_lib.default_config().objective
  c.name = 'factor_vae'
  assert objectives.extra_params(config_lib.default_config().objective, model,
                                 jax.random.key(0)) == {}
  extra = objectives.extra_params(c, model, jax.random.key(0))
  assert list(extra) == [objectives.DISCRIMINATOR]
  assert [k['kernel'].shape[1] for k in extra[objectives.DISCRIMINATOR].values()] == [1000] * 6 + [2]


# --- Config refusals -----------------------------------------------------------------------

@pytest.mark.parametrize('objective,overrides,field', [
    ('elbo', dict(objective__tc_weight=2.0), 'objective.tc_weight'),
    ('beta_tcvae', dict(objective__dip_lambda_od=1.0), 'objective.dip_lambda_od'),
    ('dip_vae_i', dict(objective__discriminator_hidden=(8,)), 'objective.discriminator_hidden'),
    ('factor_vae', dict(objective__discriminator_hidden=(8, 0)), 'objective.discriminator_hidden'),
    ('beta_tcvae', dict(objective__tc_estimator='nope'), 'objective.tc_estimator'),
    ('beta_tcvae', dict(objective__tc_weight=-1.0), 'objective.tc_weight'),
    ('factor_vae', dict(objective__discriminator_b1=1.0), 'objective.discriminator_b1'),
    ('beta_tcvae', dict(objective__num_samples=2), 'objective.num_samples'),
    ('dip_vae_ii', dict(objective__free_bits=0.5), 'objective.free_bits'),
    ('factor_vae', dict(train__batch_size=1), 'train.batch_size'),
    ('factor_vae', dict(model__posterior='iaf'), 'model.posterior'),
    ('dip_vae_i', dict(model__upper_latent_dims=(2,), model__upper_hidden=((8,),)),
     'model.upper_latent_dims'),
    ('beta_tcvae', dict(model__hierarchy='top_down', model__groups=(4, 2)), 'model.hierarchy'),
    ('beta_tcvae', dict(model__prior='vamp'), 'model.prior'),
])
def test_disentangling_configs_that_cannot_work_are_refused(objective, overrides, field):
  c = tiny_config(objective__name=objective, **overrides)
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}'):
    config_lib.validate(c)


def test_every_objective_of_the_config_file_validates():
  for objective in ('beta_vae', 'beta_tcvae', 'factor_vae', 'dip_vae_i', 'dip_vae_ii'):
    for name in ('rendered_shapes', 'dsprites'):
      c = load_config_file('disentanglement', f'objective={objective},data={name},runlocal')
      config_lib.validate(c)


# --- Train, resume and evaluate -----------------------------------------------------------

def shapes_config(objective, **overrides):
  fields = dict(data__name='rendered_shapes', data__binarization='static',
                data__train_split='train', data__eval_split='train', objective__name=objective,
                train__batch_size=32, train__num_steps=20, train__eval_every_steps=20,
                train__checkpoint_every_steps=10, train__log_every_steps=10,
                eval__batch_size=128, eval__num_importance_samples=0,
                eval__disentanglement_num_train=60, eval__disentanglement_num_eval=30,
                logging__tensorboard=False)
  if objective == 'factor_vae':
    fields.update(objective__discriminator_hidden=(16, 16), objective__tc_weight=5.0)
  elif objective == 'beta_tcvae':
    fields.update(objective__tc_weight=4.0, objective__tc_estimator='mss')
  return tiny_config(**{**fields, **overrides})


@pytest.mark.parametrize('objective', ['beta_tcvae', 'factor_vae', 'dip_vae_ii'])
def test_objective_trains_resumes_bit_exactly_and_scores(objective, tmp_path):
  config = shapes_config(objective)
  full, interrupted = str(tmp_path / 'full'), str(tmp_path / 'interrupted')
  metrics = train.train_and_evaluate(config, full)
  train.train_and_evaluate(shapes_config(objective, train__num_steps=10), interrupted)
  train.train_and_evaluate(config, interrupted)  # Resumes at 10, runs to 20.
  step_a, state_a, _ = restored_state(full, config)
  step_b, state_b, _ = restored_state(interrupted, config)
  assert step_a == step_b == 20
  assert_trees_equal(state_a, state_b)
  with open(os.path.join(full, 'final_metrics.json')) as f:
    final = json.load(f)
  for name in ('beta_vae_score', 'factor_vae_score', 'mig', 'dci_disentanglement',
               'dci_completeness', 'dci_informativeness', 'sap'):
    assert np.isfinite(final[name]) and final[name] == metrics[name], name
  assert np.isfinite(final['elbo'])
  logged = vlog.read_metrics(full, 'train')[-1]  # The objective's own terms, every interval.
  if objective == 'factor_vae':
    init = experiment.init_state(experiment.build_experiment(config)).params[objectives.DISCRIMINATOR]
    trained = state_a['params'][objectives.DISCRIMINATOR]
    assert not np.array_equal(jax.tree.leaves(init)[0], jax.tree.leaves(trained)[0])
    assert {'tc', 'discriminator_loss', 'discriminator_accuracy'} <= set(logged)
  elif objective == 'beta_tcvae':
    assert {'mi', 'tc', 'dimwise_kl'} <= set(logged)
  else:
    assert 'dip_regularizer' in logged
