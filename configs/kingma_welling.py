"""Kingma & Welling 2013, "Auto-Encoding Variational Bayes", figure 2 (MNIST panel).

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m vae_jax.main \
    --config=configs/kingma_welling.py:latent=20 --workdir=/tmp/runs/kw_z20

The paper's setup (sec. 5): one hidden layer of 500 tanh units in the encoder
and in the decoder, Bernoulli decoder, one sample per datapoint, minibatch 100,
Adagrad with a step size from {0.01, 0.02, 0.1}, and weight decay standing for
the N(0, I) prior on the parameters. Here: TFDS binarized_mnist (the fixed
binarisation; the paper binarised MNIST itself), trained on the 50,000 training
images, the test ELBO tracked every 5 epochs. Variants, comma-separated:
  latent   latent size (figure 2: 3, 5, 10, 20, 200).  default 20
  lr       Adagrad step size.                          default 0.02
  epochs   training length.                            default 100
The paper trains to ~10^8 training samples (2,000 epochs); the budget runs and
their results are in experiments/kingma_welling_fig2/README.md.
"""

from vae_jax import config as config_lib

_DEFAULTS = {'latent': 20, 'lr': 0.02, 'epochs': 100.0}


def get_config(arg=None):
  options = config_lib.parse_options(arg, 'configs/kingma_welling.py', _DEFAULTS)
  c = config_lib.default_config()
  c.data.name = 'binarized_mnist'
  c.data.binarization = 'static'
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.download = False
  c.model.hidden = (500,)
  c.model.latent_dim = options['latent']
  c.model.activation = 'tanh'
  c.optimizer.name = 'adagrad'
  c.optimizer.learning_rate = options['lr']
  # The N(0, I) prior on every parameter, as a per-datapoint L2 term: 1 / N_train.
  c.optimizer.weight_decay = 1.0 / 50_000
  c.train.batch_size = 100
  c.train.num_epochs = options['epochs']
  c.train.steps_per_call = 50
  c.train.log_every_steps = 500
  c.train.eval_every_steps = 2500
  c.train.checkpoint_every_steps = 25000
  c.eval.batch_size = 1000
  return c
