"""beta-VAE, beta-TCVAE and FactorVAE at two or three weights each x 3 seeds on rendered_shapes.

  python scripts/sweep.py --sweep=experiments/disentanglement/sweep.py \
      --sweep_dir=runs/disentanglement --workers=1
  python scripts/aggregate.py --sweep_dir=runs/disentanglement
  python experiments/disentanglement/plot.py --results=runs/disentanglement/results_over_seeds.csv \
      --output_dir=experiments/disentanglement

configs/disentanglement.py's MLP VAE (10 latents) for 10,000 steps of batch 64
(139 epochs of the 4,608 images), then the five metrics at disentanglement_lib's
sample sizes: ~3 minutes a point on 2 CPU cores. The points run seed by seed, so
a sweep cut short still has every setting at the seeds it reached.
"""

from vae_jax import sweep

BASE_CONFIG = 'configs/disentanglement.py:steps=10000'
SEEDS = [0, 1, 2]
SETTINGS = (
    # beta-VAE (Higgins et al. 2017): the ELBO with its KL weighted by beta.
    [{'objective.name': 'elbo', 'objective.beta': b, 'objective.tc_weight': 1.0}
     for b in (1.0, 4.0, 16.0)]
    # beta-TCVAE (Chen et al. 2018): only the total correlation weighted by beta.
    + [{'objective.name': 'beta_tcvae', 'objective.tc_weight': b} for b in (4.0, 16.0)]
    # FactorVAE (Kim & Mnih 2018): gamma times the discriminator's TC estimate.
    + [{'objective.name': 'factor_vae', 'objective.tc_weight': g,
        'objective.discriminator_hidden': (512,) * 4} for g in (10.0, 40.0)])


def get_sweep():
  return [dict(setting, seed=seed) for seed in SEEDS for setting in SETTINGS]
