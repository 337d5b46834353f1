"""Collects a sweep directory, or any workdirs, into results.csv, results_over_seeds.csv and plots.

  python scripts/aggregate.py --sweep_dir=runs/beta [--x=objective.beta]
  python scripts/aggregate.py --out_dir=results runs/a runs/b runs/multi_seed [--x=...]

Writes <sweep_dir> (or <out_dir>)/results.csv (one row per finished run: the
swept fields, or for plain workdirs the config fields in which they differ;
final and best metrics; and, where evaluate_workdir has run, its log p(x),
bits/dim and active units as eval_* columns, from the JSON of the most images
and samples), results_over_seeds.csv (mean and std over seeds),
learning_curves.png (held-out ELBO against step, one line per run) and, with
--x, final_vs_<x>.png (mean +- std over seeds of the final ELBO terms). The
summary has every final number the runs report (the ELBO terms first). Both
files are sorted by the swept values, numbers as numbers. A multi-seed workdir
stands for its seed_* replicas.

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
from vae_jax import logs as vlog  # pylint: disable=g-import-not-at-top
from vae_jax import sweep  # pylint: disable=g-import-not-at-top
from vae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'A directory filled by scripts/sweep.py.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the files go when workdirs are named '
                               'as arguments instead of --sweep_dir.')
_X = flags.DEFINE_string('x', None, 'A swept field to put on the x axis of the summary plot.')


def write_csv(path, rows):
  fields = []
  for row in rows:
    fields += [k for k in row if k not in fields]
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  print(f'wrote {path} ({len(rows)} rows)')


def plot_learning_curves(sweep_dir, rows, path, title):
  fig, ax = plt.subplots(figsize=(8, 4.5))
  colours = plt.get_cmap('tab10' if len(rows) <= 10 else 'tab20')
  for i, row in enumerate(rows):
    evals = vlog.read_metrics(os.path.join(sweep_dir, row['point']), 'eval')  # Absolute: as is.
    evals = [r for r in evals if 'elbo' in r]
    ax.plot([r['step'] for r in evals], [r['elbo'] for r in evals], lw=1, marker='.',
            color=colours(i % colours.N), label=row['point'])
  ax.set(xlabel='step', ylabel='held-out ELBO (nats)', title=title)
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
  workdirs = argv[1:]
  if bool(workdirs) == bool(_SWEEP_DIR.value):
    sys.exit('error: give --sweep_dir=DIR or workdirs as arguments (with --out_dir), not both')
  if workdirs:
    if not _OUT_DIR.value:
      sys.exit('error: --out_dir: where to write results.csv and the plots')
    for workdir in workdirs:
      if not os.path.isdir(workdir):
        sys.exit(f'error: {workdir}: no such directory')
    out_dir = os.path.abspath(_OUT_DIR.value)
    os.makedirs(out_dir, exist_ok=True)
    try:
      rows = sweep.collect_workdirs([os.path.abspath(w) for w in workdirs])
    except (workdir_lib.WorkdirError, ValueError) as e:
      sys.exit(f'error: {e}')
    source, title = out_dir, f'{len(rows)} runs'
  else:
    out_dir = source = os.path.abspath(_SWEEP_DIR.value)
    rows = sweep.collect(out_dir)
    title = os.path.basename(out_dir)
  if not rows:
    sys.exit(f'error: no finished runs in {" ".join(workdirs) or out_dir} (none has '
             f'{sweep.FINAL_METRICS})')
  write_csv(os.path.join(out_dir, 'results.csv'), rows)
  # The ELBO terms first, then every other final number the runs report (the
  # disentanglement scores of a factor dataset, for one).
  metrics = ['final_elbo', 'final_recon', 'final_kl', 'best_elbo', 'eval_log_px']
  metrics += sorted({k for r in rows for k, v in r.items() if k.startswith('final_')
                     and k not in metrics and k != 'final_step'
                     and isinstance(v, (int, float)) and not isinstance(v, bool)})
  groups = sweep.group_over_seeds(rows, [m for m in metrics if any(m in r for r in rows)])
  write_csv(os.path.join(out_dir, 'results_over_seeds.csv'), groups)
  print('  (<metric>_std: sample std over seeds, ddof=1)')
  plot_learning_curves(source, rows, os.path.join(out_dir, 'learning_curves.png'), title)
  if _X.value:
    plot_summary(groups, _X.value, os.path.join(out_dir, f'final_vs_{_X.value}.png'))


if __name__ == '__main__':
  app.run(main)
