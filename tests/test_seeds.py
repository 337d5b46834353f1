"""Several seeds in one program (config.train.num_seeds): replica i is the run with seed i.

The claim under test is exact: a replica's checkpoints, metrics and final
numbers are bit-identical to those of a single run with its seed, so a study
may train its seeds vmapped and still rerun any one of them alone.
"""

import dataclasses
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import config as config_lib
from vae_jax import experiment
from vae_jax import logs as vlog
from vae_jax import objectives
from vae_jax import replicas
from vae_jax import sweep
from vae_jax import train
from vae_jax import workdir as workdir_lib

from test_train import assert_trees_equal
from test_train import poison_loss
from test_train import restored_state
from test_train import tiny_config

SEEDS = (3, 4, 5)


def seeds_config(**overrides):
  c = tiny_config(**overrides)
  c.seed = SEEDS[0]
  c.train.num_seeds = len(SEEDS)
  c.logging.tensorboard = False
  return c


@pytest.fixture(scope='module')
def vmapped(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('vmapped'))
  config = seeds_config()
  return workdir, config, train.train_and_evaluate(config, workdir)


@pytest.fixture(scope='module')
def single(tmp_path_factory):
  """The single run with the middle seed, in its own workdir."""
  workdir = str(tmp_path_factory.mktemp('single'))
  config = replicas.replica_config(seeds_config(), SEEDS[1])
  return workdir, config, train.train_and_evaluate(config, workdir)


def test_each_replica_has_a_complete_workdir(vmapped):
  workdir, config, metrics = vmapped
  for seed in SEEDS:
    replica = replicas.replica_workdir(workdir, seed)
    for name in ('config.json', 'versions.json', 'metrics.jsonl', 'samples.png',
                 'reconstructions.png', 'final_metrics.json', 'checkpoints'):
      assert os.path.exists(os.path.join(replica, name)), (seed, name)
    saved = workdir_lib.load_config(replica)
    assert saved.seed == seed and saved.train.num_seeds == 1
    assert [r['step'] for r in vlog.read_metrics(replica, 'train')] == [10, 20, 30, 40]
  assert workdir_lib.load_config(workdir).train.num_seeds == len(SEEDS)
  # The run's own summary: means over the seeds and each seed's numbers.
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    summary = json.load(f)
  per_seed = [summary['per_seed'][str(s)]['elbo'] for s in SEEDS]
  assert summary['elbo'] == pytest.approx(np.mean(per_seed))
  assert summary['elbo_std'] == pytest.approx(np.std(per_seed, ddof=1))
  assert metrics['elbo'] == pytest.approx(summary['elbo'])
  assert len(set(per_seed)) == len(SEEDS)  # Different seeds, different runs.


def test_replica_is_bit_identical_to_the_single_run_with_its_seed(vmapped, single):
  workdir, config, _ = vmapped
  single_dir, single_config, single_metrics = single
  replica = replicas.replica_workdir(workdir, SEEDS[1])
  for step in (20, 40):
    _, got, _ = restored_state(replica, single_config, step)
    _, want, _ = restored_state(single_dir, single_config, step)
    assert_trees_equal(got, want)
  # Every logged number too (wall-clock fields aside).
  def logged(d):
    return [{k: v for k, v in r.items() if k not in ('time', 'steps_per_sec')}
            for r in vlog.read_metrics(d)]
  assert logged(replica) == logged(single_dir)
  with open(os.path.join(replica, 'final_metrics.json')) as f:
    assert json.load(f) == dict(single_metrics, step=40)


def test_interrupted_vmapped_run_resumes_bit_identically(vmapped, tmp_path):
  workdir, _, _ = vmapped
  resumed = str(tmp_path)
  train.train_and_evaluate(seeds_config(train__num_steps=20), resumed)
  train.train_and_evaluate(seeds_config(), resumed)  # num_steps may change on resume.
  config = replicas.replica_config(seeds_config(), SEEDS[0])
  for seed in SEEDS:
    _, got, _ = restored_state(replicas.replica_workdir(resumed, seed), config, 40)
    _, want, _ = restored_state(replicas.replica_workdir(workdir, seed), config, 40)
    assert_trees_equal(got, want)


def test_a_replica_missing_the_newest_step_resumes_all_from_the_common_one(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(seeds_config(train__num_steps=40), workdir)
  # As if the run died after one replica saved step 40 and before the others did.
  for seed in SEEDS[1:]:
    checkpoints = os.path.join(replicas.replica_workdir(workdir, seed), 'checkpoints')
    os.rename(os.path.join(checkpoints, '40'), os.path.join(str(tmp_path), f'gone_{seed}'))
  trainer = train.Trainer(seeds_config(), workdir)
  try:
    state = trainer.initial_state()
  finally:
    trainer.close()
  assert int(state.step) == 20
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.shape[0] == len(SEEDS)


def test_a_replica_dir_resumes_as_a_single_run(vmapped, single, tmp_path):
  """DIR/seed_<s> continued alone is the single run with seed s continued."""
  workdir, _, _ = vmapped
  single_dir, _, _ = single
  copies = []
  for name, source in (('replica', replicas.replica_workdir(workdir, SEEDS[1])),
                       ('single', single_dir)):
    copy = str(tmp_path / name)
    os.system(f'cp -r {source} {copy}')
    config = replicas.replica_config(seeds_config(train__num_steps=60), SEEDS[1])
    train.train_and_evaluate(config, copy)
    copies.append(restored_state(copy, config, 60)[1])
  assert_trees_equal(*copies)


@pytest.mark.parametrize('name,schedule', [('adam', 'constant'), ('adamw', 'cosine'),
                                           ('sgd', 'warmup_cosine'), ('adagrad', 'burda')])
def test_optimizer_counters_follow_the_step_even_over_skipped_steps(name, schedule, monkeypatch):
  """The counters stay shared by all replicas only if every one advances once per step."""
  c = tiny_config(optimizer__name=name, optimizer__schedule=schedule,
                  optimizer__warmup_steps=3, optimizer__weight_decay=1e-4,
                  optimizer__grad_clip_norm=10.0, optimizer__ema_decay=0.9,
                  train__nan_policy='skip')
  poison_loss(monkeypatch, lambda step: step == 0)  # Step 0 is skipped.
  exp = experiment.build_experiment(c)
  state = experiment.init_state(exp)
  leaves, shared = jax.tree.leaves(state.opt_state), jax.tree.leaves(exp.shared)
  # Every optimiser here counts steps somewhere, and only its integer scalars are shared.
  assert any(shared)
  assert all(s == (x.shape == () and jnp.issubdtype(x.dtype, jnp.integer))
             for x, s in zip(leaves, shared))
  images = exp.dataset.train
  indices = np.stack([np.arange(50), np.arange(50, 100), np.arange(100, 150)])
  new_state, metrics = train.make_train_step(exp)(state, jnp.asarray(images), indices,
                                                  exp.keys['train'])
  assert metrics['finite'].tolist() == [0.0, 1.0, 1.0]
  for counter in (x for x, s in zip(jax.tree.leaves(new_state.opt_state), shared) if s):
    assert int(counter) == 3


class _ArgmaxState(NamedTuple):
  where: jax.Array  # An integer scalar that is not a counter.


def _largest_gradient_entry():
  """A transformation whose state is the index of the largest |update| entry it last saw."""
  def init(params):
    del params
    return _ArgmaxState(jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    del state, params
    first = jax.tree.leaves(updates)[0]
    return updates, _ArgmaxState(jnp.argmax(jnp.abs(first.ravel())).astype(jnp.int32))
  return optax.GradientTransformation(init, update)


def _with_argmax(exp):
  return dataclasses.replace(exp, tx=optax.chain(exp.tx, _largest_gradient_entry()),
                             _shared=None)


def test_an_integer_leaf_that_is_not_a_counter_is_the_replicas_own(monkeypatch):
  """Sharing is found from what an update depends on, not from dtypes: an optax state's
  integer scalar that the gradients set is per replica and kept over a skipped step."""
  config = seeds_config(train__nan_policy='skip', train__max_consecutive_nonfinite=20)
  exp = _with_argmax(experiment.build_experiment(config))
  argmax_shared = jax.tree.leaves(exp.shared)[-1]
  counters = [s for s in jax.tree.leaves(exp.shared)[:-1] if s]
  assert not argmax_shared and counters
  images = jnp.asarray(exp.dataset.train)
  indices = np.stack([np.arange(i * 150, (i + 1) * 150).reshape(3, 50) for i in range(3)])
  keys = jnp.stack([experiment.root_keys(seed)['train'] for seed in SEEDS])
  state = replicas.stack([experiment.init_state(exp, seed) for seed in SEEDS], exp.shared)
  stacked, _ = train.make_train_step(exp)(state, images, indices, keys)
  where = jax.tree.leaves(stacked.opt_state)[-1]
  assert where.shape == (3,) and len(set(where.tolist())) > 1  # The replicas' own values.
  # Each replica's leaf is what its single run computes; over a skipped step (the
  # third) the leaf keeps the second step's value while the counters move on.
  singles = [_with_argmax(experiment.build_experiment(replicas.replica_config(config, seed)))
             for seed in SEEDS]
  for i, (seed, single) in enumerate(zip(SEEDS, singles)):
    ran, _ = train.make_train_step(single)(experiment.init_state(single, seed), images, indices[i],
                                           keys[i])
    assert int(jax.tree.leaves(ran.opt_state)[-1]) == int(where[i])
  poison_loss(monkeypatch, lambda step: step == 2)
  for i, (seed, single) in enumerate(zip(SEEDS, singles)):
    step_fn = train.make_train_step(single)
    two, _ = step_fn(experiment.init_state(single, seed), images, indices[i][:2], keys[i])
    skipped, metrics = step_fn(experiment.init_state(single, seed), images, indices[i], keys[i])
    assert metrics['finite'].tolist() == [1.0, 1.0, 0.0]
    leaves, shared = jax.tree.leaves(skipped.opt_state), jax.tree.leaves(single.shared)
    assert int(leaves[-1]) == int(jax.tree.leaves(two.opt_state)[-1])
    assert all(int(x) == 3 for x, s in zip(leaves, shared) if s)


def test_stack_and_unstack_round_trip():
  exp = experiment.build_experiment(tiny_config())
  states = [experiment.init_state(exp, seed) for seed in SEEDS]
  stacked = replicas.stack(states, exp.shared)
  for i, state in enumerate(states):
    assert_trees_equal(replicas.unstack(stacked, i, exp.shared).to_dict(), state.to_dict())
  with pytest.raises(ValueError, match='different steps'):
    replicas.stack([states[0], states[1].replace(step=states[1].step + 1)], exp.shared)


def test_num_seeds_is_validated():
  c = seeds_config()
  c.train.num_seeds = 0
  with pytest.raises(config_lib.ConfigError, match='train.num_seeds'):
    config_lib.validate(c)


def test_changing_num_seeds_on_resume_is_refused(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(seeds_config(train__num_steps=20), workdir)
  c = seeds_config(train__num_steps=20)
  c.train.num_seeds = 2
  with pytest.raises(workdir_lib.WorkdirError, match='train.num_seeds'):
    train.train_and_evaluate(c, workdir)


def test_sweep_aggregation_gives_one_row_per_replica(vmapped, tmp_path):
  workdir, _, metrics = vmapped
  os.symlink(workdir, tmp_path / 'lr=0.001')
  sweep.write_status(str(tmp_path), {'lr=0.001': {'overrides': {'optimizer.learning_rate': 1e-3}}})
  rows = sweep.collect(str(tmp_path))
  assert [r['point'] for r in rows] == [f'lr=0.001/seed_{s}' for s in SEEDS]
  assert [r['seed'] for r in rows] == list(SEEDS)
  assert [r['final_elbo'] for r in rows] == [metrics['per_seed'][str(s)]['elbo'] for s in SEEDS]
  [group] = sweep.group_over_seeds(rows, ['final_elbo'])
  assert group['num_seeds'] == len(SEEDS)
  assert group['final_elbo_mean'] == pytest.approx(metrics['elbo'])


def test_a_replica_stays_bit_identical_when_another_skips_a_step(monkeypatch, tmp_path):
  """Non-finite steps in some replicas only: the others' updates are unchanged."""
  def is_bad_step(step, key):
    # Step 5, in the replicas whose key for it has an even first word.
    word = jax.random.key_data(jax.random.fold_in(key, 7)).ravel()[0]
    return (step == 5) & (word % 2 == 0)

  real = objectives.make_loss_fn

  def poisoned(*args, **kwargs):
    loss_fn = real(*args, **kwargs)

    def loss(params, x, key, step, labels=None):
      value, metrics = loss_fn(params, x, key, step, labels)
      return jnp.where(is_bad_step(step, key), jnp.nan, value), metrics
    return loss

  monkeypatch.setattr(objectives, 'make_loss_fn', poisoned)
  overrides = dict(train__nan_policy='skip', train__max_consecutive_nonfinite=20,
                   train__num_steps=20)
  vmapped_dir = str(tmp_path / 'vmapped')
  train.train_and_evaluate(seeds_config(**overrides), vmapped_dir)
  skipped = []
  for seed in SEEDS:
    single_dir = str(tmp_path / f'single_{seed}')
    config = replicas.replica_config(seeds_config(**overrides), seed)
    train.train_and_evaluate(config, single_dir)
    replica = replicas.replica_workdir(vmapped_dir, seed)
    assert_trees_equal(restored_state(replica, config, 20)[1],
                       restored_state(single_dir, config, 20)[1])
    [record] = [r for r in vlog.read_metrics(replica, 'train') if r['step'] == 10]
    skipped.append(record['elbo'])
  # Not vacuous: some replicas skipped step 5 and others did not (the mean
  # ELBO over steps 1-10 differs from a clean run's in those that did).
  clean_dir = str(tmp_path / 'clean')
  monkeypatch.setattr(objectives, 'make_loss_fn', real)
  train.train_and_evaluate(seeds_config(train__num_steps=20), clean_dir)
  clean = [[r for r in vlog.read_metrics(replicas.replica_workdir(clean_dir, s), 'train')
            if r['step'] == 10][0]['elbo'] for s in SEEDS]
  assert 0 < sum(a != b for a, b in zip(skipped, clean)) < len(SEEDS)


def test_a_workdir_saved_before_a_field_existed_loads_and_resumes(tmp_path):
  """Fields added later (train.num_seeds, ...) take their defaults: old runs go on."""
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(train__num_steps=20), workdir)
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  saved = workdir_lib.read_json(path)
  del saved['train']['num_seeds'], saved['train']['exact_replicas']
  workdir_lib.write_json(path, saved)
  loaded = workdir_lib.load_config(workdir)
  assert loaded.train.num_seeds == 1 and loaded.train.exact_replicas
  assert workdir_lib.check_resume(workdir, tiny_config(train__num_steps=40)) == []
  train.train_and_evaluate(tiny_config(train__num_steps=40), workdir)


def test_tools_take_a_replica_and_point_from_the_run_to_its_replicas(vmapped):
  workdir, _, _ = vmapped
  with pytest.raises(workdir_lib.WorkdirError, match='seed_4'):
    experiment.load_trained(workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))  # Nothing created.
  _, params, step = experiment.load_trained(replicas.replica_workdir(workdir, SEEDS[1]))
  assert step == 40 and jax.tree.leaves(params)[0].ndim >= 1
