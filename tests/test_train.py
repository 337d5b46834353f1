"""End-to-end training on a shrunken config: outputs, resume, determinism, NaN."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import experiment
from vae_jax import logs as vlog
from vae_jax import objectives
from vae_jax import train
from vae_jax import workdir as workdir_lib


def tiny_config(**overrides):
  c = config_lib.default_config()
  c.data.name = 'embedded_mnist'
  c.model.hidden = (32,)
  c.model.latent_dim = 4
  c.train.batch_size = 50
  c.train.num_steps = 40
  c.train.steps_per_call = 5
  c.train.log_every_steps = 10
  c.train.eval_every_steps = 20
  c.train.checkpoint_every_steps = 20
  c.eval.batch_size = 100
  c.sampling.num_samples = 4
  c.sampling.num_reconstructions = 4
  c.logging.tensorboard = True
  for field, value in overrides.items():
    section, name = field.split('__')
    c[section][name] = value
  return c


def restored_state(workdir, config, step=None):
  """(step, state dict, metadata) of a workdir's checkpoint, restored onto the state's shapes."""
  exp = experiment.build_experiment(config)
  target = experiment.abstract_state(exp, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  try:
    return ckpt.restore(target.to_dict(), step=step)
  finally:
    ckpt.close()


def assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def baseline(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('baseline'))
  config = tiny_config()
  metrics = train.train_and_evaluate(config, workdir)
  return workdir, config, metrics


def test_workdir_has_everything(baseline):
  workdir, _, metrics = baseline
  for name in ('config.json', 'versions.json', 'metrics.jsonl', 'samples.png',
               'reconstructions.png', 'final_metrics.json', 'checkpoints', 'tensorboard'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  assert np.isfinite(metrics['elbo']) and metrics['elbo'] < 0
  np.testing.assert_allclose(metrics['elbo'], metrics['recon'] - metrics['kl'], rtol=1e-4)
  saved = workdir_lib.load_config(workdir)
  assert saved.model.hidden == (32,) and saved.train.num_steps == 40


def test_loss_goes_down(baseline):
  workdir, _, _ = baseline
  records = vlog.read_metrics(workdir, 'train')
  assert [r['step'] for r in records] == [10, 20, 30, 40]
  assert records[-1]['loss'] < records[0]['loss'] - 20  # nats; from ~540 at init.
  assert {r['learning_rate'] for r in records} == {1e-3}  # Logged every interval,
  assert {r['kl_weight'] for r in records} == {1.0}  # as is the ELBO's KL weight,
  assert [r['epoch'] for r in records] == [s / 90 for s in (10, 20, 30, 40)]  # and the epoch.
  assert [r['epoch'] for r in vlog.read_metrics(workdir, 'eval')] == [20 / 90, 40 / 90]


def test_resume_is_bit_identical(baseline, tmp_path):
  workdir, config, _ = baseline
  interrupted = str(tmp_path / 'interrupted')
  train.train_and_evaluate(tiny_config(train__num_steps=20), interrupted)
  train.train_and_evaluate(tiny_config(), interrupted)  # Resumes at 20, runs to 40.
  step_a, state_a, _ = restored_state(workdir, config)
  step_b, state_b, _ = restored_state(interrupted, config)
  assert step_a == step_b == 40
  assert_trees_equal(state_a, state_b)
  # The metrics file holds each logged step once per run segment, in order.
  assert [r['step'] for r in vlog.read_metrics(interrupted, 'train')] == [10, 20, 30, 40]


def test_same_seed_same_params_other_seed_differs(baseline, tmp_path):
  workdir, config, _ = baseline
  _, state_a, _ = restored_state(workdir, config, step=20)
  again = str(tmp_path / 'again')
  train.train_and_evaluate(tiny_config(train__num_steps=20), again)
  _, state_b, _ = restored_state(again, config, step=20)
  assert_trees_equal(state_a['params'], state_b['params'])
  other = str(tmp_path / 'other')
  c = tiny_config(train__num_steps=20)
  c.seed = 1
  train.train_and_evaluate(c, other)
  _, state_c, _ = restored_state(other, config, step=20)
  assert not np.array_equal(state_a['params']['decoder']['Dense_1']['bias'],
                            state_c['params']['decoder']['Dense_1']['bias'])


def test_resume_with_changed_config_is_refused(baseline):
  workdir, _, _ = baseline
  with pytest.raises(workdir_lib.WorkdirError, match=r'model.latent_dim: 4 -> 8'):
    train.train_and_evaluate(tiny_config(model__latent_dim=8), workdir)
  # Allowed explicitly, a shape change still cannot load silently.
  with pytest.raises(checkpoint.CheckpointError):
    train.train_and_evaluate(
        tiny_config(model__latent_dim=8, resume__allow_config_change=True), workdir)


def poison_loss(monkeypatch, is_bad_step, poison=float('nan')):
  """Makes the loss and every gradient `poison` (NaN or inf) where is_bad_step(step) holds.

  is_bad_step maps the traced step to a traced bool. The loss is multiplied by
  `poison` (the loss is positive, so inf stays +inf), so the gradients are
  non-finite too: an update that were applied would make the params non-finite.
  """
  real = objectives.make_loss_fn

  def poisoned(*args, **kwargs):
    loss_fn = real(*args, **kwargs)

    def loss(params, x, key, step, labels=None):
      value, metrics = loss_fn(params, x, key, step, labels)
      return value * jax.numpy.where(is_bad_step(step), poison, 1.0), metrics
    return loss

  monkeypatch.setattr(objectives, 'make_loss_fn', poisoned)


def assert_all_finite(tree):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    assert np.isfinite(np.asarray(leaf)).all(), jax.tree_util.keystr(path)


NON_FINITE = pytest.mark.parametrize('poison', [float('nan'), float('inf')], ids=['nan', 'inf'])


@NON_FINITE
def test_nan_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path, monkeypatch, poison):
  poison_loss(monkeypatch, lambda step: step >= 27, poison)
  workdir = str(tmp_path / 'nan')
  with pytest.raises(train.NonFiniteError, match='at step 27'):
    train.train_and_evaluate(tiny_config(), workdir)
  step, state, _ = restored_state(workdir, tiny_config())
  assert step == 20
  assert_all_finite(state)


@NON_FINITE
def test_skip_policy_stops_after_bounded_run(tmp_path, monkeypatch, poison):
  # Step 3 is skipped alone; 12..16 are five in a row. The checkpoint at step 10
  # comes after the skipped step 3: its params are finite only if that update
  # (with non-finite gradients) was really skipped.
  poison_loss(monkeypatch, lambda step: (step == 3) | (step >= 12), poison)
  config = tiny_config(train__nan_policy='skip', train__max_consecutive_nonfinite=5,
                       train__checkpoint_every_steps=10)
  workdir = str(tmp_path / 'skip')
  with pytest.raises(train.NonFiniteError, match='5 non-finite steps in a row, the last at step 16'):
    train.train_and_evaluate(config, workdir)
  step, state, _ = restored_state(workdir, config)
  assert step == 10
  assert_all_finite(state)


def test_tfds_dataset_through_mock_data(tmp_path):
  config = tiny_config(data__name='mnist', train__num_steps=10, train__log_every_steps=5,
                       train__eval_every_steps=5, train__checkpoint_every_steps=10,
                       data__eval_split='test', data__download=False)
  config.train.batch_size = 4
  config.eval.batch_size = 4
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    metrics = train.train_and_evaluate(config, str(tmp_path / 'mock'))
  assert np.isfinite(metrics['elbo'])
  with open(os.path.join(tmp_path, 'mock', 'final_metrics.json')) as f:
    assert json.load(f)['step'] == 10


def test_read_metrics_keeps_last_record_per_step_and_skips_a_cut_line(tmp_path):
  lines = [{'step': 10, 'split': 'train', 'loss': 3.0}, {'step': 20, 'split': 'train', 'loss': 2.0},
           {'step': 20, 'split': 'eval', 'elbo': -1.0}, {'step': 20, 'split': 'train', 'loss': 1.5}]
  text = ''.join(json.dumps(r) + '\n' for r in lines) + '{"step": 30, "spl'
  (tmp_path / vlog.METRICS_FILE).write_text(text)
  assert [(r['step'], r['loss']) for r in vlog.read_metrics(str(tmp_path), 'train')] == [(10, 3.0), (20, 1.5)]
  assert len(vlog.read_metrics(str(tmp_path))) == 3


def test_ctrl_c_asks_to_save_and_a_second_one_stops_at_once():
  import signal  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGINT)
  with train._Preemption() as preemption:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested and not preemption.interrupted and preemption.name == 'SIGTERM'
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.interrupted and preemption.name == 'Ctrl-C'
    with pytest.raises(KeyboardInterrupt, match='a second Ctrl-C: stopped without saving'):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


def test_a_new_length_under_a_length_shaped_schedule_is_refused_or_stated(tmp_path, capsys):
  import math  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  cosine = dict(optimizer__schedule='cosine', optimizer__learning_rate=1e-3)
  train.train_and_evaluate(tiny_config(train__num_steps=20, **cosine), workdir)
  logged = {r['step']: r['learning_rate'] for r in vlog.read_metrics(workdir, 'train')}
  assert logged == pytest.approx({10: 1e-3 * 0.5 * (1 + math.cos(math.pi * 10 / 20)),
                                  20: 0.0}, abs=1e-9)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"optimizer.schedule 'cosine' is shaped by the run's length: 20 "
                           r'steps when it started, 40 now.*allow_config_change'):
    train.train_and_evaluate(tiny_config(train__num_steps=40, **cosine), workdir)
  capsys.readouterr()
  train.train_and_evaluate(
      tiny_config(train__num_steps=40, resume__allow_config_change=True, **cosine), workdir)
  assert 'Resuming on a new learning-rate curve' in capsys.readouterr().out
  logged = {r['step']: r['learning_rate'] for r in vlog.read_metrics(workdir, 'train')}
  assert logged[30] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 30 / 40)))
  # A constant rate does not depend on the length: test_resume_is_bit_identical and the
  # fault-tolerance scenarios resume constant-rate runs under new lengths.


def _tensorboard(workdir):
  """TensorBoard's own reader over the run's event files."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(workdir, 'tensorboard'), size_guidance={event_accumulator.IMAGES: 0})
  accumulator.Reload()
  return accumulator


def test_tensorboard_has_curves_pictures_over_time_and_hparams_without_duplicates(tmp_path,
                                                                                   capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config(eval__num_importance_samples=5)
  metrics = train.train_and_evaluate(config, workdir)
  assert f'log p(x) {metrics["log_px"]:.2f} nats (K=5)' in capsys.readouterr().out
  tb = _tensorboard(workdir)
  scalars = tb.Tags()['scalars']
  for tag in ('train/loss', 'train/learning_rate', 'train/kl_weight', 'eval/elbo', 'eval/log_px'):
    assert tag in scalars, (tag, scalars)
  assert not [t for t in scalars if t.endswith(('num_samples', 'num_images'))], scalars
  assert [e.step for e in tb.Scalars('eval/elbo')] == [20, 40]
  # The grids at every evaluation, as large as their PNGs.
  for name in ('samples', 'reconstructions'):
    events = tb.Images(name)
    assert [e.step for e in events] == [20, 40], name
    with Image.open(os.path.join(workdir, f'{name}.png')) as png:
      assert (events[-1].width, events[-1].height) == png.size, name
  # The HParams dashboard: the config's fields and the final metrics.
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  plugin = plugin_event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard'))
  plugin.Reload()
  start = plugin_data_pb2.HParamsPluginData.FromString(
      plugin.PluginTagToContent('hparams')['_hparams_/session_start_info']).session_start_info
  assert start.hparams['model.latent_dim'].number_value == 4
  assert start.hparams['data.name'].string_value == 'embedded_mnist'
  assert [e.step for e in tb.Scalars('hparam/elbo')] == [40]
  assert tb.Scalars('hparam/elbo')[0].value == pytest.approx(metrics['elbo'], rel=1e-6)
  # One writer, one events file (a second one would be another run to TensorBoard).
  assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) == 1
  # Launched again when finished, the run reports without adding a second final point.
  capsys.readouterr()
  again = train.train_and_evaluate(config, workdir)
  assert again['elbo'] == metrics['elbo']
  assert 'Final held-out ELBO' in capsys.readouterr().out
  tb = _tensorboard(workdir)
  assert [e.step for e in tb.Scalars('eval/elbo')] == [20, 40]
  assert [e.step for e in tb.Images('samples')] == [20, 40]
  assert [r['step'] for r in vlog.read_metrics(workdir, 'eval')] == [20, 40]
  assert sum(1 for _ in open(os.path.join(workdir, 'metrics.jsonl'))) == 4 + 2 + 1  # No repeats.
