"""Weights & Biases (offline) and MLflow (a local file store) behind the metric writer.

The packages are optional (requirements-trackers.txt); without them these tests
skip, and CI installs both.
"""

import glob
import importlib.util
import json
import os
import struct

import pytest

from test_train import tiny_config
from vae_jax import config as config_lib
from vae_jax import logs as vlog
from vae_jax import train
from vae_jax import trackers

HAVE_WANDB = importlib.util.find_spec('wandb') is not None
HAVE_MLFLOW = importlib.util.find_spec('mlflow') is not None


@pytest.mark.parametrize('value,message', [
    ('tensorboard', "'tensorboard' is not one of ('wandb', 'mlflow')"),
    ('wandb,wandb', 'names a tracker twice'),
])
def test_bad_tracker_names_are_refused_naming_the_field(value, message):
  with pytest.raises(config_lib.ConfigError, match='config.logging.trackers: ') as e:
    config_lib.validate(tiny_config(logging__trackers=value))
  assert message in str(e.value)


def test_a_missing_tracker_package_is_named_with_its_install_command(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'mlflow' else real(name, *a))
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(tiny_config(logging__trackers='mlflow'))
  assert str(e.value) == ("config.logging.trackers: 'mlflow' needs the mlflow package: pip "
                          "install mlflow-skinny (or pip install -e .[trackers] in the clone)")


def _wandb_records(path):
  """The records of an offline .wandb file (LevelDB log format: 32 KiB blocks of
  7-byte-headed chunks after a 7-byte file header), as protobufs."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    raw = f.read()
  assert raw[:4] == b':W&B'
  pos, pending, block = 7, b'', 32768
  while pos + 7 <= len(raw):
    if block - pos % block < 7:
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack('<IHB', raw[pos:pos + 7])
    data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
    if kind in (1, 4):  # FULL, LAST.
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending + data if kind == 4 else data)
      pending = b''
      yield record
    elif kind in (2, 3):  # FIRST, MIDDLE.
      pending += data


def _wandb_run(workdir):
  """(run ids, history rows {key: value}, final summary, config keys) of the offline runs."""
  ids, history, summary, config = set(), [], {}, set()
  for path in sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*', 'run-*.wandb'))):
    for record in _wandb_records(path):
      kind = record.WhichOneof('record_type')
      if kind == 'run':
        ids.add(record.run.run_id)
        config |= {item.key for item in record.run.config.update}
      elif kind == 'history':
        history.append({item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item})
      elif kind == 'summary':
        summary.update({item.key: json.loads(item.value_json) for item in record.summary.update
                        if item.key.startswith('final/')})
  return ids, history, summary, config


@pytest.mark.skipif(not (HAVE_WANDB and HAVE_MLFLOW), reason='wandb and mlflow not installed')
def test_wandb_and_mlflow_get_metrics_pictures_config_and_final_and_resume(tmp_path,
                                                                          monkeypatch):
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.delenv('WANDB_DIR', raising=False)
  uri = f'file:{tmp_path}/mlruns'
  monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
  monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')  # MLflow 3 keeps it for local use.
  workdir = str(tmp_path / 'run')
  config = tiny_config(logging__trackers='wandb,mlflow', logging__project='trackers_test',
                       train__num_steps=20)
  first = train.train_and_evaluate(config, workdir)
  ids = json.loads(open(os.path.join(workdir, trackers.IDS_FILE)).read())
  assert sorted(ids) == ['mlflow', 'wandb']
  # Resumed with a longer run: the same tracker runs continue.
  config.train.num_steps = 40
  final = train.train_and_evaluate(config, workdir)
  assert json.loads(open(os.path.join(workdir, trackers.IDS_FILE)).read()) == ids
  train_steps = [r['step'] for r in vlog.read_metrics(workdir, 'train')]
  assert train_steps == [10, 20, 30, 40]

  wandb_ids, history, summary, wandb_config = _wandb_run(workdir)
  assert wandb_ids == {ids['wandb']}
  elbo = [(row['step'], row['train/elbo']) for row in history if 'train/elbo' in row]
  assert elbo == [(r['step'], pytest.approx(r['elbo'])) for r in vlog.read_metrics(workdir, 'train')]
  assert [row['step'] for row in history if row.get('samples/_type') == 'image-file'] == [20, 40]
  assert [row['step'] for row in history if 'eval/elbo' in row] == [20, 40]
  assert summary['final/elbo'] == pytest.approx(final['elbo'])
  assert 'model.latent_dim' in wandb_config

  client = MlflowClient(uri)
  run = client.get_run(ids['mlflow'])
  assert run.info.run_name == 'run' and run.info.status == 'FINISHED'
  assert run.data.params['model.latent_dim'] == '4'
  assert run.data.params['train.num_steps'] == '20'  # Its first launch's: MLflow's are fixed.
  history = client.get_metric_history(ids['mlflow'], 'train/elbo')
  assert [m.step for m in history] == train_steps
  assert [m.step for m in client.get_metric_history(ids['mlflow'], 'final/elbo')] == [20, 40]
  assert client.get_metric_history(ids['mlflow'], 'final/elbo')[-1].value == pytest.approx(
      final['elbo'])
  assert first['elbo'] != final['elbo']
  images = [f.path for f in client.list_artifacts(ids['mlflow'], 'images')]
  assert sum('samples' in p and p.endswith('.png') for p in images) == 2, images


@pytest.mark.skipif(not HAVE_MLFLOW, reason='mlflow not installed')
def test_a_tracker_that_fails_is_dropped_with_one_warning_and_training_goes_on(
    tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('MLFLOW_TRACKING_URI', f'file:{tmp_path}/mlruns')
  monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')
  calls = []

  def broken(self, step, split, metrics):
    del self, split, metrics
    calls.append(step)
    raise ConnectionError('tracking server went away\nwith a second line')

  monkeypatch.setattr(trackers._Mlflow, 'log', broken)  # pylint: disable=protected-access
  workdir = str(tmp_path / 'run')
  metrics = train.train_and_evaluate(tiny_config(logging__trackers='mlflow'), workdir)
  err = capsys.readouterr().err
  assert err.count('warning: logging.trackers: mlflow failed') == 1, err
  assert '(ConnectionError: tracking server went away); training goes on without it' in err
  assert calls == [10]
  assert [r['step'] for r in vlog.read_metrics(workdir, 'train')] == [10, 20, 30, 40]
  assert metrics['elbo'] < 0


@pytest.mark.skipif(not HAVE_MLFLOW, reason='mlflow not installed')
def test_mlflow_without_a_tracking_uri_stops_before_training_saying_what_to_set(
    tmp_path, monkeypatch):
  monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
  workdir = tmp_path / 'run'
  with pytest.raises(trackers.TrackerError, match='mlflow needs MLFLOW_TRACKING_URI'):
    train.train_and_evaluate(tiny_config(logging__trackers='mlflow'), str(workdir))
  assert not (workdir / 'checkpoints').exists() or not os.listdir(workdir / 'checkpoints')
