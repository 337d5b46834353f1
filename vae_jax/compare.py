"""Compares trained workdirs: a table of what differs and what they reached, and their curves.

  python -m vae_jax.compare runs/a runs/b runs/sweep/* [--metric=elbo] [--output=curves.png]

Any workdirs: ordinary runs, sweep points, seed replicas (`DIR/seed_N`); a
multi-seed workdir stands for its replicas. The table has one row per run: the
config fields in which the runs differ (the rest is the same for all), the
final held-out value of `--metric` (final_metrics.json), log p(x) and active
units from the `evaluate_workdir` JSON of the most images and samples when
there is one, the last step and the time spent training (each log interval's steps at
its logged rate: the gaps of a stopped and resumed run do not count).
`--output` gets the metric's curves, train and eval, against steps and against
epochs, one colour per run; titles and labels come from the runs. Nothing in
the workdirs is written.
"""

import os
import sys

from absl import app
from absl import flags

from vae_jax import config as config_lib
from vae_jax import logs as vlog
from vae_jax import workdir as workdir_lib

_METRIC = flags.DEFINE_string('metric', 'elbo', 'The metric of the table and the curves '
                              '(a key of the train and eval records: elbo, kl, recon, loss, ...).')
_OUTPUT = flags.DEFINE_string('output', '', 'PNG of the curves (none without it).')


def summarise(workdir, metric):
  """One run's row: its config (flattened), final metric, log p(x), units, step, wall time."""
  config = workdir_lib.load_config(workdir)  # WorkdirError for anything else.
  records = vlog.read_metrics(workdir)
  final_path = os.path.join(workdir, 'final_metrics.json')
  final = workdir_lib.read_json(final_path) if os.path.exists(final_path) else {}
  evaluation = workdir_lib.newest_evaluation(workdir)
  return {
      'run': workdir,
      'config': config_lib.flatten(config.to_dict()),
      'final': final.get(metric),
      'log_px': evaluation and evaluation['log_px'],
      'log_px_k': evaluation and evaluation.get('num_samples'),
      'split': evaluation and evaluation.get('split'),
      'active_units': evaluation and evaluation.get('active_units'),
      'step': max((r['step'] for r in records), default=None),
      'train_s': _training_seconds(records),
      'records': records,
  }


def _training_seconds(records):
  """The time spent in training steps: each log interval's steps at the rate it logged
  (so the gaps of a run stopped and resumed, and its evaluations, do not count)."""
  seconds, previous = 0.0, 0
  for record in sorted((r for r in records if r['split'] == 'train'), key=lambda r: r['step']):
    if record.get('steps_per_sec'):
      seconds += (record['step'] - previous) / record['steps_per_sec']
    previous = record['step']
  return seconds or None


def differing(rows):
  """The config fields whose values are not the same in every row."""
  return config_lib.varying(row['config'] for row in rows)


def _cell(value):
  if value is None:
    return '-'
  return f'{value:.2f}' if isinstance(value, float) else str(value)


def table(rows, metric):
  """The comparison as a Markdown table (fits a terminal and pastes into a README)."""
  fields = differing(rows)
  k = sorted({row['log_px_k'] for row in rows if row['log_px_k']})
  header = (['run'] + fields + [f'final {metric}', 'log p(x)' + (f' (K={k[0]})' if len(k) == 1
                                                                   else ''),
                                'active units', 'step', 'training time'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  for row in rows:
    ll = _cell(row['log_px'])
    if row['log_px'] is not None and len(k) != 1:
      ll += f' (K={row["log_px_k"]})'
    cells = ([row['run']] + [str(row['config'].get(f, '-')) for f in fields] +
             [_cell(row['final']), ll, _cell(row['active_units']), _cell(row['step']),
              vlog.format_duration(row['train_s']) if row['train_s'] is not None else '-'])
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(rows, metric, path):
  """`metric` against steps and against epochs, train dashed and eval solid, per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fields = differing(rows)
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for i, row in enumerate(rows):
    label = os.path.basename(os.path.normpath(row['run']))
    if fields:
      label += ' (' + ', '.join(f'{f.split(".")[-1]}={row["config"].get(f)}' for f in fields) + ')'
    colour = f'C{i % 10}'
    for split, style in (('train', '--'), ('eval', '-')):
      points = [r for r in row['records'] if r['split'] == split and metric in r]
      if not points:
        continue
      steps = [r['step'] for r in points]
      values = [r[metric] for r in points]
      axes[0].plot(steps, values, style, color=colour, label=f'{label}, {split}')
      epochs = [r['epoch'] for r in points if 'epoch' in r]
      if len(epochs) == len(points):
        axes[1].plot(epochs, values, style, color=colour, label=f'{label}, {split}')
  datasets = sorted({str(row['config'].get('data.name')) for row in rows})
  for ax, x in zip(axes, ('step', 'epoch')):
    ax.set_xlabel(x)
    ax.set_ylabel(f'{metric} (nats)' if metric in ('elbo', 'kl', 'recon', 'loss') else metric)
    ax.grid(alpha=0.3)
  axes[0].set_title(f'{metric} on {", ".join(datasets)}, {len(rows)} runs')
  axes[1].set_title('against epochs' if axes[1].lines else 'against epochs (not logged)')
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    print('error: name at least one workdir: python -m vae_jax.compare DIR [DIR ...]',
          file=sys.stderr, flush=True)
    sys.exit(1)
  try:
    rows = [summarise(w, _METRIC.value) for w in workdir_lib.runs_of(workdirs)]
    if _OUTPUT.value:
      workdir_lib.check_writable(_OUTPUT.value)
  except (workdir_lib.WorkdirError, workdir_lib.FlagError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  known = set().union(*({k for r in row['records'] for k in r} for row in rows))
  if _METRIC.value not in known and not any(row['final'] is not None for row in rows):
    print(f'error: --metric: no record of these runs has {_METRIC.value!r}; they have '
          f'{", ".join(sorted(known - {"step", "split", "time"})) or "no records"}',
          file=sys.stderr, flush=True)
    sys.exit(1)
  print(table(rows, _METRIC.value), flush=True)
  if _OUTPUT.value:
    plot(rows, _METRIC.value, _OUTPUT.value)
    vlog.info(f'wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
