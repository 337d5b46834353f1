"""Collects a sweep directory into results.csv, results_over_seeds.csv and plots.

  python scripts/aggregate.py --sweep_dir=runs/beta [--x=objective.beta]

Writes <sweep_dir>/results.csv (one row per finished point: swept fields, final
and best metrics), results_over_seeds.csv (mean and std over seeds),
learning_curves.png (held-out ELBO against step, one line per point) and, with
--x, final_vs_<x>.png (mean +- std over seeds of the final ELBO terms). Both
files are sorted by the swept values, numbers as numbers.

The '<metric>_std' columns of results_over_seeds.csv and the error bars are the
sample standard deviation over seeds (ddof=1, n - 1 in the denominator; 0.0
where a setting has a single seed).
"""

import csv
import os
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vae_jax import logging as vlog  # pylint: disable=g-import-not-at-top
from vae_jax import sweep  # pylint: disable=g-import-not-at-top

_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'A directory filled by scripts/sweep.py.')
_X = flags.DEFINE_string('x', None, 'A swept field to put on the x axis of the summary plot.')
flags.mark_flag_as_required('sweep_dir')


def write_csv(path, rows):
  fields = []
  for row in rows:
    fields += [k for k in row if k not in fields]
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  print(f'wrote {path} ({len(rows)} rows)')


def plot_learning_curves(sweep_dir, rows, path):
  fig, ax = plt.subplots(figsize=(8, 4.5))
  colours = plt.get_cmap('tab10' if len(rows) <= 10 else 'tab20')
  for i, row in enumerate(rows):
    evals = vlog.read_metrics(os.path.join(sweep_dir, row['point']), 'eval')
    evals = [r for r in evals if 'elbo' in r]
    ax.plot([r['step'] for r in evals], [r['elbo'] for r in evals], lw=1, marker='.',
            color=colours(i % colours.N), label=row['point'])
  ax.set(xlabel='step', ylabel='held-out ELBO (nats)', title=os.path.basename(sweep_dir))
  if len(rows) <= 20:
    ax.legend(fontsize=6, loc='center left', bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f'wrote {path}')


def plot_summary(groups, x, path):
  groups = sorted((g for g in groups if x in g), key=lambda g: float(g[x]))
  if not groups:
    sys.exit(f'--x={x}: no point sets that field (seeds are averaged over, not plotted)')
  xs = [float(g[x]) for g in groups]
  fig, ax = plt.subplots(figsize=(6, 4))
  for metric in ('final_elbo', 'final_recon', 'final_kl'):
    if f'{metric}_mean' in groups[0]:
      means = [g[f'{metric}_mean'] for g in groups]
      stds = [g[f'{metric}_std'] for g in groups]
      ax.errorbar(xs, means, yerr=stds, marker='o', capsize=3, label=metric[len('final_'):])
  ax.set(xscale='log', xlabel=x, ylabel='nats (mean ± sample std over seeds)')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f'wrote {path}')


def main(argv):
  del argv
  sweep_dir = os.path.abspath(_SWEEP_DIR.value)
  rows = sweep.collect(sweep_dir)
  if not rows:
    sys.exit(f'no finished points in {sweep_dir}')
  write_csv(os.path.join(sweep_dir, 'results.csv'), rows)
  groups = sweep.group_over_seeds(rows, ['final_elbo', 'final_recon', 'final_kl', 'best_elbo'])
  write_csv(os.path.join(sweep_dir, 'results_over_seeds.csv'), groups)
  print('  (<metric>_std: sample std over seeds, ddof=1)')
  plot_learning_curves(sweep_dir, rows, os.path.join(sweep_dir, 'learning_curves.png'))
  if _X.value:
    plot_summary(groups, _X.value, os.path.join(sweep_dir, f'final_vs_{_X.value}.png'))


if __name__ == '__main__':
  app.run(main)
