"""The disentanglement scores against the reconstruction, one marker per objective and weight.

  python experiments/disentanglement/plot.py \
      --results=runs/disentanglement/results_over_seeds.csv --output_dir=experiments/disentanglement

Reads scripts/aggregate.py's results_over_seeds.csv; writes scores_vs_reconstruction.png
(MIG, DCI disentanglement, FactorVAE score and beta-VAE score against
-E log p(x | z), mean +- sample std over seeds) and prints the README's table.
"""

import csv
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from absl import app
from absl import flags

_RESULTS = flags.DEFINE_string('results', None, 'results_over_seeds.csv of the sweep.',
                               required=True)
_OUTPUT_DIR = flags.DEFINE_string('output_dir', '.', 'Where the plot goes.')

SCORES = (('final_mig', 'MIG'), ('final_dci_disentanglement', 'DCI disentanglement'),
          ('final_factor_vae_score', 'FactorVAE score'), ('final_beta_vae_score', 'beta-VAE score'))
TABLE = (('final_recon', 'recon E log p(x|z)'), ('final_kl', 'KL'),
         ('final_beta_vae_score', 'beta-VAE'), ('final_factor_vae_score', 'FactorVAE'),
         ('final_mig', 'MIG'), ('final_dci_disentanglement', 'DCI dis.'),
         ('final_dci_completeness', 'DCI comp.'), ('final_dci_informativeness', 'DCI inf.'),
         ('final_sap', 'SAP'))
NAMES = {'elbo': ('beta-VAE', 'beta', 'objective.beta'),
         'beta_tcvae': ('beta-TCVAE', 'beta', 'objective.tc_weight'),
         'factor_vae': ('FactorVAE', 'gamma', 'objective.tc_weight')}


def setting(row):
  """(objective's name, weight's name, weight) of a row."""
  label, weight_name, field = NAMES[row['objective.name']]
  return label, weight_name, float(row[field])


def main(argv):
  del argv
  with open(_RESULTS.value, encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  rows.sort(key=lambda r: (list(NAMES).index(r['objective.name']), setting(r)[2]))
  fig, axes = plt.subplots(1, len(SCORES), figsize=(4.2 * len(SCORES), 3.8))
  markers = {'beta-VAE': 'o', 'beta-TCVAE': 's', 'FactorVAE': '^'}
  for ax, (metric, title) in zip(axes, SCORES):
    for label in markers:
      mine = [r for r in rows if setting(r)[0] == label]
      if not mine:
        continue
      xs = [-float(r['final_recon_mean']) for r in mine]
      ax.errorbar(xs, [float(r[f'{metric}_mean']) for r in mine],
                  xerr=[float(r['final_recon_std']) for r in mine],
                  yerr=[float(r[f'{metric}_std']) for r in mine],
                  marker=markers[label], capsize=3, label=label)
      for x, r in zip(xs, mine):
        ax.annotate(f'{setting(r)[2]:g}', (x, float(r[f'{metric}_mean'])), fontsize=7,
                    textcoords='offset points', xytext=(4, 4))
    ax.set_xlabel('-E log p(x | z) (nats)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  path = os.path.join(_OUTPUT_DIR.value, 'scores_vs_reconstruction.png')
  fig.savefig(path, dpi=110)
  print(f'wrote {path}')
  print('| objective | weight | seeds | ' + ' | '.join(h for _, h in TABLE) + ' |')
  print('| --- ' * (3 + len(TABLE)) + '|')
  for r in rows:
    label, weight_name, weight = setting(r)
    cells = [f'{float(r[m + "_mean"]):.3f} ± {float(r[m + "_std"]):.3f}' if 'recon' not in m
             and 'kl' not in m else f'{float(r[m + "_mean"]):.2f} ± {float(r[m + "_std"]):.2f}'
             for m, _ in TABLE]
    print(f'| {label} | {weight_name} = {weight:g} | {r["num_seeds"]} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  app.run(main)
