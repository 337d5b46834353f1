"""Validation ELBO vs epochs and the results table of the VampPrior study.

  python experiments/vampprior/plot.py --runs=/tmp/runs/vampprior --out=experiments/vampprior

Reads each row's workdir (standard, vamp, mixture, iaf): metrics.jsonl for the
curves, eval_test_k5000.json for test log p(x). Writes curves.csv, results.csv
and elbo_curves.png.
"""

import argparse
import csv
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

ROWS = ('standard', 'vamp', 'mixture', 'iaf')
STEPS_PER_EPOCH = 50_000 // 100


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--runs', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  curves, results = [], []
  for row in ROWS:
    workdir = os.path.join(args.runs, row)
    if not os.path.isdir(workdir):
      continue
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        record = json.loads(line)
        if record.get('split') == 'eval' and 'elbo' in record:
          curves.append({'run': row, 'epoch': record['step'] / STEPS_PER_EPOCH,
                         'elbo': record['elbo']})
    path = os.path.join(workdir, 'eval_test_k5000.json')
    if os.path.exists(path):
      with open(path) as f:
        r = json.load(f)
      results.append({'run': row, 'epochs': r['epoch'], 'test_log_px': r['log_px'],
                      'test_elbo': r['elbo'], 'active_units': r['active_units'],
                      'eval_wall_s': r['wall_time_s']})
  os.makedirs(args.out, exist_ok=True)
  for name, rows in (('curves.csv', curves), ('results.csv', results)):
    if rows:
      with open(os.path.join(args.out, name), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
  fig, ax = plt.subplots(figsize=(6, 4))
  for row in ROWS:
    points = [(c['epoch'], c['elbo']) for c in curves if c['run'] == row]
    if points:
      ax.plot(*zip(*points), marker='.', label=row)
  ax.set_xlabel('epoch')
  ax.set_ylabel('validation ELBO (nats)')
  ax.set_ylim(top=-85)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'elbo_curves.png'), dpi=120)


if __name__ == '__main__':
  main()
