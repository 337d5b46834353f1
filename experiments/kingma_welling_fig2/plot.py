"""Kingma & Welling 2013 figure 2 from the runs' metrics.jsonl: ELBO vs training samples.

  python experiments/kingma_welling_fig2/plot.py --out=experiments/kingma_welling_fig2 \
      3=/tmp/runs/kw_z3 5=/tmp/runs/kw_z5 ...

Writes curves.csv (latent, split, step, training_samples, elbo) and fig2.png:
train (batch mean over each log interval) and test ELBO against the number of
training samples evaluated, on a log axis, one colour per latent size.
"""

import argparse
import csv
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def read_curve(latent, workdir):
  with open(os.path.join(workdir, 'config.json')) as f:
    batch = json.load(f)['train']['batch_size']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [{'latent': latent, 'split': 'test' if r['split'] == 'eval' else r['split'],
           'step': r['step'], 'training_samples': r['step'] * batch, 'elbo': r['elbo']}
          for r in records if 'elbo' in r]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('runs', nargs='+', help='latent=workdir')
  parser.add_argument('--out', default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  runs = [run.split('=', 1) for run in args.runs]
  rows = [row for latent, workdir in runs if os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
          for row in read_curve(int(latent), workdir)]
  with open(os.path.join(args.out, 'curves.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
  for i, (latent, _) in enumerate(runs):
    for ax, split in zip(axes, ('train', 'test')):
      points = [(r['training_samples'], r['elbo']) for r in rows
                if r['latent'] == int(latent) and r['split'] == split]
      if points:
        ax.plot(*zip(*points), color=f'C{i}', label=f'N_z = {latent}')
  for ax, split in zip(axes, ('train (batch mean)', 'test')):
    ax.set_xscale('log')
    ax.set_xlabel('# training samples evaluated')
    ax.set_title(f'MNIST, {split}')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('ELBO (nats)')
  axes[0].set_ylim(-150, -80)
  axes[1].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'fig2.png'), dpi=120)


if __name__ == '__main__':
  main()
