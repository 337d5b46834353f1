"""Optimisers and learning-rate schedules built from the config."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import config as config_lib
from vae_jax import optim


def opt_config(**fields):
  c = config_lib.default_config().optimizer
  c.update(fields)
  return c


def test_schedules():
  assert optim.learning_rate_schedule(opt_config(learning_rate=0.1), 100) == 0.1
  cosine = optim.learning_rate_schedule(opt_config(learning_rate=0.1, schedule='cosine'), 100)
  np.testing.assert_allclose([cosine(0), cosine(50), cosine(100)], [0.1, 0.05, 0.0], atol=1e-7)
  warm = optim.learning_rate_schedule(
      opt_config(learning_rate=0.1, schedule='warmup_cosine', warmup_steps=10), 100)
  np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(100)], [0, 0.05, 0.1, 0], atol=1e-7)


@pytest.mark.parametrize('name', ['adam', 'adamw', 'adagrad', 'sgd'])
@pytest.mark.parametrize('clip', [0.0, 1.0])
def test_every_optimizer_descends_a_quadratic(name, clip):
  tx = optim.make_optimizer(
      opt_config(name=name, learning_rate=0.1, grad_clip_norm=clip, weight_decay=1e-4), 100)
  params = {'w': jnp.array([3.0, -2.0])}
  state = tx.init(params)
  for _ in range(50):
    grads = {'w': 2 * params['w']}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(jnp.sum(params['w'] ** 2)) < 13.0 * 0.5


def test_clipping_bounds_the_first_step():
  tx = optim.make_optimizer(opt_config(name='sgd', b1=0.0, learning_rate=1.0, grad_clip_norm=1.0), 10)
  params = {'w': jnp.zeros(2)}
  updates, _ = tx.update({'w': jnp.array([30.0, 40.0])}, tx.init(params), params)
  np.testing.assert_allclose(optax.global_norm(updates), 1.0, rtol=1e-6)


def test_burda_schedule_is_the_papers_at_3280_epochs():
  steps_per_epoch = 10
  schedule = optim.learning_rate_schedule(
      opt_config(learning_rate=1e-3, schedule='burda'), 3280 * steps_per_epoch)
  # Stage i: 3^i epochs at 1e-3 * 10^(-i/7) (Burda et al. 2015, sec. 5).
  first_epoch = 0
  for i in range(8):
    expected = 1e-3 * 10 ** (-i / 7)
    last_epoch = first_epoch + 3 ** i - 1
    for epoch in (first_epoch, last_epoch):
      np.testing.assert_allclose(schedule(epoch * steps_per_epoch), expected, rtol=1e-5)
    first_epoch = last_epoch + 1
  assert first_epoch == 3280


def test_burda_equal_gives_every_stage_an_equal_share():
  schedule = optim.learning_rate_schedule(
      opt_config(learning_rate=1e-3, schedule='burda_equal'), 800)
  for i in range(8):
    np.testing.assert_allclose([schedule(100 * i), schedule(100 * i + 99)],
                               1e-3 * 10 ** (-i / 7), rtol=1e-5)


def test_adamw_decays_the_weights_outside_the_adaptive_step():
  # First step: Adam's direction is g / (|g| + eps) ~ sign(g). AdamW adds the decay after
  # it, -lr (sign(g) + wd p); Adam with weight_decay adds wd p to the gradient first,
  # -lr sign(g + wd p). With p = 10, g = 0.1, wd = 0.1: -2 lr and -lr.
  params, grads, lr = {'w': jnp.array([10.0])}, {'w': jnp.array([0.1])}, 0.01
  steps = {}
  for name in ('adam', 'adamw'):
    tx = optim.make_optimizer(opt_config(name=name, learning_rate=lr, weight_decay=0.1), 10)
    steps[name] = float(tx.update(grads, tx.init(params), params)[0]['w'][0])
  assert steps['adamw'] == pytest.approx(-2 * lr, rel=1e-5)
  assert steps['adam'] == pytest.approx(-lr, rel=1e-5)


@pytest.mark.parametrize('fields,match', [
    (dict(schedule='cosine', warmup_steps=100), "optimizer.warmup_steps: 100 steps of warm-up, "
     "but schedule 'cosine' has none"),
    (dict(schedule='burda', warmup_steps=5), 'optimizer.warmup_steps'),
    (dict(name='adagrad', b1=0.5), "optimizer.b1: 0.5 would be ignored: 'adagrad' has no"),
    (dict(name='adagrad', b2=0.9), 'optimizer.b2: 0.9 would be ignored'),
    (dict(name='sgd', b2=0.99), "optimizer.b2: 0.99 would be ignored: 'sgd'"),
    (dict(name='sgd', eps=1e-4), 'optimizer.eps: 0.0001 would be ignored'),
    (dict(warmup_steps=-1), 'optimizer.warmup_steps: must be an int >= 0'),
    (dict(ema_decay=1.0), 'optimizer.ema_decay: must be in'),
    (dict(name='lion'), 'optimizer.name'),
])
def test_fields_an_optimizer_would_ignore_are_refused(fields, match):
  with pytest.raises(optim.OptimizerConfigError, match=match):
    optim.validate_config(opt_config(**fields), config_lib.default_config().optimizer)


def test_fields_each_optimizer_reads_are_accepted():
  defaults = config_lib.default_config().optimizer
  for fields in (dict(schedule='constant', warmup_steps=10), dict(schedule='warmup_cosine',
                 warmup_steps=10), dict(name='sgd', b1=0.0), dict(name='adagrad', eps=1e-4),
                 dict(name='adamw', b1=0.5, b2=0.9, eps=1e-6)):
    optim.validate_config(opt_config(**fields), defaults)
