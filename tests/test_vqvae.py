"""The VQ-VAE and its prior: quantisation, the straight-through gradient, the EMA codebook
(its targets by hand, and the optimiser step that sets them), restarts, code usage,
the PixelCNN prior (causal, normalised, sampled as it scores), config refusals,
and both stages end to end: train, resume bit-exactly, evaluate, generate.
"""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import config as config_lib
from vae_jax import evaluate_workdir
from vae_jax import experiment
from vae_jax import generate
from vae_jax import models
from vae_jax import objectives
from vae_jax import optim
from vae_jax import train
from vae_jax import workdir as workdir_lib
from vae_jax.models import vqvae

from test_train import assert_trees_equal, restored_state, tiny_config

_SHAPE = (8, 8, 1)


def vq_model_config(**fields):
  m = config_lib.default_config().model
  m.posterior, m.prior, m.architecture = 'vq', 'uniform', 'conv'
  m.conv_features, m.latent_dim, m.codebook_size, m.vq_residual_blocks = (4, 8), 3, 6, 1
  m.prior_features, m.prior_layers = 8, 1
  for name, value in fields.items():
    m[name] = value
  return m


@pytest.fixture(scope='module')
def small():
  model = models.make_model(vq_model_config(), _SHAPE)
  params = models.init_params(model, jax.random.key(0), _SHAPE)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (5,) + _SHAPE), jnp.float32)
  return model, params, x


def test_codebook_picks_the_nearest_vector():
  book = vqvae.Codebook(7, 3, ema=False)
  z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5, 3)), jnp.float32)
  variables = book.init(jax.random.key(0), z)
  codes, z_q = book.apply(variables, z)
  e = np.asarray(variables['params']['embedding'])
  brute = np.argmin(((np.asarray(z)[..., None, :] - e) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(codes, brute)
  assert codes.dtype == jnp.int32 and codes.shape == (4, 5)
  np.testing.assert_array_equal(z_q, e[brute])


def test_terms_are_one_layer_with_a_one_hot_q_and_the_uniform_prior(small):
  model, params, x = small
  t, z_e, codes = model.apply({'params': params}, x, 3, method='vq_terms')
  assert model.grid == (2, 2) and codes.shape == (5, 2, 2) and z_e.shape == (5, 2, 2, 3)
  (layer,) = t.layers
  assert layer.z.shape == (3, 5, 2, 2, 3) and t.log_px_z.shape == (3, 5)
  np.testing.assert_array_equal(layer.log_q, 0.0)
  np.testing.assert_allclose(layer.log_p, -4 * math.log(6), rtol=1e-6)  # -h w log K.
  e = params['codebook']['embedding']
  np.testing.assert_allclose(layer.z[0], e[codes], rtol=1e-6, atol=1e-6)  # The value of z_q.
  recon, kl = objectives.elbo_terms(model, params, x, jax.random.key(0))
  np.testing.assert_allclose(kl.sum(-1), 4 * math.log(6), rtol=1e-6)  # ELBO = recon - h w log K.


def test_straight_through_gradient_reaches_the_encoder(small):
  model, params, x = small
  grads = jax.jit(jax.grad(lambda p: -jnp.mean(objectives.terms(
      model, p, x, jnp.zeros((1, len(x), 0))).log_px_z)))(params)
  assert all(np.any(g) for g in jax.tree.leaves(grads['encoder']))
  assert not any(np.any(g) for g in jax.tree.leaves(grads['codebook']))  # Only through losses.


def test_code_usage_perplexity():
  perplexity, used = objectives.code_usage(jnp.arange(12) % 4, 8)
  assert float(perplexity) == pytest.approx(4.0) and float(used) == 0.5
  perplexity, used = objectives.code_usage(jnp.zeros(9, jnp.int32), 8)
  assert float(perplexity) == pytest.approx(1.0) and float(used) == 1 / 8


def test_ema_targets_by_hand():
  rng = np.random.default_rng(2)
  book = {'embedding': rng.normal(size=(3, 2)), 'counts': np.array([2.0, 1.0, 0.5]),
          'sums': rng.normal(size=(3, 2))}
  z_e = rng.normal(size=(4, 2))
  codes = np.array([0, 0, 2, 0])
  targets, restarts = objectives.codebook_targets(
      jax.tree.map(jnp.asarray, book), jnp.asarray(z_e), jnp.asarray(codes), jax.random.key(0),
      decay=0.9, restart=0.0)
  counts = 0.9 * book['counts'] + 0.1 * np.array([3.0, 0.0, 1.0])
  sums = 0.9 * book['sums'] + 0.1 * np.stack([z_e[[0, 1, 3]].sum(0), np.zeros(2), z_e[2]])
  smoothed = (counts + 1e-5) / (counts.sum() + 3e-5) * counts.sum()
  np.testing.assert_allclose(targets['counts'], counts, rtol=1e-6)
  np.testing.assert_allclose(targets['sums'], sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(targets['embedding'], sums / smoothed[:, None], rtol=1e-5)
  assert float(restarts) == 0
  # With restarts, the code whose count fell below 1 moves onto one of the batch's vectors.
  targets, restarts = objectives.codebook_targets(
      jax.tree.map(jnp.asarray, book), jnp.asarray(z_e), jnp.asarray(codes), jax.random.key(0),
      decay=0.9, restart=1.0)
  assert float(restarts) == 2  # Counts 2.1, 0.9, 0.55: codes 1 and 2 are below 1.
  np.testing.assert_allclose(targets['counts'], [counts[0], 1.0, 1.0], rtol=1e-6)
  for code in (1, 2):
    assert any(np.allclose(targets['sums'][code], v) for v in z_e)
  np.testing.assert_allclose(targets['sums'][0], sums[0], rtol=1e-5)


def _one_step(model, params, x, objective_config, opt_config=None):
  """One update of the config's optimiser (with the objective's extra ones) on vq_vae."""
  opt_config = opt_config or config_lib.default_config().optimizer
  tx = optim.make_optimizer(opt_config, 10, objectives.extra_optimizers(objective_config, model))
  loss_fn = objectives.make_loss_fn(model, 'vq_vae', beta=1.0, warmup_steps=0, free_bits=0.0,
                                    num_samples=1, commitment=0.25)
  key = jax.random.key(3)
  @jax.jit
  def step(params):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, key, 0)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), metrics
  return (*step(params), key)


def test_ema_codebook_is_set_to_its_targets_by_the_train_update(small):
  model, params, x = small
  c = config_lib.default_config().objective
  c.name = 'vq_vae'
  new, metrics, key = _one_step(model, params, x, c)
  _, z_e, codes = model.apply({'params': params}, x, method='vq_terms')
  targets, _ = objectives.codebook_targets(params['codebook'], z_e, codes, key,
                                           decay=0.99, restart=0.0)
  for name, target in targets.items():
    np.testing.assert_allclose(new['codebook'][name], target, rtol=1e-5, atol=1e-6)
  # The networks moved by Adam as usual; the reported loss has no codebook term.
  assert not np.allclose(new['encoder']['Conv_0']['kernel'], params['encoder']['Conv_0']['kernel'])
  recon = objectives.terms(model, params, x, jnp.zeros((1, len(x), 0))).log_px_z[0]
  np.testing.assert_allclose(metrics['loss'], -jnp.mean(recon) + 0.25 * metrics['commitment'],
                             rtol=1e-5)


def test_codebook_loss_trains_the_embedding_by_gradient():
  model = models.make_model(vq_model_config(codebook_update='loss'), _SHAPE)
  params = models.init_params(model, jax.random.key(0), _SHAPE)
  assert set(params['codebook']) == {'embedding'}  # No moving averages to keep.
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (5,) + _SHAPE), jnp.float32)
  c = config_lib.default_config().objective
  c.name = 'vq_vae'
  assert objectives.extra_optimizers(c, model) == {}
  loss_fn = objectives.make_loss_fn(model, 'vq_vae', beta=1.0, warmup_steps=0, free_bits=0.0,
                                    num_samples=1, commitment=0.25)
  grads = jax.jit(jax.grad(lambda p: loss_fn(p, x, jax.random.key(0), 0)[0]))(params)
  _, z_e, codes = model.apply({'params': params}, x, method='vq_terms')
  e = params['codebook']['embedding']
  # d/de_k sum |z_e - e_code|^2 over the positions coded k, divided by the batch.
  expected = np.zeros(e.shape)
  for z, k in zip(np.asarray(z_e).reshape(-1, 3), np.asarray(codes).reshape(-1)):
    expected[k] += 2 * (np.asarray(e)[k] - z) / len(x)
  np.testing.assert_allclose(grads['codebook']['embedding'], expected, rtol=1e-4, atol=1e-6)


def test_restarts_revive_unused_codes_in_training(small):
  model = models.make_model(vq_model_config(codebook_restart=0.995), _SHAPE)
  params = models.init_params(model, jax.random.key(0), _SHAPE)
  _, x = small[0], small[2]
  c = config_lib.default_config().objective
  c.name = 'vq_vae'
  new, metrics, _ = _one_step(model, params, x, c)
  _, z_e, codes = model.apply({'params': params}, x, method='vq_terms')
  unused = sorted(set(range(6)) - set(np.asarray(codes).reshape(-1).tolist()))
  # Counts start at 1: an unused code's falls to 0.99, a used one's stays >= 1.
  assert unused and float(metrics['restarts']) == len(unused)
  flat = np.asarray(z_e).reshape(-1, 3)
  for k in unused:
    assert any(np.allclose(new['codebook']['sums'][k], v, atol=1e-6) for v in flat)


# --- The priors over the code grid ------------------------------------------------------

def _pixelcnn(size=3, grid=(2, 2)):
  prior = vqvae.PixelCNNPrior(size, grid, features=8, num_layers=2)
  codes = jnp.zeros((1,) + grid, jnp.int32)
  variables = prior.init(jax.random.key(4), codes, method='log_prob')
  # Random weights far from init's near-uniform output, so the checks see real structure.
  variables = jax.tree.map(lambda v: v + 0.5 * jax.random.normal(jax.random.key(5), v.shape),
                           variables)
  return prior, variables


def test_pixelcnn_prior_is_a_normalised_distribution_over_grids():
  prior, variables = _pixelcnn()
  grids = jnp.asarray(list(itertools.product(range(3), repeat=4)), jnp.int32).reshape(-1, 2, 2)
  log_p = prior.apply(variables, grids, method='log_prob')
  assert log_p.shape == (81,)
  assert float(jnp.sum(jnp.exp(log_p))) == pytest.approx(1.0, abs=1e-5)
  assert float(jnp.std(log_p)) > 0.3  # Not the uniform distribution.


def test_pixelcnn_logits_at_a_position_see_only_the_positions_before_it():
  prior, variables = _pixelcnn(size=4, grid=(3, 3))
  net = vqvae._PixelCNN(4, 8, 2)
  params = {'params': variables['params']['net']}
  base = jnp.asarray(np.random.default_rng(6).integers(0, 4, (1, 3, 3)), jnp.int32)
  logits = net.apply(params, base)
  for j in range(9):
    changed = base.at[0, j // 3, j % 3].set((base[0, j // 3, j % 3] + 1) % 4)
    moved = np.any(np.abs(np.asarray(net.apply(params, changed) - logits)) > 1e-6, axis=-1)[0]
    assert not moved.reshape(-1)[:j + 1].any(), j  # Positions up to j (itself included) fixed.
  # The last position does see the others (the net is not blind).
  assert np.any(np.asarray(net.apply(params, base.at[0, 0, 0].set(3 - base[0, 0, 0])))
                != np.asarray(logits))


def test_pixelcnn_samples_follow_its_log_prob():
  prior, variables = _pixelcnn(size=3, grid=(1, 2))
  samples = prior.apply(variables, jax.random.key(7), 6000, method='sample')
  assert samples.shape == (6000, 1, 2) and samples.dtype == jnp.int32
  grids = jnp.asarray(list(itertools.product(range(3), repeat=2)), jnp.int32).reshape(-1, 1, 2)
  p = np.exp(np.asarray(prior.apply(variables, grids, method='log_prob')))
  counts = np.array([np.sum(np.all(np.asarray(samples) == g, axis=(1, 2))) for g in np.asarray(grids)])
  se = np.sqrt(p * (1 - p) / 6000)
  assert np.all(np.abs(counts / 6000 - p) < 5 * se + 1e-3), (counts / 6000, p)
  # A temperature near 0 picks the most likely code at every step.
  cold = prior.apply(variables, jax.random.key(8), 4, 1e-4, method='sample')
  assert len({tuple(np.asarray(c).reshape(-1)) for c in cold}) == 1


def test_uniform_prior():
  prior = vqvae.UniformCodes(5, (2, 3))
  assert float(prior.log_prob(jnp.zeros((2, 3), jnp.int32))) == pytest.approx(-6 * math.log(5))
  s = prior.sample(jax.random.key(0), 100)
  assert s.shape == (100, 2, 3) and int(s.min()) >= 0 and int(s.max()) <= 4


# --- Configs ---------------------------------------------------------------------------------

def vq_config(**overrides):
  fields = dict(model__posterior='vq', model__prior='uniform', model__architecture='conv',
                model__conv_features=(4, 8), model__latent_dim=3, model__codebook_size=8,
                model__vq_residual_blocks=1, model__prior_features=8, model__prior_layers=1,
                objective__name='vq_vae', data__binarization='static', train__batch_size=32,
                train__num_steps=20, train__log_every_steps=10, train__eval_every_steps=20,
                train__checkpoint_every_steps=10, logging__tensorboard=False)
  return tiny_config(**{**fields, **overrides})


@pytest.mark.parametrize('overrides,field', [
    (dict(objective__name='elbo'), 'objective.name'),
    (dict(model__posterior='gaussian'), 'model.prior'),
    (dict(model__prior='pixelcnn'), 'model.prior'),
    (dict(model__prior='standard_normal'), 'model.prior'),
    (dict(objective__name='code_prior', model__prior='pixelcnn'), 'model.prior_workdir'),
    (dict(model__prior_workdir='/tmp/x'), 'model.prior_workdir'),
    (dict(model__architecture='mlp'), 'model.architecture'),
    (dict(model__codebook_update='nope'), 'model.codebook_update'),
    (dict(model__codebook_update='loss', model__codebook_restart=1.0), 'model.codebook_restart'),
    (dict(model__codebook_decay=1.0), 'model.codebook_decay'),
    (dict(model__codebook_size=0), 'model.codebook_size'),
    (dict(model__conv_features=(4, 8, 8)), 'model.conv_features'),  # 28 is not divisible by 8.
    (dict(eval__num_importance_samples=100), 'eval.num_importance_samples'),
    (dict(objective__beta=2.0), 'objective.beta'),
    (dict(objective__commitment=-1.0), 'objective.commitment'),
    (dict(objective__name='elbo', model__posterior='gaussian', model__prior='standard_normal',
          objective__commitment=0.5), 'objective.commitment'),
])
def test_vq_configs_that_cannot_work_are_refused(overrides, field):
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}'):
    config_lib.validate(vq_config(**overrides))


def test_the_config_file_builds_both_stages():
  from test_config import load_config_file  # pylint: disable=g-import-not-at-top
  for arg in ('runlocal', 'update=loss,restart=0', 'data=cifar10',
              'prior,vqvae=/somewhere', 'data=binarized_mnist'):
    config_lib.validate(load_config_file('vqvae', arg))
  with pytest.raises(config_lib.ConfigError, match="needs both 'prior' and 'vqvae=WORKDIR'"):
    load_config_file('vqvae', 'prior')
  # The workdir comes last and may hold commas (a sweep point's name).
  c = load_config_file('vqvae', 'steps=7,prior,vqvae=/runs/a=1,b=2')
  assert c.model.prior_workdir == '/runs/a=1,b=2' and c.train.num_steps == 7


# --- Both stages end to end ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def stage_one(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('vq'))
  config = vq_config()
  return workdir, config, train.train_and_evaluate(config, workdir)


def prior_config(source, **overrides):
  return vq_config(objective__name='code_prior', model__prior='pixelcnn',
                   model__prior_workdir=source, **overrides)


def test_stage_one_trains_resumes_bit_exactly_and_logs_code_usage(stage_one, tmp_path):
  workdir, config, metrics = stage_one
  interrupted = str(tmp_path / 'interrupted')
  train.train_and_evaluate(vq_config(train__num_steps=10), interrupted)
  train.train_and_evaluate(config, interrupted)
  _, state_a, _ = restored_state(workdir, config)
  _, state_b, _ = restored_state(interrupted, config)
  assert_trees_equal(state_a, state_b)
  from vae_jax import logs as vlog  # pylint: disable=g-import-not-at-top
  record = vlog.read_metrics(workdir, 'train')[-1]
  assert 1 <= record['perplexity'] <= 8 and 0 < record['codes_used'] <= 1
  assert {'commitment', 'restarts'} <= set(record)
  # Under the uniform prior the KL is h w log K: 7 x 7 codes of 8.
  assert metrics['kl'] == pytest.approx(49 * math.log(8), rel=1e-5)


def test_stage_two_learns_the_prior_with_the_vq_vae_frozen(stage_one, tmp_path):
  source, config_one, metrics_one = stage_one
  prior_dir = str(tmp_path / 'prior')
  config = prior_config(source)
  metrics = train.train_and_evaluate(config, prior_dir)
  _, trained = experiment.load_trained(source)[:2]
  _, state, _ = restored_state(prior_dir, config)
  for name in objectives.FROZEN_IN_STAGE_TWO:
    assert_trees_equal(state['params'][name], trained[name])
  assert metrics['recon'] == pytest.approx(metrics_one['recon'], rel=1e-6)
  assert metrics['kl'] < metrics_one['kl'] - 10  # The learned prior beats h w log K.
  # Resumes bit-exactly, without reading the first stage again.
  interrupted = str(tmp_path / 'interrupted')
  train.train_and_evaluate(prior_config(source, train__num_steps=10), interrupted)
  train.train_and_evaluate(config, interrupted)
  assert_trees_equal(restored_state(prior_dir, config)[1], restored_state(interrupted, config)[1])
  # Evaluation reports the bound, not an importance-sampled log p(x); generate draws from it.
  results = evaluate_workdir.evaluate_workdir(prior_dir, progress=False)
  assert 'log_px' not in results and results['elbo'] == pytest.approx(metrics['elbo'], rel=1e-5)
  assert results['elbo_bits_per_dim'] > 0
  out = str(tmp_path / 'pictures')
  generate.generate(prior_dir, out, [1.0], 16, [0, 1], [0, 1], 0, 4)
  assert {'samples_t1.png', 'reconstructions.png', 'interpolation.png',
          'traversal.png'} <= set(os.listdir(out))


def test_the_config_file_takes_the_second_stage_fields_from_the_first(stage_one):
  from test_config import load_config_file  # pylint: disable=g-import-not-at-top
  source, config_one, _ = stage_one
  c = load_config_file('vqvae', f'prior,vqvae={source}')
  for field in config_lib.VQ_STAGE_ONE_FIELDS:
    section, name = field.split('.')
    assert c[section][name] == config_one[section][name], field
  assert (c.objective.name, c.model.prior, c.model.prior_workdir) == ('code_prior', 'pixelcnn',
                                                                      source)
  config_lib.validate(c)


def test_stage_two_refuses_a_workdir_that_is_not_a_trained_vq_vae(stage_one, tmp_path):
  source, _, _ = stage_one
  with pytest.raises(workdir_lib.WorkdirError, match='prior_workdir.*no such directory'):
    train.train_and_evaluate(prior_config(str(tmp_path / 'nothing')), str(tmp_path / 'a'))
  other = tmp_path / 'gaussian'
  other.mkdir()
  (other / 'config.json').write_text(config_lib.to_json(tiny_config()))
  with pytest.raises(workdir_lib.WorkdirError, match="is not a VQ-VAE: it trained objective 'elbo'"):
    train.train_and_evaluate(prior_config(str(other)), str(tmp_path / 'b'))
  unfinished = tmp_path / 'unfinished'
  unfinished.mkdir()
  (unfinished / 'config.json').write_text(config_lib.to_json(vq_config()))
  with pytest.raises(workdir_lib.WorkdirError, match='has not finished training'):
    train.train_and_evaluate(prior_config(str(unfinished)), str(tmp_path / 'c'))
  with pytest.raises(workdir_lib.WorkdirError, match='config.model.codebook_size: 16 here'):
    train.train_and_evaluate(prior_config(source, model__codebook_size=16), str(tmp_path / 'd'))
  for name in 'abcd':  # Refused before the workdir is made.
    assert not os.path.exists(tmp_path / name)
