"""ELBO vs epochs for the IWAE-study runs, from each workdir's metrics.jsonl.

  python experiments/iwae_burda/plot.py --out=experiments/iwae_burda \
      vae_k1=/tmp/runs/iwae_vae_k1 iwae_k5=/tmp/runs/iwae_k5

Writes curves.csv (run, split, step, epoch, elbo, iwae_bound) and elbo_curves.png:
the training-batch ELBO (a running mean over each log interval) and the
validation ELBO (single sample, 10,000 images) per epoch. --tag=_two_layers
writes curves_two_layers.csv and elbo_curves_two_layers.png instead.
"""

import argparse
import csv
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def read_curves(name, workdir):
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  steps_per_epoch = 50_000 // config['train']['batch_size']  # binarized_mnist train split.
  rows = []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if 'elbo' not in record:
        continue
      rows.append({'run': name, 'split': record['split'], 'step': record['step'],
                   'epoch': record['step'] / steps_per_epoch, 'elbo': record['elbo'],
                   'iwae_bound': record.get('iwae_bound', '')})
  return rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('runs', nargs='+', help='name=workdir')
  parser.add_argument('--out', default=os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument('--tag', default='', help='suffix of the output file names')
  parser.add_argument('--title', default='binarized_mnist (static), 784-200-200-50 tanh, batch 20')
  parser.add_argument('--ymin', type=float, default=-115, help='lower end of the ELBO axis')
  args = parser.parse_args()
  rows = []
  for run in args.runs:
    name, workdir = run.split('=', 1)
    rows += read_curves(name, workdir)
  with open(os.path.join(args.out, f'curves{args.tag}.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, run in enumerate(args.runs):
    name = run.split('=', 1)[0]
    for split, style in (('train', ':'), ('eval', '-')):
      points = [(r['epoch'], r['elbo']) for r in rows if r['run'] == name and r['split'] == split]
      if points:
        x, y = zip(*points)
        label = f'{name} {"train (batch mean)" if split == "train" else "validation"}'
        ax.plot(x, y, style, color=f'C{i}', label=label)
  ax.set_xlabel('epoch (50,000 training images)')
  ax.set_ylabel('ELBO (nats)')
  ax.set_ylim(args.ymin, -85)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(args.title)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f'elbo_curves{args.tag}.png'), dpi=120)


if __name__ == '__main__':
  main()
