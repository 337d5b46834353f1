"""Rate-distortion plane (Alemi et al. 2018, "Fixing a Broken ELBO") from a beta sweep.

  python experiments/beta_rate_distortion/plot.py --results=runs/beta/results.csv \
      --output=experiments/beta_rate_distortion/rate_distortion.png

Distortion D = -E_q[log p(x|z)] against rate R = KL(q(z|x) || p(z)) on the test
set, one point per run, coloured by beta; dashed lines of constant ELBO
(-ELBO = D + R) show that moving along the curve trades one for the other.
"""

import csv

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from absl import app
from absl import flags

_RESULTS = flags.DEFINE_string('results', None, 'results.csv written by scripts/aggregate.py')
_OUTPUT = flags.DEFINE_string('output', 'rate_distortion.png', 'PNG to write')
flags.mark_flag_as_required('results')


def main(argv):
  del argv
  with open(_RESULTS.value, encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  beta = np.array([float(r['objective.beta']) for r in rows])
  rate = np.array([float(r['final_kl']) for r in rows])
  distortion = np.array([-float(r['final_recon']) for r in rows])
  fig, ax = plt.subplots(figsize=(6, 4.5))
  points = ax.scatter(rate, distortion, c=np.log10(beta), cmap='viridis', zorder=3)
  fig.colorbar(points, ax=ax, label='log10 beta')
  for b in sorted(set(beta)):
    sel = beta == b
    ax.annotate(f'{b:g}', (rate[sel].mean(), distortion[sel].mean()), fontsize=7,
                xytext=(4, 4), textcoords='offset points')
  best = (rate + distortion).min()
  r = np.linspace(0, rate.max() * 1.05, 100)
  for offset in (0, 10, 25):
    ax.plot(r, best + offset - r, 'k--', lw=0.6, alpha=0.5)
  x_label = 0.6 * rate.max()
  ax.text(x_label, best - x_label - 4, f'-ELBO = {best:.1f} (best run)', fontsize=7)
  ax.set(xlabel='rate R = KL (nats)', ylabel='distortion D = -E log p(x|z) (nats)',
         xlim=(0, rate.max() * 1.05), ylim=(distortion.min() * 0.9, distortion.max() * 1.05),
         title='binarized MNIST test set: rate vs distortion over beta')
  fig.tight_layout()
  fig.savefig(_OUTPUT.value, dpi=120)
  print(f'wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
