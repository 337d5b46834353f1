"""Where the conv VAE's train step spends its time on this machine, layer by layer.

  python -m scripts.conv_layers [--batch=128] [--seconds=0.6]

For each convolution of the benchmark's conv VAE (`configs/benchmark.py:conv`: 3x3
convolutions 28x28x1 -> 14x14x32 -> 7x7x64 in the encoder; 7x7x64 -> 256 and
14x14x64 -> 128 before each pixel shuffle and 28x28x32 -> 1 in the decoder), the
time of its forward pass and of the forward pass plus each gradient (weights,
input), and the forward GFLOP/s against a 2048^3 float32 matmul timed in the same
run. Then the whole train step (ELBO gradient and Adam update) with XLA's
convolution against the same step with every convolution written as im2col
patches (`lax.conv_general_dilated_patches`) times the kernel, timed in turns.
Medians of 5 stretches of --seconds.
"""

import statistics
import time

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from configs import benchmark as benchmark_config
from vae_jax import experiment
from vae_jax import objectives
from vae_jax.models import nets

_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_SECONDS = flags.DEFINE_float('seconds', 0.6, 'Length of each timed stretch.')

# (input side, in channels, out channels, stride) of the conv VAE's convolutions.
LAYERS = ((28, 1, 32, 2), (14, 32, 64, 2), (7, 64, 256, 1), (14, 64, 128, 1), (28, 32, 1, 1))


def seconds_per_call(fn, *args):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(5):
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < _SECONDS.value:
      out = fn(*args)
      calls += 1
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return statistics.median(times)


class Im2colConv(nn.Module):
  """nn.Conv's parameters and 'SAME' padding, computed as im2col patches @ kernel."""
  features: int
  kernel_size: tuple
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    channels = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kh, kw, channels, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    patches = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), self.strides or (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    # The patches' features are ordered (in channel, row, column).
    matrix = kernel.transpose(2, 0, 1, 3).reshape(channels * kh * kw, self.features)
    return patches @ matrix + bias


def layer_rows(batch):
  rows = []
  for side, cin, cout, stride in LAYERS:
    x, w = jnp.ones((batch, side, side, cin)), jnp.full((3, 3, cin, cout), 0.01)

    def conv(x, w, stride=stride):
      return jax.lax.conv_general_dilated(x, w, (stride, stride), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    out = side // stride
    flops = 2 * batch * out * out * 9 * cin * cout
    forward = seconds_per_call(jax.jit(conv), x, w)
    grad_w = seconds_per_call(jax.jit(jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2) / 2)), w, x)
    grad_x = seconds_per_call(jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2) / 2)), x, w)
    rows.append(dict(layer=f'{side}x{side}x{cin} -> {cout}, stride {stride}', gflop=flops / 1e9,
                     forward_ms=forward * 1e3, with_grad_w_ms=grad_w * 1e3,
                     with_grad_x_ms=grad_x * 1e3, forward_gflops=flops / forward / 1e9))
  return rows


def step_rates(batch):
  """Images/s of the train step with XLA's convolutions and with im2col ones, in turns."""
  config = benchmark_config.get_config('conv,embedded')
  x = jax.random.bernoulli(jax.random.key(5), 0.3, (batch, 28, 28, 1)).astype(jnp.float32)
  steps = {}
  for name, conv in (('xla', nn.Conv), ('im2col', Im2colConv)):
    nets.nn.Conv, original = conv, nets.nn.Conv  # The nets build with whichever it finds.
    try:
      exp = experiment.build_experiment(config)
      params = experiment.init_state(exp).params
    finally:
      nets.nn.Conv = original
    tx = optax.adam(1e-3)

    def step(params, opt_state, key, model=exp.model, tx=tx):
      grads = jax.grad(lambda p: objectives.elbo(model, p, x, key)[0])(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    steps[name] = (jax.jit(step), params, tx.init(params))
  rates = {name: [] for name in steps}
  for turn in range(5):
    for name, (fn, params, opt_state) in steps.items():
      fn(params, opt_state, jax.random.key(0))  # Compiled before the first turn's timing.
      start, calls = time.perf_counter(), 0
      while time.perf_counter() - start < 4 * _SECONDS.value:
        out = fn(params, opt_state, jax.random.key(turn * 1000 + calls))
        calls += 1
      jax.block_until_ready(out)
      rates[name].append(calls * batch / (time.perf_counter() - start))
  return {name: statistics.median(r) for name, r in rates.items()}


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  a = jnp.ones((2048, 2048))
  peak = 2 * 2048 ** 3 / seconds_per_call(jax.jit(jnp.dot), a, a) / 1e9
  print(f'batch {_BATCH.value}; 2048^3 float32 matmul: {peak:.0f} GFLOP/s')
  print('| convolution | GFLOP | forward ms | + weight grad ms | + input grad ms | '
        'forward GFLOP/s (x matmul) |')
  print('| --- | --- | --- | --- | --- | --- |')
  for r in layer_rows(_BATCH.value):
    print(f"| {r['layer']} | {r['gflop']:.3f} | {r['forward_ms']:.2f} | "
          f"{r['with_grad_w_ms']:.2f} | {r['with_grad_x_ms']:.2f} | "
          f"{r['forward_gflops']:.0f} (x{r['forward_gflops'] / peak:.2f}) |")
  rates = step_rates(_BATCH.value)
  print(f"train step: XLA convolutions {rates['xla']:,.0f} images/s, im2col "
        f"{rates['im2col']:,.0f} images/s (x{rates['im2col'] / rates['xla']:.2f})")


if __name__ == '__main__':
  app.run(main)
