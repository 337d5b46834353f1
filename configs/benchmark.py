"""The benchmark's reference model (issue 6): 784-400-20 MLP VAE on binarized MNIST.

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m scripts.benchmark \
    --config=configs/benchmark.py --output=benchmarks/cpu_b128_spc10.json

ReLU encoder 784-400-(2x20) and decoder 20-400-784, Bernoulli likelihood, Adam
1e-3, batch 128, 10 steps per call, logging every 500 steps and a checkpoint
every 2,500 as in a real run. Variants after the colon: 'conv' (the default
conv encoder/decoder, 32-64 features) and 'embedded' (the embedded MNIST subset,
for a machine without the TFDS data). Change the batch or the steps per call
with the usual overrides, e.g. --config.train.batch_size=1024.
"""

from vae_jax import config as config_lib


def get_config(arg=None):
  options = config_lib.parse_options(arg, 'configs/benchmark.py', switches=('conv', 'embedded'))
  c = config_lib.default_config()
  if not options['embedded']:
    c.data.name = 'binarized_mnist'
    c.data.binarization = 'static'
    c.data.download = False
  c.model.hidden = (400,)
  c.model.latent_dim = 20
  c.model.activation = 'relu'
  c.model.likelihood = 'bernoulli'
  if options['conv']:
    c.model.architecture = 'conv'
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 128
  c.train.steps_per_call = 10
  c.train.log_every_steps = 500
  c.train.checkpoint_every_steps = 2500
  c.eval.batch_size = 500
  return c
