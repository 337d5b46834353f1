"""ELBO vs epochs for the IWAE-study runs, from each run's config and metrics.

  python experiments/iwae_burda/plot.py --out=experiments/iwae_burda \
      vae_k1=/tmp/runs/iwae_vae_k1 iwae_k5=/tmp/runs/iwae_k5

Each run is name=WORKDIR (its config.json and metrics.jsonl) or name=PREFIX for
the records kept in this directory (PREFIX_config.json, PREFIX_metrics.jsonl),
so the plots can be redrawn from the repository alone:

  python experiments/iwae_burda/plot.py --out=/tmp/plots \
      vae_k1=experiments/iwae_burda/iwae_vae_k1 iwae_k5=experiments/iwae_burda/iwae_k5

Writes curves.csv (run, split, step, epoch, elbo, iwae_bound) and elbo_curves.png:
the training-batch ELBO (a running mean over each log interval) and the
validation ELBO (single sample) per epoch. The title is what the runs have in
common (dataset, binarisation, layers, activation, batch), each legend entry
adds the fields in which that run differs, and the ELBO axis spans the curves
after their first epochs (--ymin / --ymax fix it). --tag=_two_layers writes
curves_two_layers.csv and elbo_curves_two_layers.png instead; --names_only keeps
the legend to the run names (experiments/ladder's plot, whose runs differ in many
fields).
"""

import argparse
import csv
import json
import os

import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from vae_jax import config as config_lib  # pylint: disable=g-import-not-at-top

# Training images of the splits these studies use (for records older than the
# 'epoch' field): binarized_mnist's train split.
_TRAIN_IMAGES = {('binarized_mnist', 'train'): 50_000}
# Fields that describe the experiment; the others (steps, logging) do not go into labels.
_DESCRIPTIVE = ('data.', 'model.', 'objective.', 'optimizer.', 'train.batch_size',
                'train.num_epochs', 'seed')
_IN_LAYERS = ('model.hidden', 'model.latent_dim', 'model.upper_hidden', 'model.upper_latent_dims')


def _files(source):
  if os.path.isdir(source):
    return os.path.join(source, 'config.json'), os.path.join(source, 'metrics.jsonl')
  return f'{source}_config.json', f'{source}_metrics.jsonl'


def read_run(name, source):
  """(flattened config, rows of curves.csv) of one run."""
  config_path, metrics_path = _files(source)
  for path in (config_path, metrics_path):
    if not os.path.exists(path):
      raise SystemExit(f'error: {name}={source}: {path} not found')
  with open(config_path, encoding='utf-8') as f:
    config = config_lib.flatten(json.load(f))
  images = _TRAIN_IMAGES.get((config['data.name'], config['data.train_split']))
  rows = []
  with open(metrics_path, encoding='utf-8') as f:
    for line in f:
      record = json.loads(line)
      if 'elbo' not in record:
        continue
      if 'epoch' in record:
        epoch = record['epoch']
      elif images:
        epoch = record['step'] * config['train.batch_size'] / images
      else:
        raise SystemExit(f'error: {metrics_path}: no epoch in its records and no known '
                         f'size for {config["data.name"]} {config["data.train_split"]}')
      rows.append({'run': name, 'split': record['split'], 'step': record['step'],
                   'epoch': epoch, 'elbo': record['elbo'],
                   'iwae_bound': record.get('iwae_bound', '')})
  return config, rows


def _layers(config):
  """784-200-200-50 (one stochastic layer) or 784-200-200-100-100-100-50 (two)."""
  sizes = [784] + list(config['model.hidden']) + [config['model.latent_dim']]
  for hidden, dim in zip(config.get('model.upper_hidden', []),
                         config.get('model.upper_latent_dims', [])):
    sizes += list(hidden) + [dim]
  return '-'.join(str(s) for s in sizes)


def describe(configs):
  """(title, per-run label suffixes): what all runs share, and how each differs."""
  views = [dict(c, **{'layers': _layers(c)}) for c in configs]
  names = sorted(set().union(*views))
  shared = set(names) - set(config_lib.varying(views))
  first = views[0]
  parts = []
  if 'data.name' in shared:
    parts.append(f"{first['data.name']}" + (f" ({first['data.binarization']})"
                                           if 'data.binarization' in shared else ''))
  for field, text in (('layers', '{}'), ('model.activation', '{}'),
                      ('train.batch_size', 'batch {}')):
    if field in shared:
      parts.append(text.format(first[field]))
  differing = [n for n in names if n not in shared and (n == 'layers' or n.startswith(_DESCRIPTIVE))]
  if 'layers' in differing:  # It says what these say.
    differing = [n for n in differing if n not in _IN_LAYERS]
  labels = [', '.join(f'{n.split(".")[-1]}={v[n]}' for n in differing if v.get(n) is not None)
            for v in views]
  return ', '.join(parts), labels


def limits(rows, skip=0.05):
  """The ELBO axis: the curves' range after the first `skip` of the longest run, padded 5%."""
  start = skip * max(r['epoch'] for r in rows)
  values = [r['elbo'] for r in rows if r['epoch'] >= start] or [r['elbo'] for r in rows]
  low, high = min(values), max(values)
  pad = 0.05 * (high - low or 1.0)
  return low - pad, high + pad


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('runs', nargs='+', help='name=WORKDIR or name=PREFIX')
  parser.add_argument('--out', default=os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument('--tag', default='', help='suffix of the output file names')
  parser.add_argument('--title', default=None, help='instead of the one built from the runs')
  parser.add_argument('--ymin', type=float, default=None, help='lower end of the ELBO axis')
  parser.add_argument('--ymax', type=float, default=None, help='upper end of the ELBO axis')
  parser.add_argument('--names_only', action='store_true',
                      help='legend entries are the run names alone (runs that differ in many fields)')
  args = parser.parse_args()
  configs, rows, names = [], [], []
  for run in args.runs:
    if '=' not in run:
      parser.error(f'{run!r}: expected name=WORKDIR or name=PREFIX')
    name, source = run.split('=', 1)
    config, curves = read_run(name, source)
    configs.append(config)
    rows += curves
    names.append(name)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f'curves{args.tag}.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  title, labels = describe(configs)
  if args.names_only:
    labels = [''] * len(labels)
  fig, ax = plt.subplots(figsize=(10, 4.5))
  for i, (name, label) in enumerate(zip(names, labels)):
    for split, style in (('train', ':'), ('eval', '-')):
      points = [(r['epoch'], r['elbo']) for r in rows if r['run'] == name and r['split'] == split]
      if points:
        x, y = zip(*points)
        # One legend entry per run (its colour); the line styles are named in the axis label.
        text = name + (f' ({label})' if label else '') if split == 'eval' else None
        ax.plot(x, y, style, color=f'C{i}', label=text)
  splits = sorted({c['data.train_split'] for c in configs})
  ax.set_xlabel(f'epoch (passes over the {"/".join(splits)} split)')
  ax.set_ylabel('ELBO (nats): validation —, training batches ···')
  low, high = limits(rows)
  ax.set_ylim(low if args.ymin is None else args.ymin, high if args.ymax is None else args.ymax)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
  ax.set_title(args.title or title, fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f'elbo_curves{args.tag}.png'), dpi=120)
  print(f'wrote {args.out}/curves{args.tag}.csv and elbo_curves{args.tag}.png')


if __name__ == '__main__':
  main()
