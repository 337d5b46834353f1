"""Sweeps: plain-Python lists of config overrides, run one workdir per point.

A sweep file sits beside its experiment and defines

  BASE_CONFIG = 'configs/binarized_mnist.py'
  def get_sweep():
    return sweep.product(sweep.grid({'objective.beta': [0.1, 1.0, 10.0]}),
                         sweep.grid({'seed': [0, 1, 2]}))

`scripts/sweep.py` expands it and runs each point as its own
`python -m vae_jax.main` process (resumable: finished points are skipped,
interrupted ones resume from their checkpoints); `scripts/aggregate.py` collects
the workdirs (a sweep's, or any runs') into one CSV and plots.
"""

import hashlib
import importlib.util
import itertools
import json
import os
import random
import re
import sys

FINAL_METRICS = 'final_metrics.json'
# The fields of an evaluate_workdir result a row carries, as eval_<field>.
EVALUATION_COLUMNS = ('split', 'num_samples', 'num_images', 'step', 'log_px', 'bits_per_dim',
                      'elbo', 'active_units')


def grid(axes: dict) -> list:
  """Cartesian product of {field: [values]} -> [{field: value, ...}, ...]."""
  names = list(axes)
  return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def zipped(axes: dict) -> list:
  """Values taken together: {a: [1, 2], b: [3, 4]} -> [{a: 1, b: 3}, {a: 2, b: 4}]."""
  lengths = {len(v) for v in axes.values()}
  if len(lengths) != 1:
    raise ValueError(f'zipped axes need equal lengths, got { {k: len(v) for k, v in axes.items()} }')
  return [dict(zip(axes, values)) for values in zip(*axes.values())]


def random_choices(axes: dict, num_points: int, seed: int = 0) -> list:
  """`num_points` points, each field drawn uniformly from its list (reproducible)."""
  rng = random.Random(seed)
  return [{k: rng.choice(list(v)) for k, v in axes.items()} for _ in range(num_points)]


def product(*sweeps) -> list:
  """Every combination of points of several sweeps, merged left to right."""
  points = [{}]
  for sweep_points in sweeps:
    points = [dict(a, **b) for a in points for b in sweep_points]
  return points


def point_names(points: list) -> list:
  """Readable, filesystem-safe workdir names from the fields that vary.

  [{'objective.beta': 0.1, 'seed': 0, 'train.batch_size': 100}, ...] ->
  ['objective.beta=0.1,seed=0', ...]: fields every point shares are left out;
  a name longer than 120 characters keeps its start and gets a hash suffix.
  """
  fields = []
  for p in points:
    fields += [k for k in p if k not in fields]
  varying = [k for k in fields if len({repr(p.get(k)) for p in points}) > 1]
  names = []
  for p in points:
    name = ','.join(f'{k}={_format(p[k])}' for k in varying if k in p) or 'default'
    name = re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)
    if len(name) > 120:
      digest = hashlib.sha1(name.encode()).hexdigest()[:10]
      name = f'{name[:100]}-{digest}'
    names.append(name)
  return names


def _format(value):
  if isinstance(value, (tuple, list)):
    return 'x'.join(_format(v) for v in value)
  return f'{value:g}' if isinstance(value, float) else str(value)


def override_flags(overrides: dict) -> list:
  """--config.<field>=<value> flags (tuples as '(a,b)', which config_flags parses)."""
  flags = []
  for field, value in overrides.items():
    if isinstance(value, (tuple, list)):
      value = '(' + ','.join(str(v) for v in value) + (',)' if len(value) == 1 else ')')
    flags.append(f'--config.{field}={value}')
  return flags


def load_sweep(path):
  """(base config path, {workdir name: overrides}) from a sweep file."""
  spec = importlib.util.spec_from_file_location('vae_jax_sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  points = module.get_sweep()
  names = point_names(points)
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'{path}: points repeat: {duplicates}')
  return module.BASE_CONFIG, dict(zip(names, points))


def command(base_config, workdir, overrides, python=sys.executable):
  return [python, '-m', 'vae_jax.main', f'--config={base_config}', f'--workdir={workdir}',
          *override_flags(overrides)]


class PointJob:
  """One point's training as a submitit job: its command, output appended to its log.

  A picklable callable (submitit runs it on the cluster node). SIGTERM (preemption,
  scancel) and SIGUSR2 (submitit's warning before the time limit) reach the
  training process as SIGTERM, so it saves a checkpoint and stops; running the
  sweep again resumes it. Returns the training process's exit status.
  """

  def __init__(self, command, log_path, cwd):
    self.command, self.log_path, self.cwd = list(command), log_path, cwd

  def __call__(self):
    import signal  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    with open(self.log_path, 'a', encoding='utf-8') as log:
      proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
      forward = lambda signum, frame: proc.send_signal(signal.SIGTERM)
      for signum in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, forward)
      return proc.wait()


def outcome(returncode, workdir, log_path) -> str:
  """'done', 'interrupted' (stopped by a signal after saving) or 'failed (...)'."""
  if returncode == 0 and is_finished(workdir):
    return 'done'
  # 130: Ctrl-C at the terminal reaches the points too; they save and stop.
  if returncode in (0, 130):
    return 'interrupted'
  return f'failed (exit {returncode}, see {log_path})'


def is_finished(workdir) -> bool:
  return os.path.exists(os.path.join(workdir, FINAL_METRICS))


def read_status(sweep_dir) -> dict:
  path = os.path.join(sweep_dir, 'status.json')
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def write_status(sweep_dir, status):
  from vae_jax import logs as vlog  # pylint: disable=g-import-not-at-top
  vlog.write_json(os.path.join(sweep_dir, 'status.json'), status)


def collect(sweep_dir) -> list:
  """One row per finished run: swept fields, final metrics, best eval ELBO.

  A point trained with train.num_seeds = S > 1 gives S rows, one per replica
  (point '<name>/seed_<seed>', field 'seed'), like S points with one seed each.
  Rows are ordered by their swept values, numbers as numbers (beta 2 before 10).
  """
  status = read_status(sweep_dir)
  rows = []
  for name in sorted(status, key=lambda n: (_natural_key(status[n]['overrides'].items()), n)):
    workdir = os.path.join(sweep_dir, name)
    if not is_finished(workdir):
      continue
    final = _read_final(workdir)
    base = {'point': name, **status[name]['overrides']}
    if 'per_seed' not in final:
      rows.append(_row(workdir, base, final))
      continue
    for seed in sorted(final['per_seed'], key=int):
      replica = f'{name}/seed_{seed}'
      replica_dir = os.path.join(sweep_dir, replica)
      rows.append(_row(replica_dir, dict(base, point=replica, seed=int(seed)),
                       _read_final(replica_dir)))
  return rows


def collect_workdirs(workdirs) -> list:
  """One row per finished run among any workdirs (ordinary runs, sweep points, replicas).

  Like `collect`, with the config fields in which the runs differ standing for
  the swept ones; a multi-seed workdir gives one row per replica. 'point' is
  the workdir's path as given (a replica's: the path of its seed_* directory).
  """
  from vae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  runs = [r for r in workdir_lib.runs_of(workdirs) if is_finished(r)]
  configs = {r: config_lib.flatten(workdir_lib.load_config(r).to_dict()) for r in runs}
  differing = config_lib.varying(configs.values())
  rows = [_row(r, {'point': r, **{n: configs[r].get(n) for n in differing}}, _read_final(r))
          for r in runs]
  return sorted(rows, key=lambda row: (_natural_key((n, row[n]) for n in differing), row['point']))


def _read_final(workdir):
  with open(os.path.join(workdir, FINAL_METRICS), encoding='utf-8') as f:
    return json.load(f)


def _row(workdir, row, final):
  from vae_jax import logs as vlog  # pylint: disable=g-import-not-at-top
  from vae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  row = dict(row)
  row.update({f'final_{k}': v for k, v in final.items() if not isinstance(v, (list, dict))})
  evals = [r for r in vlog.read_metrics(workdir, 'eval') if 'elbo' in r]
  if evals:
    best = max(evals, key=lambda r: r['elbo'])
    row.update(best_elbo=best['elbo'], best_step=best['step'])
  evaluation = workdir_lib.newest_evaluation(workdir)
  if evaluation:  # What evaluate_workdir measured: log p(x) with K samples, active units.
    row.update({f'eval_{k}': evaluation[k] for k in EVALUATION_COLUMNS if k in evaluation})
  return row


def _natural_key(items):
  """Sort key of (field, value) pairs that compares numbers as numbers.

  Values compare as floats where they parse as one ('2.0' < '10.0', 1 < 2.5), as
  strings otherwise ('[400]', 'relu'); a number sorts before a string.
  """
  key = []
  for field, value in items:
    try:
      key.append((field, 0, float(value), ''))
    except (TypeError, ValueError):
      key.append((field, 1, 0.0, str(value)))
  return tuple(key)


def group_over_seeds(rows, metrics) -> list:
  """Mean and sample std of `metrics` over seeds, one row per setting of the other fields.

  '<metric>_std' is the sample standard deviation over seeds (ddof=1, n - 1 in
  the denominator; 0.0 for a single seed), the usual error bar for a mean over
  a few seeds. Groups are ordered by their field values, numbers as numbers.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  groups = {}
  for row in rows:
    key = tuple((k, str(v)) for k, v in row.items()
                if k not in ('point', 'seed', 'best_step')
                and not k.startswith(('final_', 'best_', 'eval_')))
    groups.setdefault(key, []).append(row)
  out = []
  for key in sorted(groups, key=_natural_key):
    members = groups[key]
    summary = dict(key, num_seeds=len(members))
    for m in metrics:
      values = np.array([r[m] for r in members if m in r], dtype=float)
      if len(values):
        summary[f'{m}_mean'] = float(values.mean())
        summary[f'{m}_std'] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(summary)
  return out
