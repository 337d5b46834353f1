"""Compile times, training and evaluation throughput, the matmul roofline and memory.

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m scripts.benchmark \
    --config=configs/binarized_mnist.py --config.train.batch_size=1024 \
    --output=benchmarks/bmnist_b1024.json

Any config plus overrides, as for vae_jax.main. First (with --startup, the
default) two launches of vae_jax.main with the same config, timed from launch to
their first logged training call: with an empty user cache, then with the one
the first left (decoded dataset and compiled programs). Then one process
measures, in order: the float32 matmul throughput of this machine (square
matmuls and the model's own layer shapes at the batch size; the best is the
peak); the FLOPs of one
training step (from the layer shapes, XLA's cost analysis as a cross-check);
the compile time of the train step and of both evaluations; training
throughput three ways: a bare, hand-written jitted step of the same model, the
library's step called as its loop calls it (Trainer.run_call), and the real
loop, `train.train_and_evaluate` in a temporary workdir with evaluation pushed
past the end, read from its metrics.jsonl; the importance-sampled log p(x)
throughput; last, the save and restore times of the train state with and
without the SHA-256 of every array that checkpoints carry (timed in turns).
The two steps are timed in turns, before and after each of LOOP_TURNS runs of
the loop, so that the ratios survive a shared, noisy machine. Every throughput
is a median of timed repeats after a warm-up, each phase bounded by --seconds.
The default run takes 1-3 minutes on 2 CPU cores, and the two startup
launches about 40 s more.
"""

import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags
import flax
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import evaluate
from vae_jax import experiment
from vae_jax import logs as vlog
from vae_jax import objectives
from vae_jax import replicas
from vae_jax import sharding
from vae_jax import train
from vae_jax.models import likelihoods

LOOP_TURNS = 3  # Runs of the real loop, each between two timings of the bare step.
MATMUL_RUN_FLOPS = 5e8  # Matmuls per timed run: enough that waiting once does not count.


def _flags(argv):
  """Parses argv into a fresh FlagValues, so main() can run twice in one process."""
  fv = flags.FlagValues()
  config = config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py).', flag_values=fv,
      lock_config=True, sys_argv=argv)  # It finds the --config.* overrides in argv.
  flags.DEFINE_string('output', '', 'Write the results as JSON to this path.', flag_values=fv)
  flags.DEFINE_integer('repeats', 5, 'Timed repeats per throughput (the median is reported).',
                       flag_values=fv)
  flags.DEFINE_float('seconds', 12.0, 'Time budget of each throughput measurement.',
                     flag_values=fv)
  flags.DEFINE_integer('ll_num_samples', 5000, 'K of the importance-sampled log p(x).',
                       flag_values=fv)
  flags.DEFINE_integer('ll_num_images', 200, 'Test images for the log p(x) throughput (at most).',
                       flag_values=fv)
  flags.DEFINE_integer('compare_seeds', 0,
                       'If > 1: also time train.num_seeds = S (one vmapped program) against '
                       'S separate runs of one seed.', flag_values=fv)
  flags.DEFINE_bool('startup', True, 'Also time launch -> first training call of '
                    'vae_jax.main, with an empty and with a warm user cache.', flag_values=fv)
  flags.DEFINE_list('input_workers', [],
                    'Also measure the streaming input path alone (grain over the training '
                    'split, decoding included) with each of these numbers of worker '
                    'processes, e.g. 0,1,2, against the steps measured in this run.',
                    flag_values=fv)
  flags.DEFINE_list('matmul_sizes', ['512', '1024', '2048'],
                    'Sides of the square matmuls measured besides the layer shapes.',
                    flag_values=fv)
  if any(arg in ('-h', '--help', '--helpshort', '--helpfull') for arg in argv[1:]):
    print(f'python -m scripts.benchmark --config=configs/benchmark.py [flags]\n\n'
          f'{__doc__.strip()}\n\nflags:\n{fv.get_help()}')
    sys.exit(0)
  flags.mark_flag_as_required('config', flag_values=fv)
  fv(argv)
  return fv, config.value


# ----------------------------------------------------------------------------- timing


def _rates(run, units_per_call, repeats, seconds):
  """`repeats` rates (units/s) of run(n), n sized so that each repeat takes ~seconds/repeats.

  run(n) makes n calls and waits for the last. One untimed call warms up; one
  timed call sizes n. Also returns the cores this process kept busy meanwhile
  (CPU time / wall time): well under the machine's count means other load.
  """
  run(1)
  start = time.perf_counter()
  run(1)
  one = time.perf_counter() - start
  calls = max(1, int(seconds / repeats / max(one, 1e-9)))
  rates = []
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    start = time.perf_counter()
    run(calls)
    rates.append(calls * units_per_call / (time.perf_counter() - start))
  return rates, (time.process_time() - cpu) / (time.perf_counter() - wall)


def _alternating_rates(runners, repeats, seconds):
  """({name: rates}, cores used) of several runners timed in turns, repeat by repeat.

  Each runner has run(n) and images_per_call. Taking turns spreads load that
  comes and goes on a shared machine evenly over all of them, so their ratios
  hold up where their absolute rates do not. Fewer repeats are made when even
  one call each would overrun the budget.
  """
  calls, seconds_per_repeat = {}, 0.0
  for name, runner in runners.items():
    runner.run(1)
    start = time.perf_counter()
    runner.run(1)
    one = time.perf_counter() - start
    calls[name] = max(1, int(seconds / len(runners) / repeats / one))
    seconds_per_repeat += calls[name] * one
  repeats = max(1, min(repeats, int(seconds / seconds_per_repeat)))
  rates = {name: [] for name in runners}
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    for name, runner in runners.items():
      start = time.perf_counter()
      runner.run(calls[name])
      rates[name].append(calls[name] * runner.images_per_call / (time.perf_counter() - start))
  return rates, (time.process_time() - cpu) / (time.perf_counter() - wall)


def _first_call_overhead(call):
  """Seconds of the first call beyond a second, identical one: trace + lower + compile."""
  start = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(call())
  return max(first - (time.perf_counter() - start), 0.0)


class _CpuSampler:
  """Samples (wall clock, process CPU time) 10 times a second in a thread.

  Tells how many cores the loop kept busy over its steady log intervals, whose
  bounds are known only afterwards, from the metrics file's timestamps.
  """

  def __init__(self, period=0.1):
    self._period, self._samples = period, []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self):
    while not self._stop.wait(self._period):
      self._samples.append((time.time(), time.process_time()))

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def cores_between(self, start, stop):
    times, cpu = np.asarray(self._samples).T
    return float((np.interp(stop, times, cpu) - np.interp(start, times, cpu)) / (stop - start))


def _maxrss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


# ----------------------------------------------------------------------------- FLOPs


def layer_flops(model, params, image_shape):
  """Multiply-add FLOPs per image of each layer with a kernel, in forward order.

  2 * prod(kernel shape) * output positions: 2 * in * out for Dense, 2 * kh * kw
  * cin * cout * H_out * W_out for a convolution. A strided ConvTranspose is
  counted as XLA runs it, a convolution over the zero-dilated input.
  """
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  eps = jnp.zeros((1, 1, model.noise_dim), jnp.float32)  # One sample of one image.
  labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
  _, state = jax.eval_shape(
      lambda p: model.apply({'params': p}, x, eps, labels,
                            capture_intermediates=True, mutable=['intermediates']), params)
  outputs = flax.traverse_util.flatten_dict(state['intermediates'])
  layers = []
  for path, kernel in flax.traverse_util.flatten_dict(params).items():
    if path[-1] != 'kernel':
      continue
    out = outputs.get(path[:-1] + ('__call__',))
    # Layers inside nn.scan (a hierarchy's repeated blocks) record no intermediates;
    # dense ones have one output position, their kernels stacked [repeats, in, out];
    # a scanned convolution's positions are not known here (NaN).
    if out:
      positions = math.prod(out[0].shape[1:-1])
    else:
      positions = 1 if kernel.ndim <= 3 else float('nan')
    flops = 2 * math.prod(kernel.shape) * positions
    layers.append({'name': '/'.join(path[:-1]), 'kernel_shape': list(kernel.shape),
                   'forward_flops_per_image': flops})
  return layers


def _cost_analysis_flops(jitted, *args):
  """XLA's FLOP count of jitted(*args), from the lowered program (nothing compiles)."""
  cost = jitted.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


# ----------------------------------------------------------------------------- matmul roofline


def matmul_gflops(m, k, n, repeats, seconds):
  """Median GFLOP/s of a jitted float32 [m, k] @ [k, n], and the cores it kept busy.

  Calls are dispatched back to back (asynchronously) and waited for once per
  repeat. A fori_loop of matmuls inside one call, which removes dispatch
  altogether, measured 5-20% slower here for every shape but 2048^3.
  """
  a = jnp.asarray(np.random.default_rng(0).standard_normal((m, k)), jnp.float32)
  b = jnp.asarray(np.random.default_rng(1).standard_normal((k, n)), jnp.float32) / k
  matmul = jax.jit(jnp.dot)
  per_run = max(1, int(MATMUL_RUN_FLOPS / (2 * m * k * n)))

  def run(calls):
    for _ in range(calls * per_run):
      out = matmul(a, b)
    out.block_until_ready()

  rates, cores = _rates(run, 2 * m * k * n * per_run / 1e9, repeats, seconds)
  return float(np.median(rates)), cores


def layer_matmul_shapes(layers, batch_size):
  """(m, k, n, flops per image) of the three matmuls per Dense layer in a training step."""
  shapes = []
  for layer in layers:
    if len(layer['kernel_shape']) != 2:
      continue
    fan_in, fan_out = layer['kernel_shape']
    for role, (m, k, n) in (('forward', (batch_size, fan_in, fan_out)),
                            ('input_grad', (batch_size, fan_out, fan_in)),
                            ('weight_grad', (fan_in, batch_size, fan_out))):
      shapes.append({'layer': layer['name'], 'role': role, 'm': m, 'k': k, 'n': n,
                     'flops_per_image': 2 * fan_in * fan_out})
  return shapes


def measure_matmuls(layers, batch_size, squares, repeats, seconds):
  """GFLOP/s of square matmuls and of the step's layer matmuls; the best is the peak.

  The largest square is not always the fastest (its operands may not fit in
  cache), so the peak is the best of every shape measured, and named.
  """
  layer_shapes = layer_matmul_shapes(layers, batch_size)
  budget = seconds / (len(squares) + len(layer_shapes))
  results = []
  for side in squares:
    gflops, cores = matmul_gflops(side, side, side, repeats, budget)
    results.append({'layer': None, 'role': 'square', 'm': side, 'k': side, 'n': side,
                    'gflops': gflops, 'cores_used': cores})
  cache = {}
  for shape in layer_shapes:
    key = (shape['m'], shape['k'], shape['n'])
    if key not in cache:
      cache[key] = matmul_gflops(*key, repeats, budget)
    results.append(dict(shape, gflops=cache[key][0], cores_used=cache[key][1]))
  best = max(results, key=lambda r: r['gflops'])
  summary = {
      'shapes': results,
      'peak_gflops': best['gflops'],
      'peak_shape': f"{best['m']}x{best['k']}x{best['n']} ({best['role']})",
  }
  if layer_shapes and len(layer_shapes) == 3 * len(layers):
    # The step's matmuls alone, each at the speed measured for its shape.
    seconds_per_image = sum(r['flops_per_image'] / (r['gflops'] * 1e9)
                            for r in results if r['role'] != 'square')
    summary['layer_shapes_images_per_sec'] = 1.0 / seconds_per_image
  return summary


# ----------------------------------------------------------------------------- bare step


def _to_float(batch, binarization, key, dequantize=False):
  """What the dataset's images become in a step, written in plain jnp.

  dequantize (a continuous likelihood, as the library's step does it):
  (v + u) / levels, u ~ U[0, 1), for the integer pixel values v.
  """
  x = batch.astype(jnp.float32)
  integer = jnp.issubdtype(batch.dtype, jnp.integer)
  if dequantize:
    if binarization == 'dynamic':
      binarize_key, key = jax.random.split(key)
      x = jax.random.bernoulli(binarize_key, x / 255.0 if integer else x).astype(jnp.float32)
    levels = 256 if binarization == 'none' else 2
    noisy = jnp.minimum(x + jax.random.uniform(key, x.shape), jnp.nextafter(x + 1.0, x))
    return noisy / levels
  if integer and binarization != 'static':
    x = x / 255.0
  if binarization == 'dynamic':
    x = jax.random.bernoulli(key, x).astype(jnp.float32)
  return x


def make_bare_step(model, learning_rate, binarization, unroll=1):
  """A hand-written ELBO Adam step, scanned; nothing the library adds.

  No metrics, no finiteness check, no KL schedule, no per-step fold_in: the
  floor that the library's step is compared with. The model's terms come from
  the contract (objectives.terms: one reparameterised sample per image, the
  analytic KL where the model has one, else log q - log p); the Bernoulli
  log-likelihood is written out in plain jnp on the decoder's logits, other
  likelihoods use the model's own. `unroll` is the scan's, as the library
  chooses it (train.scan_unroll: conv models on CPU unroll, MLPs do not).
  """
  tx = optax.adam(learning_rate)
  bernoulli = isinstance(model.likelihood, likelihoods.Bernoulli)
  dequantize = model.likelihood.dequantize

  def loss_fn(params, x, key):
    eps = objectives.draw_noise(model, key, 1, x.shape[0])  # The values of normal(key, [B, D]).
    t = objectives.terms(model, params, x, eps)
    if bernoulli:  # t.log_px_z is then unused, and dropped by XLA.
      logits, flat_x = t.out[0].reshape(x.shape[0], -1), x.reshape(x.shape[0], -1)
      recon = jnp.sum(flat_x * logits - jax.nn.softplus(logits), axis=-1)
    else:
      recon = t.log_px_z[0]
    kl = jnp.sum(objectives.rates(t)[0], axis=-1)
    return jnp.mean(kl - recon)

  def one_step(carry, batch):
    params, opt_state, key = carry
    key, data_key, sample_key = jax.random.split(key, 3)
    x = _to_float(batch, binarization, data_key, dequantize)
    loss, grads = jax.value_and_grad(loss_fn)(params, x, sample_key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), loss

  @functools.partial(jax.jit, donate_argnums=(0,))
  def steps(carry, images, indices):
    return jax.lax.scan(lambda c, idx: one_step(c, images[idx]), carry, indices, unroll=unroll)

  return tx, one_step, steps


class BareStep:
  """The bare step, compiled, with its state; timed both before and after the real loop.

  Timing it on both sides of the loop makes the loop / bare ratio less
  sensitive to load that comes and goes on a shared machine.
  """

  def __init__(self, exp, params):
    c = exp.config.train
    self.images_per_call = c.steps_per_call * c.batch_size
    tx, one_step, steps = make_bare_step(
        exp.model, exp.config.optimizer.learning_rate, exp.dataset.binarization,
        unroll=train.scan_unroll(exp.config))
    self.images = jax.device_put(exp.dataset.train)
    rng = np.random.default_rng(0)
    self.index_sets = [jax.device_put(rng.integers(0, exp.dataset.num_train,
                                                   (c.steps_per_call, c.batch_size), np.int32))
                       for _ in range(4)]
    self.carry = (params, tx.init(params), jax.random.key(0))
    start = time.perf_counter()
    self.compiled = steps.lower(self.carry, self.images, self.index_sets[0]).compile()
    self.compile_s = time.perf_counter() - start
    one_batch = self.images[self.index_sets[0][0]]
    self.flops_per_image = _cost_analysis_flops(
        jax.jit(one_step), self.carry, one_batch) / c.batch_size

  @property
  def params(self):
    return self.carry[0]

  def run(self, calls):
    for i in range(calls):
      self.carry, loss = self.compiled(
          self.carry, self.images, self.index_sets[i % len(self.index_sets)])
    loss.block_until_ready()



class LibraryStep:
  """train.Trainer's compiled step, called as its loop calls it: `Trainer.run_call`.

  That is host-side batch indices, their transfer, and the dispatch, per call;
  the loop's per-log-interval fetch, logs and checkpoints are not included
  (bench_loop measures those).
  """

  def __init__(self, config, workdir):
    start = time.perf_counter()
    self.trainer = train.Trainer(config, workdir)
    self.state = self.trainer.initial_state()
    self.step = 0
    self.steps_per_call = config.train.steps_per_call
    # With train.num_seeds = S, every call trains S replicas: S times the images.
    self.images_per_call = (self.steps_per_call * config.train.batch_size
                            * config.train.num_seeds)
    self.run(1)
    self.setup_and_first_call_s = time.perf_counter() - start

  def run(self, calls):
    for _ in range(calls):
      self.state, metrics = self.trainer.run_call(self.state, self.step, self.steps_per_call)
      self.step += self.steps_per_call
    jax.block_until_ready(metrics)

  def close(self):
    self.trainer.close()


def bench_seeds(config, num_seeds, repeats, seconds):
  """train.num_seeds = S in one vmapped program against S separate one-seed runs.

  Both are the library step as the loop calls it, timed in turns; images/s
  counts every replica's images, so `speedup` is how much faster S seeds train
  as one program than as S runs one after another (S runs side by side on the
  same cores share the same compute). The one-off cost of each, setting up the
  trainer (data on device, compile) and the first call, is reported beside it:
  S separate runs pay it S times.
  """
  single_config = replicas.replica_config(config, config.seed)
  vmapped_config = ml_collections.ConfigDict(single_config.to_dict())
  vmapped_config.train.num_seeds = num_seeds
  config_lib.validate(vmapped_config)
  with tempfile.TemporaryDirectory() as workdir:
    steps = {'separate': LibraryStep(single_config, os.path.join(workdir, 'single')),
             'vmapped': LibraryStep(vmapped_config, os.path.join(workdir, 'vmapped'))}
    try:
      rates, cores = _alternating_rates(steps, repeats, seconds)
    finally:
      for step in steps.values():
        step.close()
  separate, vmapped = np.median(rates['separate']), np.median(rates['vmapped'])
  return {
      'num_seeds': num_seeds,
      'separate_images_per_sec': float(separate),
      'vmapped_images_per_sec': float(vmapped),
      'speedup': float(vmapped / separate),
      'speedup_repeats': list(np.divide(rates['vmapped'], rates['separate'])),
      'separate_setup_and_first_call_s': steps['separate'].setup_and_first_call_s,
      'vmapped_setup_and_first_call_s': steps['vmapped'].setup_and_first_call_s,
      'cores_used': cores,
  }


# ----------------------------------------------------------------------------- the library


def bench_compile(exp, params, eval_images, num_samples):
  """Compile times of the library's train step (AOT) and evaluations (first-call overhead)."""
  c = exp.config
  mesh = sharding.make_mesh()
  state = sharding.put_replicated(experiment.init_state(exp), mesh)
  images = sharding.put_replicated(exp.dataset.train, mesh)
  indices = sharding.put_batch(
      data.batch_indices_for_steps(c.seed, 0, c.train.steps_per_call, c.train.batch_size,
                                   exp.dataset.num_train), mesh, batch_axis=1)
  step_fn = train.make_train_step(exp)
  start = time.perf_counter()
  lowered = step_fn.lower(state, images, indices, exp.keys['train'])
  lowered_at = time.perf_counter()
  lowered.compile()
  compiled_at = time.perf_counter()

  elbo_images = eval_images[:c.eval.batch_size]
  ll_images = eval_images[:c.eval.importance_batch_size]
  return {
      'train_step_s': compiled_at - start,
      'train_step_trace_lower_s': lowered_at - start,
      'train_step_xla_compile_s': compiled_at - lowered_at,
      'elbo_eval_s': _first_call_overhead(lambda: evaluate.evaluate_elbo(
          exp.model, params, elbo_images, exp.keys['eval'], batch_size=c.eval.batch_size)),
      'log_likelihood_s': _first_call_overhead(lambda: evaluate.evaluate_log_likelihood(
          exp.model, params, ll_images, exp.keys['eval'], num_samples=num_samples,
          batch_size=c.eval.importance_batch_size, chunk_size=c.eval.importance_chunk_size,
          progress=False)),
  }


def bench_log_likelihood(exp, params, eval_images, num_samples, num_images, repeats, seconds):
  """Median images/s of evaluate_log_likelihood at K = num_samples over a few test images."""
  c = exp.config.eval

  def evaluate_on(images):
    return evaluate.evaluate_log_likelihood(
        exp.model, params, images, exp.keys['eval'], num_samples=num_samples,
        batch_size=c.importance_batch_size, chunk_size=c.importance_chunk_size, progress=False)

  start = time.perf_counter()
  evaluate_on(eval_images[:c.importance_batch_size])
  per_image = (time.perf_counter() - start) / c.importance_batch_size
  # Each repeat is a whole number of batches, so no padded image is timed.
  per_repeat = min(num_images // repeats, int(seconds / repeats / per_image))
  per_repeat = max(c.importance_batch_size, per_repeat // c.importance_batch_size
                   * c.importance_batch_size)
  rates, log_px = [], []
  wall, cpu = time.perf_counter(), time.process_time()
  for r in range(repeats):
    images = eval_images[r * per_repeat:(r + 1) * per_repeat]
    start = time.perf_counter()
    log_px.append(evaluate_on(images)['log_px'])
    rates.append(len(images) / (time.perf_counter() - start))
  cores = (time.process_time() - cpu) / (time.perf_counter() - wall)
  rate = float(np.median(rates))
  return {
      'cores_used': cores,
      'num_samples': num_samples,
      'chunk_size': c.importance_chunk_size,
      'batch_size': c.importance_batch_size,
      'num_images': per_repeat * repeats,
      'images_per_sec': rate,
      'repeats_images_per_sec': rates,
      'minutes_for_10000_images': 10_000 / rate / 60,
      'mean_log_px': float(np.mean(log_px)),
  }


def bench_elbo_eval(exp, params, eval_images):
  """Images/s of evaluate_elbo over the whole evaluation split (compiled already)."""
  start = time.perf_counter()
  evaluate.evaluate_elbo(exp.model, params, eval_images, exp.keys['eval'],
                         batch_size=exp.config.eval.batch_size)
  return {'images_per_sec': len(eval_images) / (time.perf_counter() - start),
          'num_images': len(eval_images)}


def bench_checkpoint(state, repeats):
  """Median seconds to save (the part the loop waits for, and until committed) and to
  restore `state`, with the arrays' checksums and without, timed in turns."""
  tree = state.to_dict()
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)
  times = {verify: {'save_call_s': [], 'save_committed_s': [], 'restore_s': []}
           for verify in (True, False)}
  with tempfile.TemporaryDirectory() as directory:
    checkpointers = {verify: checkpoint.Checkpointer(os.path.join(directory, str(verify)),
                                                     max_to_keep=2, verify=verify)
                     for verify in (True, False)}
    for step in range(1, repeats + 2):  # The first turn warms up and is not counted.
      for verify, ckpt in checkpointers.items():
        start = time.perf_counter()
        ckpt.save(step, tree)
        call = time.perf_counter() - start
        ckpt.wait_until_finished()
        committed = time.perf_counter() - start
        start = time.perf_counter()
        restored = ckpt.restore(target, step)[1]
        jax.block_until_ready(restored)
        if step > 1:
          for name, value in (('save_call_s', call), ('save_committed_s', committed),
                              ('restore_s', time.perf_counter() - start)):
            times[verify][name].append(value)
    for ckpt in checkpointers.values():
      ckpt.close()
  medians = {('verified' if verify else 'unverified'): {k: float(np.median(v))
                                                        for k, v in named.items()}
             for verify, named in times.items()}
  verified, unverified = medians['verified'], medians['unverified']
  return dict(medians, state_mib=sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)) / 2**20,
              repeats=repeats,
              ratios={name: verified[name] / unverified[name] for name in verified})


def loop_config(config, steps_per_sec, repeats, seconds):
  """The config, run for whole log intervals that fill the budget, without evaluation.

  The config's log and checkpoint intervals are kept, so logging and checkpoints
  cost the loop what they cost a real run. Only where 1 + repeats log intervals
  would not fit in the budget is the log interval shortened (to whole calls),
  and the checkpoint interval then rounded down to whole log intervals.
  """
  c = config.copy_and_resolve_references()
  per_call = c.train.steps_per_call
  fits = per_call * max(1, int(steps_per_sec * seconds / (repeats + 1) / per_call))
  interval = min(c.train.log_every_steps, fits)
  num_intervals = 1 + max(repeats, int(steps_per_sec * seconds / interval) - 1)
  c.train.num_epochs = 0.0
  c.train.num_steps = interval * num_intervals
  c.train.log_every_steps = interval
  c.train.eval_every_steps = c.train.num_steps + per_call
  c.train.checkpoint_every_steps = max(
      interval, config.train.checkpoint_every_steps // interval * interval)
  c.eval.num_importance_samples = 0
  return c


def bench_loop(config, steps_per_sec, repeats, seconds):
  """Images/s of train.train_and_evaluate: the median of the log intervals after the first.

  The first interval holds the compilation. The loop's own steps/s records are
  used as they are: each spans the dispatches, the metric fetch and log writes,
  and the checkpoint saves of its interval. The final evaluation, image grids
  and last checkpoint come after the last record, so they count in wall_s only.
  """
  c = loop_config(config, steps_per_sec, repeats, seconds)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    with _CpuSampler() as sampler:
      train.train_and_evaluate(c, workdir)
    wall = time.perf_counter() - start
    records = vlog.read_metrics(workdir, 'train')
  batch = c.train.batch_size
  interval = c.train.log_every_steps
  steady = [r['steps_per_sec'] * batch for r in records[1:]]
  median = float(np.median(steady))
  return {
      'images_per_sec': median,
      'repeats_images_per_sec': steady,
      # All images over all time of the same intervals (their harmonic mean, as
      # each interval has as many steps): checkpoints amortised in.
      'mean_images_per_sec': len(steady) / sum(1.0 / s for s in steady),
      'num_steps': c.train.num_steps,
      'log_every_steps': interval,
      'checkpoint_every_steps': c.train.checkpoint_every_steps,
      # A save at step s is timed in the interval after s: every save but the final one.
      'checkpoints_timed': (c.train.num_steps - 1) // c.train.checkpoint_every_steps,
      'first_interval_overhead_s': interval / records[0]['steps_per_sec'] - interval * batch / median,
      'wall_s': wall,
      'cores_used': sampler.cores_between(records[0]['time'], records[-1]['time']),
  }


# ----------------------------------------------------------------------------- the run


def bench_input(config, workers_list, repeats, seconds):
  """Images/s of the streaming path alone (stream.Stream over the training split, read and
  decoded as a streamed run reads it, no train step), per number of grain workers: a
  median of `repeats` timed stretches after two calls of warm-up (workers start)."""
  from vae_jax import stream as stream_lib  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.data.input = 'stream'
  dataset = data.load(c.data)
  batch, per_call = c.train.batch_size, c.train.steps_per_call
  rows = {}
  for workers in workers_list:
    s = stream_lib.Stream(dataset.train_source, seeds=(c.seed,), batch_size=batch,
                          rows=(0, batch), num_steps=10**9, first_step=0, workers=workers,
                          prefetch_steps=c.data.prefetch * per_call)
    try:
      s.take(2 * per_call)
      rates = []
      for _ in range(repeats):
        start, images = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / repeats or not images:
          s.take(per_call)
          images += per_call * batch
        rates.append(images / (time.perf_counter() - start))
    finally:
      s.close()
    rows[str(workers)] = {'images_per_sec': float(np.median(rates)), 'rates': rates}
  return {'dataset': c.data.name, 'batch_size': batch, 'workers': rows}


def run(config, *, repeats=5, seconds=12.0, ll_num_samples=5000, ll_num_images=200,
        matmul_sizes=(512, 1024, 2048), compare_seeds=0, startup_args=None,
        input_workers=()):
  """Every measurement of the module docstring, as one JSON-ready dict."""
  config_lib.validate(config)
  results = {'machine': _machine(), 'memory': {}}
  memory = results['memory']
  if startup_args:  # First, in processes of their own, before this one loads anything.
    results['startup'] = bench_startup(startup_args, config)

  start = time.perf_counter()
  exp = experiment.build_experiment(config)
  eval_images = data.fixed_eval_images(exp.dataset, config.seed)
  results['data_load_s'] = time.perf_counter() - start
  memory['maxrss_mib_after_data'] = _maxrss_mib()
  params = experiment.init_state(exp).params

  layers = layer_flops(exp.model, params, exp.dataset.image_shape)
  forward = sum(layer['forward_flops_per_image'] for layer in layers)
  flops = {'layers': layers, 'forward_per_image': forward, 'train_step_per_image': 3 * forward}

  results['matmul'] = measure_matmuls(layers, config.train.batch_size, matmul_sizes,
                                      repeats, seconds / 2)
  memory['maxrss_mib_after_matmul'] = _maxrss_mib()

  bare = BareStep(exp, params)
  params = bare.params
  flops['xla_cost_analysis_train_step_per_image'] = bare.flops_per_image
  results['flops'] = flops
  results['compile_s'] = dict(bench_compile(exp, params, eval_images, ll_num_samples),
                              bare_step_s=bare.compile_s)

  results['machine']['loadavg_before_training'] = list(os.getloadavg())
  with tempfile.TemporaryDirectory() as workdir:
    library = LibraryStep(config, workdir)
    training = bench_training(config, {'bare': bare, 'library_step': library}, repeats, seconds)
    library.close()
  memory['maxrss_mib_after_training'] = _maxrss_mib()
  results['train'] = _train_summary(training, flops, results['matmul'])
  if input_workers:
    results['input'] = bench_input(config, input_workers, repeats, seconds)
    step_rate = results['train']['bare']['images_per_sec']
    for row in results['input']['workers'].values():
      row['ratio_to_bare_step'] = row['images_per_sec'] / step_rate
      row['ratio_to_loop'] = row['images_per_sec'] / results['train']['loop']['images_per_sec']

  # With the parameters the bare step has trained meanwhile, so that log p(x) is
  # a number one can sanity-check (the speed does not depend on it).
  results['log_likelihood'] = bench_log_likelihood(
      exp, bare.params, eval_images, ll_num_samples, ll_num_images, repeats, seconds)
  results['elbo_eval'] = bench_elbo_eval(exp, bare.params, eval_images)
  memory['maxrss_mib_after_eval'] = _maxrss_mib()

  # The decoder runs K times per image; the encoder once.
  decoder = sum(l['forward_flops_per_image'] for l in layers if l['name'].startswith('decoder'))
  ll = results['log_likelihood']
  ll['fraction_of_peak'] = (ll['images_per_sec'] * ll_num_samples * decoder
                            / (results['matmul']['peak_gflops'] * 1e9))

  results['checkpoint'] = bench_checkpoint(experiment.init_state(exp), repeats)

  if compare_seeds > 1:
    results['seeds'] = bench_seeds(config, compare_seeds, repeats, seconds)

  memory['peak_maxrss_mib'] = _maxrss_mib()
  memory['device_memory_stats'] = jax.devices()[0].memory_stats()
  results['machine']['loadavg_end'] = list(os.getloadavg())
  return results


def bench_startup(config_args, config, runs=2):
  """Seconds from launching `python -m vae_jax.main` to its first logged training call,
  with an empty user cache (cold: the dataset decoded, every program compiled) and
  then with the cache that run left (warm: both read back), each in a new workdir.

  `config_args` are the benchmark's own --config and --config.* arguments; the run
  is one call of train.steps_per_call steps, logged, then its final evaluation.
  """
  per_call = config.train.steps_per_call
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE'))}
  env.pop('VAE_JAX_COMPILATION_CACHE', None)
  times = []
  with tempfile.TemporaryDirectory() as root:
    env['VAE_JAX_CACHE_DIR'] = os.path.join(root, 'cache')
    for i in range(runs):
      workdir = os.path.join(root, f'run{i}')
      command = [sys.executable, '-m', 'vae_jax.main', *config_args, f'--workdir={workdir}',
                 '--config.train.num_epochs=0', f'--config.train.num_steps={per_call}',
                 f'--config.train.log_every_steps={per_call}',
                 f'--config.train.eval_every_steps={per_call}',
                 f'--config.train.checkpoint_every_steps={per_call}']
      launched = time.time()
      result = subprocess.run(command, env=env, capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      if result.returncode != 0:
        raise RuntimeError(f'startup run failed: {result.stderr[-2000:]}')
      first = vlog.read_metrics(workdir, 'train')[0]
      times.append(first['time'] - launched)
  return {'cold_s': times[0], 'warm_s': min(times[1:]), 'steps_in_first_call': per_call}


def bench_training(config, steps, repeats, seconds):
  """The real loop, run LOOP_TURNS times, each run between two timings of the steps.

  The bare and library steps are timed in turns before the first run and after
  every run, so each run of the loop has a timing of the bare step on either
  side: load that changes over tens of seconds (other processes, or other
  machines on the same host) then cancels out of the loop / bare ratio.
  """
  batch = config.train.batch_size
  brackets = [_alternating_rates(steps, repeats, seconds / 4)]
  loops = []
  for _ in range(LOOP_TURNS):
    steps_per_sec = np.median(brackets[-1][0]['bare']) / batch
    loops.append(bench_loop(config, steps_per_sec, repeats, 2 * seconds / LOOP_TURNS))
    brackets.append(_alternating_rates(steps, repeats, seconds / 4))
  return {'loops': loops, 'brackets': brackets}


def _around(brackets, turn, name):
  """The median rate of a step in the two timings on either side of loop run `turn`."""
  return float(np.median(brackets[turn][0][name] + brackets[turn + 1][0][name]))


def _step_rates(brackets, name):
  rates = [rate for bracket, _ in brackets for rate in bracket[name]]
  return {
      'images_per_sec': float(np.median(rates)),
      'repeats_images_per_sec': rates,
      'cores_used': float(np.mean([cores for _, cores in brackets])),
  }


def _loop_rates(loops):
  """The runs of the loop pooled: the median and the mean over all their steady intervals."""
  steady = [rate for loop in loops for rate in loop['repeats_images_per_sec']]
  first = loops[0]
  return {
      'images_per_sec': float(np.median(steady)),
      'mean_images_per_sec': len(steady) / sum(1.0 / rate for rate in steady),
      'repeats_images_per_sec': steady,
      'cores_used': float(np.mean([loop['cores_used'] for loop in loops])),
      'num_steps': first['num_steps'],
      'log_every_steps': first['log_every_steps'],
      'checkpoint_every_steps': first['checkpoint_every_steps'],
      'checkpoints_timed': sum(loop['checkpoints_timed'] for loop in loops),
      'first_interval_overhead_s': float(np.median(
          [loop['first_interval_overhead_s'] for loop in loops])),
      'runs': loops,
  }


def _train_summary(training, flops, matmul):
  """Loop, library step and bare step: rates, ratios and fractions of the roofline."""
  loops, brackets = training['loops'], training['brackets']
  loop = _loop_rates(loops)
  library, bare = _step_rates(brackets, 'library_step'), _step_rates(brackets, 'bare')
  turns = range(len(loops))
  peak = matmul['peak_gflops'] * 1e9
  per_image = flops['train_step_per_image']
  summary = {
      'loop': loop,
      'library_step': library,
      'bare': bare,
      # Each run of the loop against the steps timed just before and after it.
      'overhead_ratio': float(np.median(
          [loops[t]['images_per_sec'] / _around(brackets, t, 'bare') for t in turns])),
      'loop_vs_library_step_ratio': float(np.median(
          [loops[t]['images_per_sec'] / _around(brackets, t, 'library_step') for t in turns])),
      # Library step / bare step, repeat by repeat, as they were timed in turns.
      'step_ratio': float(np.median(np.divide(library['repeats_images_per_sec'],
                                              bare['repeats_images_per_sec']))),
      'roofline_images_per_sec': peak / per_image,
      'loop_fraction_of_roofline': loop['images_per_sec'] * per_image / peak,
      'library_step_fraction_of_roofline': library['images_per_sec'] * per_image / peak,
      'bare_fraction_of_roofline': bare['images_per_sec'] * per_image / peak,
  }
  if 'layer_shapes_images_per_sec' in matmul:
    summary['loop_fraction_of_layer_shapes_roofline'] = (
        loop['images_per_sec'] / matmul['layer_shapes_images_per_sec'])
  return summary


def _machine():
  return {
      'platform': platform.platform(),
      'processor': _cpu_model(),
      'cpu_count': os.cpu_count(),
      'jax': jax.__version__,
      'device': str(jax.devices()[0]),
      'device_count': jax.device_count(),
      'loadavg_start': list(os.getloadavg()),
  }


def _cpu_model():
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor()


def summary_lines(results):
  """The headline numbers, one per line."""
  t, ll, m, cs = results['train'], results['log_likelihood'], results['matmul'], results['compile_s']
  lines = [
      f"matmul peak {m['peak_gflops']:.0f} GFLOP/s ({m['peak_shape']}); "
      f"train step {results['flops']['train_step_per_image'] / 1e6:.2f} MFLOP/image -> "
      f"roofline {t['roofline_images_per_sec']:,.0f} images/s",
      f"train: loop {t['loop']['images_per_sec']:,.0f} images/s, bare "
      f"{t['bare']['images_per_sec']:,.0f} images/s; timed in turns: loop/bare "
      f"{t['overhead_ratio']:.3f}, library step/bare {t['step_ratio']:.3f}; "
      f"{100 * t['loop_fraction_of_roofline']:.1f}% of roofline; cores busy: loop "
      f"{t['loop']['cores_used']:.2f}, bare {t['bare']['cores_used']:.2f}",
      f"compile: train step {cs['train_step_s']:.2f} s, ELBO eval {cs['elbo_eval_s']:.2f} s, "
      f"log p(x) {cs['log_likelihood_s']:.2f} s",
      f"log p(x), K={ll['num_samples']}: {ll['images_per_sec']:.1f} images/s -> "
      f"{ll['minutes_for_10000_images']:.1f} min for 10,000 images",
      f"peak memory (maxrss) {results['memory']['peak_maxrss_mib']:,.0f} MiB; load average "
      f"{results['machine']['loadavg_start'][0]:.2f} -> {results['machine']['loadavg_end'][0]:.2f}",
  ]
  ck = results['checkpoint']
  lines.append(
      f"checkpoint of {ck['state_mib']:.1f} MiB with / without checksums: save "
      f"{ck['verified']['save_committed_s'] * 1e3:.0f} / "
      f"{ck['unverified']['save_committed_s'] * 1e3:.0f} ms "
      f"(x{ck['ratios']['save_committed_s']:.2f}; the loop waits "
      f"{ck['verified']['save_call_s'] * 1e3:.0f} / {ck['unverified']['save_call_s'] * 1e3:.0f} "
      f"ms), restore {ck['verified']['restore_s'] * 1e3:.0f} / "
      f"{ck['unverified']['restore_s'] * 1e3:.0f} ms (x{ck['ratios']['restore_s']:.2f})")
  if 'startup' in results:
    st = results['startup']
    lines.append(f"launch to first logged training call ({st['steps_in_first_call']} steps): "
                 f"{st['cold_s']:.1f} s with an empty cache, {st['warm_s']:.1f} s warm")
  if 'input' in results:
    rows = results['input']['workers']
    lines.append('streaming input alone (' + results['input']['dataset'] + ', decoding '
                 'included): ' + ', '.join(
                     f"{w} worker(s) {r['images_per_sec']:,.0f} images/s "
                     f"(x{r['ratio_to_bare_step']:.2f} the bare step)" for w, r in rows.items()))
  if 'seeds' in results:
    s = results['seeds']
    lines.append(
        f"{s['num_seeds']} seeds vmapped: {s['vmapped_images_per_sec']:,.0f} images/s vs "
        f"{s['separate_images_per_sec']:,.0f} for separate runs -> {s['speedup']:.2f}x; "
        f"setup + first call {s['vmapped_setup_and_first_call_s']:.1f} s once vs "
        f"{s['separate_setup_and_first_call_s']:.1f} s per separate run")
  return lines


def main(argv):
  fv, config = _flags(argv)
  results = run(config, repeats=fv.repeats, seconds=fv.seconds,
                ll_num_samples=fv.ll_num_samples, ll_num_images=fv.ll_num_images,
                matmul_sizes=tuple(int(size) for size in fv.matmul_sizes),
                compare_seeds=fv.compare_seeds,
                input_workers=tuple(int(w) for w in fv.input_workers),
                startup_args=([a for a in argv[1:] if a.startswith('--config')]
                              if fv.startup else None))
  results['command'] = ' '.join(argv)
  results['config'] = config.to_dict()
  for line in summary_lines(results):
    vlog.info(line)
  if fv.output:
    os.makedirs(os.path.dirname(os.path.abspath(fv.output)), exist_ok=True)
    with open(fv.output, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2, default=list)
      f.write('\n')
  return results


if __name__ == '__main__':
  main(sys.argv)
