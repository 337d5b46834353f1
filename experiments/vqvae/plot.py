"""Codebook usage over training for each first-stage run, and the table of both stages.

  python experiments/vqvae/plot.py --stage_one=runs/vqvae --stage_two=runs/vqvae_prior \
      --output=experiments/vqvae/codebook_usage.png

One line per run of the sweep in --stage_one (its logged perplexity, fraction of
codes used and reconstruction term against the step), and a markdown table of
each setting: the first stage's held-out reconstruction, perplexity and codes used
at the end, and the second stage's code NLL (-log p(codes) under the PixelCNN) and
bound log p(x | z_q) + log p(codes), in nats and bits/dim.
"""

import json
import math
import os
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from vae_jax import logs as vlog  # pylint: disable=g-import-not-at-top

_STAGE_ONE = flags.DEFINE_string('stage_one', None, 'The first stage sweep directory.',
                                 required=True)
_STAGE_TWO = flags.DEFINE_string('stage_two', None, 'The directory of the second-stage '
                                 'workdirs, named as the first stage points.', required=True)
_OUTPUT = flags.DEFINE_string('output', 'codebook_usage.png', 'The plot.')

_PIXELS = 28 * 28


def _final(workdir):
  with open(os.path.join(workdir, 'final_metrics.json'), encoding='utf-8') as f:
    return json.load(f)


def main(argv):
  del argv
  names = sorted(n for n in os.listdir(_STAGE_ONE.value)
                 if os.path.exists(os.path.join(_STAGE_ONE.value, n, 'final_metrics.json')))
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for name in names:
    records = vlog.read_metrics(os.path.join(_STAGE_ONE.value, name), 'train')
    steps = [r['step'] for r in records]
    label = name.replace('model.codebook_', '')
    for ax, metric in zip(axes, ('perplexity', 'codes_used', 'recon')):
      ax.plot(steps, [r[metric] for r in records], marker='.', label=label)
  for ax, title in zip(axes, ('code perplexity (batch)', 'fraction of codes used (batch)',
                              'E log p(x | z_q) (train, nats)')):
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(_OUTPUT.value, dpi=110)
  print(f'wrote {_OUTPUT.value}')
  print('| first stage | held-out recon | perplexity | codes used | code NLL (prior) | '
        'bound log p(x\\|z_q) + log p(codes) | bits/dim |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for name in names:
    one = _final(os.path.join(_STAGE_ONE.value, name))
    last = vlog.read_metrics(os.path.join(_STAGE_ONE.value, name), 'train')[-1]
    two_dir = os.path.join(_STAGE_TWO.value, name)
    if os.path.exists(os.path.join(two_dir, 'final_metrics.json')):
      two = _final(two_dir)
      prior = (f'{two["kl"]:.2f} | {two["elbo"]:.2f} | '
               f'{-two["elbo"] / (_PIXELS * math.log(2)):.4f}')
    else:
      prior = '- | - | -'
    print(f'| {name.replace("model.codebook_", "")} | {one["recon"]:.2f} | '
          f'{last["perplexity"]:.1f} | {last["codes_used"]:.2f} | {prior} |')


if __name__ == '__main__':
  app.run(main)
