"""Burda et al. 2015, "Importance Weighted Autoencoders", on TFDS binarized_mnist.

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m vae_jax.main \
    --config=configs/iwae.py:objective=elbo,k=1,layers=1,schedule=budget \
    --workdir=/tmp/runs/iwae_vae_k1
  python -m vae_jax.evaluate_workdir --workdir=/tmp/runs/iwae_vae_k1 --split=test \
    --num_samples=5000

The paper's setup (sec. 5 and its code, github.com/yburda/iwae): one stochastic
layer, 784-200-200-50 with tanh in the encoder and the mirrored decoder, or two,
x -> 200-200 -> z_1 (100) -> 100-100 -> z_2 (50) in q and z_2 -> 100-100 -> z_1
-> 200-200 -> x in p, every conditional of z a diagonal Gaussian; Bernoulli
likelihood, Adam (b1 0.9, b2 0.999, eps 1e-4), batch 20, trained on the 50,000
training images of Larochelle's fixed binarisation; the training-time ELBO is
tracked on the 10,000 validation images (the test set is touched only by
evaluate_workdir, K = 5,000).

Variants, comma-separated key=value after the colon:
  objective  elbo (the VAE; needs k=1) or iwae.               default iwae
  k          samples per datapoint in the bound.              default 5
  layers     stochastic layers, 1 or 2.                       default 1
  schedule   paper: 3^i epochs at 1e-3 * 10^(-i/7), i = 0..7 (3,280 epochs);
             budget: the same 8 learning rates, an equal share of `epochs`
             epochs each (3^i shares would leave a short run ~2/3 at 1e-4).
                                                              default budget
  epochs     length of the budget schedule.                   default 400
  warmup     KL warm-up over this many epochs (objective=elbo only; Bowman
             et al. 2016, Sønderby et al. 2016): beta rises linearly from 0
             to 1. It keeps the two-layer VAE from collapsing onto a few
             latents (experiments/iwae_burda/README.md).  default 0
  runlocal   a few hundred steps on the real data, for a smoke test.

Expected results (test log p(x), K = 5,000): the paper's fixed-binarisation
appendix gives -88.71 / -87.63 / -87.10 nats for IWAE k = 1 / 5 / 50 after
3,280 epochs with one layer (the two-layer numbers are discussed in the
study's README); the numbers this config reached on the 2-core CPU, with their
epochs and wall times, are in experiments/iwae_burda/README.md.
"""

from vae_jax import config as config_lib

PAPER_EPOCHS = sum(3 ** i for i in range(8))  # 3,280
_DEFAULTS = {'objective': 'iwae', 'k': 5, 'layers': 1, 'schedule': 'budget', 'epochs': 400.0,
             'warmup': 0.0}


def get_config(arg=None):
  options = config_lib.parse_options(arg, 'configs/iwae.py', _DEFAULTS, ('runlocal',),
                                     choices={'layers': (1, 2), 'schedule': ('paper', 'budget')})
  c = config_lib.default_config()
  c.data.name = 'binarized_mnist'
  c.data.binarization = 'static'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.download = False
  c.model.hidden = (200, 200)
  if options['layers'] == 1:
    c.model.latent_dim = 50
  else:
    c.model.latent_dim = 100
    c.model.upper_latent_dims = (50,)
    c.model.upper_hidden = ((100, 100),)
  c.model.activation = 'tanh'
  c.objective.name = options['objective']
  c.objective.num_samples = options['k']
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-4
  c.optimizer.schedule = 'burda' if options['schedule'] == 'paper' else 'burda_equal'
  c.train.batch_size = 20
  c.objective.kl_warmup_steps = config_lib.steps(c, epochs=options['warmup'])
  c.train.num_epochs = float(PAPER_EPOCHS) if options['schedule'] == 'paper' else options['epochs']
  # 2,500 steps per epoch of tiny matmuls: many steps per call keep dispatch cheap.
  c.train.steps_per_call = 250
  c.train.log_every_steps = 2500
  c.train.eval_every_steps = 12500
  c.train.checkpoint_every_steps = 12500
  c.eval.batch_size = 1000
  c.eval.num_importance_samples = 0  # evaluate_workdir does the K = 5,000 estimate.
  if options['runlocal']:
    c.train.num_epochs = 0.0
    c.train.num_steps = 500
    c.train.log_every_steps = 250
    c.train.eval_every_steps = 250
    c.train.checkpoint_every_steps = 250
  return c
