"""Optional experiment trackers behind the metric writer: Weights & Biases and MLflow.

`logging.trackers='wandb,mlflow'` sends every metric the writer logs (with its
step), the sample and reconstruction grids of every evaluation, the config's
fields and the final metrics to each named tracker, besides metrics.jsonl and
TensorBoard. Neither package is a requirement: `pip install -e .[trackers]`
installs both, and validation names the one that is missing.

Where the runs go is each tracker's own setting: W&B's login or `WANDB_MODE=
offline` (files under `WANDB_DIR`, default the workdir), MLflow's
`MLFLOW_TRACKING_URI` (a server, `sqlite:///path/mlflow.db`, ...). A run
resumed in its workdir continues the same tracker run (the ids are kept in
WORKDIR/trackers.json). A tracker that fails while training is dropped with
one warning: the run goes on, and metrics.jsonl keeps every number.
"""

import importlib.util
import json
import logging
import os
import sys
import time
import uuid

TRACKERS = ('wandb', 'mlflow')
MODULES = {'wandb': 'wandb', 'mlflow': 'mlflow'}
PIP_NAMES = {'wandb': 'wandb', 'mlflow': 'mlflow-skinny'}  # mlflow, the full one, works too.
IDS_FILE = 'trackers.json'


class TrackerError(RuntimeError):
  """A tracker that cannot start; the message says which and what to do."""


def parse(text) -> tuple:
  """'wandb, mlflow' -> ('wandb', 'mlflow'); '' -> ()."""
  return tuple(part.strip() for part in str(text or '').split(',') if part.strip())


def problem(text):
  """Why `logging.trackers` cannot work (unknown name, package missing), or None."""
  names = parse(text)
  for name in names:
    if name not in TRACKERS:
      return f'{name!r} is not one of {TRACKERS} (comma-separated, e.g. "wandb,mlflow")'
  if len(set(names)) != len(names):
    return f'{text!r} names a tracker twice'
  for name in names:
    if importlib.util.find_spec(MODULES[name]) is None:
      return (f'{name!r} needs the {MODULES[name]} package: pip install {PIP_NAMES[name]} '
              f'(or pip install -e .[trackers] in the clone)')
  return None


def _read_ids(workdir):
  try:
    with open(os.path.join(workdir, IDS_FILE), encoding='utf-8') as f:
      ids = json.load(f)
    return ids if isinstance(ids, dict) else {}
  except (OSError, ValueError):
    return {}


def _write_ids(workdir, ids):
  from vae_jax import logs as vlog  # pylint: disable=g-import-not-at-top
  vlog.write_json(os.path.join(workdir, IDS_FILE), ids)


class _Wandb:
  """One W&B run; metrics keyed '<split>/<name>' against the run's own 'step'."""

  name = 'wandb'

  def __init__(self, workdir, project, run_name, config, run_id):
    import wandb  # pylint: disable=g-import-not-at-top
    self._wandb = wandb
    self.run = wandb.init(
        project=project, name=run_name, id=run_id or uuid.uuid4().hex[:12], resume='allow',
        dir=os.environ.get('WANDB_DIR') or workdir, config=config, reinit='create_new',
        settings=wandb.Settings(console='off', silent=True))
    # Steps of a resumed run may repeat (the interval after the last checkpoint):
    # against a metric of our own rather than W&B's strictly increasing _step.
    self.run.define_metric('step')
    self.run.define_metric('*', step_metric='step')
    self.id = self.run.id

  def log(self, step, split, metrics):
    self.run.log({'step': step, **{f'{split}/{k}': v for k, v in metrics.items()}})

  def image(self, step, name, grid):
    self.run.log({'step': step, name: self._wandb.Image(grid)})

  def final(self, hparams, metrics, step):
    del hparams, step  # The config went in at the start.
    for key, value in metrics.items():
      self.run.summary[f'final/{key}'] = value

  def close(self):
    self.run.finish()


class _Mlflow:
  """One MLflow run through the client API (several replicas can log at once)."""

  name = 'mlflow'

  def __init__(self, workdir, project, run_name, config, run_id):
    del workdir
    logging.getLogger('mlflow').setLevel(logging.WARNING)  # No INFO lines on the console.
    uri = os.environ.get('MLFLOW_TRACKING_URI')
    if not uri:
      raise TrackerError('logging.trackers: mlflow needs MLFLOW_TRACKING_URI (a tracking '
                         'server http://HOST:5000, or sqlite:///path/mlflow.db)')
    from mlflow import entities  # pylint: disable=g-import-not-at-top
    from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
    self._entities = entities
    self.client = MlflowClient(tracking_uri=uri)
    self.run_id = None
    if run_id:
      try:
        self.run_id = self.client.get_run(run_id).info.run_id
      except Exception:  # pylint: disable=broad-except  # Deleted, or another server.
        self.run_id = None
    if self.run_id is None:
      experiment = self.client.get_experiment_by_name(project)
      experiment_id = (experiment.experiment_id if experiment is not None
                       else self.client.create_experiment(project))
      self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
      # Parameters cannot change in MLflow: those of the run's first launch.
      params = [entities.Param(k, json.dumps(v) if not isinstance(v, str) else v)
                for k, v in sorted(config.items())]
      for start in range(0, len(params), 100):
        self.client.log_batch(self.run_id, params=params[start:start + 100])
    else:
      self.client.update_run(self.run_id, status='RUNNING')
    self.id = self.run_id

  def _metrics(self, step, items):
    now = int(time.time() * 1000)
    metrics = [self._entities.Metric(k, float(v), now, int(step)) for k, v in items]
    self.client.log_batch(self.run_id, metrics=metrics)

  def log(self, step, split, metrics):
    self._metrics(step, ((f'{split}/{k}', v) for k, v in metrics.items()))

  def image(self, step, name, grid):
    self.client.log_image(self.run_id, grid, key=name, step=int(step))

  def final(self, hparams, metrics, step):
    del hparams
    self._metrics(step, ((f'final/{k}', v) for k, v in metrics.items()))

  def close(self):
    self.client.set_terminated(self.run_id)


_CLASSES = {'wandb': _Wandb, 'mlflow': _Mlflow}


class Trackers:
  """The named trackers of one run (or replica): started together, each dropped on failure."""

  def __init__(self, names, workdir, *, project, run_name, config):
    self._workdir = workdir
    self._active = []
    ids = _read_ids(workdir)
    for name in names:
      try:
        tracker = _CLASSES[name](workdir, project, run_name, config, ids.get(name))
      except Exception as e:  # pylint: disable=broad-except  # Login, network, server.
        self.close()  # The ones already started.
        if isinstance(e, TrackerError):
          raise
        raise TrackerError(f'logging.trackers: {name} could not start: {_brief(e)}') from e
      ids[name] = tracker.id
      self._active.append(tracker)
    if names:
      _write_ids(workdir, ids)

  def _each(self, method, *args):
    for tracker in list(self._active):
      try:
        getattr(tracker, method)(*args)
      except Exception as e:  # pylint: disable=broad-except
        self._active.remove(tracker)
        print(f'warning: logging.trackers: {tracker.name} failed ({_brief(e)}); training goes '
              'on without it, metrics.jsonl has every number', file=sys.stderr, flush=True)

  def log(self, step, split, metrics):
    self._each('log', int(step), split, metrics)

  def image(self, step, name, grid):
    self._each('image', int(step), name, grid)

  def final(self, hparams, metrics, step):
    self._each('final', hparams, metrics, int(step))

  def close(self):
    self._each('close')
    self._active = []


def _brief(error):
  from vae_jax import logs as vlog  # pylint: disable=g-import-not-at-top
  return vlog.brief(error)[:300]

