"""Disentangling VAEs (Locatello et al. 2019's objectives) on data with ground-truth factors.

  python -m vae_jax.main --config=configs/disentanglement.py:objective=beta_tcvae,weight=6 \
    --workdir=/tmp/runs/tcvae
  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m vae_jax.main \
    --config=configs/disentanglement.py:objective=factor_vae,weight=40,data=dsprites \
    --workdir=/tmp/runs/factorvae_dsprites

Options:
  objective  beta_vae (Higgins et al. 2017: the ELBO with beta = weight),
             beta_tcvae (Chen et al. 2018: the total correlation weighted by weight),
             factor_vae (Kim & Mnih 2018: gamma = weight, a discriminator trained beside),
             dip_vae_i, dip_vae_ii (Kumar et al. 2018: lambda_od = weight, lambda_d
             10 x or 1 x that).                                 default beta_tcvae
  weight     the regulariser's strength, as above.              default 6
  data       rendered_shapes (4,608 32x32 shapes drawn from 5 factors, offline),
             dsprites or shapes3d (TFDS, 64x64).                 default rendered_shapes
  steps      training steps.                                    default 20000
  latent     latent size.                                       default 10
  seed       the run's seed.                                    default 0
  runlocal   a few hundred steps, for a smoke test.
The run ends with the beta-VAE and FactorVAE scores, MIG, DCI and SAP of the
posterior means in final_metrics.json. On rendered_shapes the network is an MLP
(1024-512-512-10) and FactorVAE's discriminator 4 x 512 (the paper's 6 x 1,000
costs more than the VAE here); on dsprites and shapes3d it is
disentanglement_lib's: four stride-2 convolutions (32, 32, 64, 64 channels),
Adam 1e-4, batch 64, and the paper's discriminator. The study in
experiments/disentanglement/ sweeps weight and seed with this config.
"""

from vae_jax import config as config_lib

_OBJECTIVES = ('beta_vae', 'beta_tcvae', 'factor_vae', 'dip_vae_i', 'dip_vae_ii')
_DATA = ('rendered_shapes', 'dsprites', 'shapes3d')
_DEFAULTS = {'objective': 'beta_tcvae', 'weight': 6.0, 'data': 'rendered_shapes',
             'steps': 20_000, 'latent': 10, 'seed': 0}


def get_config(arg=None):
  options = config_lib.parse_options(
      arg, 'configs/disentanglement.py', _DEFAULTS, ('runlocal',),
      choices={'objective': _OBJECTIVES, 'data': _DATA})
  objective, weight, name = options['objective'], options['weight'], options['data']
  c = config_lib.default_config()
  c.seed = options['seed']
  c.data.name = name
  c.data.binarization = 'none' if name == 'shapes3d' else 'static'
  c.data.train_split = c.data.eval_split = 'train'
  c.data.download = False
  c.model.latent_dim = options['latent']
  c.model.likelihood = 'discretized_logistic' if name == 'shapes3d' else 'bernoulli'
  if name == 'rendered_shapes':
    c.model.hidden = (512, 512)
    if objective == 'factor_vae':
      c.objective.discriminator_hidden = (512,) * 4
    c.optimizer.learning_rate = 5e-4
  else:
    c.model.architecture = 'conv'
    c.model.conv_features = (32, 32, 64, 64)
    c.optimizer.learning_rate = 1e-4
  if objective == 'beta_vae':
    c.objective.name, c.objective.beta = 'elbo', weight
  elif objective in ('beta_tcvae', 'factor_vae'):
    c.objective.name, c.objective.tc_weight = objective, weight
  else:
    c.objective.name, c.objective.dip_lambda_od = objective, weight
    c.objective.dip_lambda_d = weight * (10.0 if objective == 'dip_vae_i' else 1.0)
  c.train.batch_size = 64
  c.train.num_steps = options['steps']
  c.train.steps_per_call = 50
  c.train.log_every_steps = 1000
  c.train.eval_every_steps = 5000
  c.train.checkpoint_every_steps = 5000
  c.eval.batch_size = 512
  c.sampling.num_reconstructions = 32
  if options['runlocal']:
    c.train.num_steps = 200
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
    c.eval.disentanglement_num_train = 500
    c.eval.disentanglement_num_eval = 250
  return c
