"""TrainState, the compiled train step, and the training loop.

The loop owns every side effect (files, logs, checkpoints, signals); the step is
a pure function of (state, dataset, indices, key). It never computes a loss
itself: that is objectives.py's job.
"""

import dataclasses
import json
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import evaluate
from vae_jax import logging as vlog
from vae_jax import models
from vae_jax import objectives
from vae_jax import optim
from vae_jax import sampling
from vae_jax import sharding
from vae_jax import workdir as workdir_lib


class NonFiniteError(RuntimeError):
  """The loss or its gradient became NaN/inf; the message names the step."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any

  def to_dict(self):
    return {'step': self.step, 'params': self.params, 'opt_state': self.opt_state}


@dataclasses.dataclass
class Experiment:
  """Everything built from a config that the loop, the benchmark and generate share."""
  config: ml_collections.ConfigDict
  dataset: data.Dataset
  model: models.VAE
  tx: optax.GradientTransformation
  num_steps: int
  steps_per_epoch: int
  keys: dict


def resolve_num_steps(train_config, num_train):
  """train.num_epochs (when > 0) wins over train.num_steps."""
  steps_per_epoch = num_train // train_config.batch_size
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(
        f'config.train.batch_size: {train_config.batch_size} is larger than the '
        f'{num_train} training examples')
  if train_config.num_epochs > 0:
    return int(round(train_config.num_epochs * steps_per_epoch)), steps_per_epoch
  return train_config.num_steps, steps_per_epoch


def root_keys(seed):
  """Named, independent streams from one seed: params init, training, evaluation."""
  init, train, evaluation, sample = jax.random.split(jax.random.key(seed), 4)
  return {'init': init, 'train': train, 'eval': evaluation, 'sample': sample}


def build_experiment(config) -> Experiment:
  dataset = data.load(config.data)
  model = models.make_model(config.model, dataset.image_shape)
  num_steps, steps_per_epoch = resolve_num_steps(config.train, dataset.num_train)
  tx = optim.make_optimizer(config.optimizer, num_steps)
  return Experiment(config, dataset, model, tx, num_steps, steps_per_epoch,
                    root_keys(config.seed))


def init_state(exp: Experiment) -> TrainState:
  x = jnp.zeros((1,) + tuple(exp.dataset.image_shape), jnp.float32)
  init_key, sample_key = jax.random.split(exp.keys['init'])
  params = exp.model.init({'params': init_key}, x, sample_key)['params']
  return TrainState(jnp.zeros((), jnp.int32), params, exp.tx.init(params))


def scan_unroll(config):
  """How many steps of the scanned train step XLA sees unrolled.

  XLA:CPU runs convolutions inside a while loop ~35x slower than outside one
  (measured: 4 steps of the conv VAE at batch 100, 18.9 s rolled vs 0.49 s
  unrolled), so conv models on CPU unroll the whole call; MLPs keep the rolled
  loop, which compiles in constant time whatever steps_per_call is.
  """
  if config.model.architecture == 'conv' and jax.default_backend() == 'cpu':
    return True
  return 1


def make_train_step(exp: Experiment):
  """(state, train_images, indices [S, B], key) -> (state, per-step metrics [S]).

  Runs S steps in one `lax.scan`. The key of step s is fold_in(key, s), split
  into the binarisation draw and the reparameterisation draw, so a step's
  randomness does not depend on how steps are grouped into calls. A step whose
  loss or gradient is not finite leaves params and optimiser state unchanged
  and reports `finite = 0`; the loop decides what to do about it.
  """
  c = exp.config
  loss_fn = objectives.make_loss_fn(
      exp.model, c.objective.name, beta=c.objective.beta,
      warmup_steps=c.objective.kl_warmup_steps, free_bits=c.objective.free_bits,
      num_samples=c.objective.num_samples)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  binarization = exp.dataset.binarization

  def train_step(state, images, indices, key):
    def one_step(state, idx):
      data_key, sample_key = jax.random.split(jax.random.fold_in(key, state.step))
      x = data.to_float(images[idx], binarization, data_key)
      (loss, metrics), grads = grad_fn(state.params, x, sample_key, state.step)
      finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))

      def apply(operands):
        params, opt_state = operands
        updates, opt_state = exp.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      params, opt_state = jax.lax.cond(
          finite, apply, lambda operands: operands, (state.params, state.opt_state))
      metrics = dict(metrics, finite=finite.astype(jnp.float32))
      return TrainState(state.step + 1, params, opt_state), metrics

    return jax.lax.scan(one_step, state, indices, unroll=scan_unroll(exp.config))

  return jax.jit(train_step, donate_argnums=(0,))


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between calls (save, then exit 0)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. a test runner thread): no handler.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(chunks):
  """Per-step metrics of several calls -> their means over finite steps."""
  stacked = {k: np.concatenate([np.asarray(c[k]).reshape(-1) for c in chunks]) for k in chunks[0]}
  finite = stacked.pop('finite') > 0
  means = {k: float(v[finite].mean()) if finite.any() else float('nan') for k, v in stacked.items()}
  return means, finite


def _nonfinite_check(finite, first_step, config, run_so_far):
  """Returns the updated run of consecutive non-finite steps; raises when it must stop."""
  for offset, ok in enumerate(finite):
    run_so_far = 0 if ok else run_so_far + 1
    if not ok and config.train.nan_policy == 'stop':
      raise NonFiniteError(
          f'non-finite loss or gradient at step {first_step + offset}; stopping '
          '(the update was not applied; the last checkpoint is intact). Set '
          '--config.train.nan_policy=skip to skip such steps instead.')
    if run_so_far >= config.train.max_consecutive_nonfinite:
      raise NonFiniteError(
          f'{run_so_far} non-finite steps in a row, the last at step {first_step + offset} '
          f'(train.max_consecutive_nonfinite={config.train.max_consecutive_nonfinite}); stopping.')
  return run_so_far


class Trainer:
  """Holds the run's pieces so the loop below reads as a list of steps."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.exp = build_experiment(config)
    self.mesh = sharding.make_mesh()
    self.main = sharding.is_main_process()
    self.ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, 'checkpoints'), max_to_keep=config.train.max_checkpoints_to_keep)
    self.train_images = sharding.put_replicated(self.exp.dataset.train, self.mesh)
    self.eval_images = data.fixed_eval_images(self.exp.dataset, config.seed)
    self.step_fn = make_train_step(self.exp)
    self.last_saved_step = None
    self.writer = vlog.MetricWriter(
        workdir, enabled=self.main, tensorboard=config.logging.tensorboard)

  def initial_state(self):
    state = sharding.put_replicated(init_state(self.exp), self.mesh)
    restored = self.ckpt.restore_latest_valid(state.to_dict())
    if restored is None:
      return state
    step, tree, _ = restored
    self.last_saved_step = step
    vlog.info(f'Resumed from {self.ckpt.directory} at step {step}.')
    return TrainState(**tree)

  def run_call(self, state, step, num):
    c = self.config.train
    indices = data.batch_indices_for_steps(
        self.config.seed, step, num, c.batch_size, self.exp.dataset.num_train)
    indices = sharding.put_batch(indices, self.mesh, batch_axis=1)
    return self.step_fn(state, self.train_images, indices, self.exp.keys['train'])

  def save(self, state, step, force=False):
    if step != self.last_saved_step:
      self.ckpt.save(step, state.to_dict(), metadata={'step': step}, force=force)
      self.last_saved_step = step

  def evaluate(self, params, step):
    metrics = evaluate.evaluate_elbo(
        self.exp.model, params, self.eval_images, self.exp.keys['eval'],
        batch_size=self.config.eval.batch_size)
    self.writer.write(step, 'eval', metrics)
    terms = ', '.join(f'{k} {v:.2f}' for k, v in metrics.items() if np.ndim(v) == 0)
    vlog.info(f'eval at step {step} ({self.config.data.eval_split}): {terms}')
    return metrics

  def save_images(self, params, step):
    if not self.main:
      return
    model, s = self.exp.model, self.config.sampling
    samples = sampling.prior_samples(
        model, params, self.exp.keys['sample'], s.num_samples, s.temperature)
    x = self.eval_images[:s.num_reconstructions]
    pairs = sampling.side_by_side(x, sampling.reconstructions(model, params, x))
    for name, images, columns in (('samples', samples, None), ('reconstructions', pairs, 16)):
      grid = vlog.image_grid(np.asarray(images), columns=columns)
      vlog.save_png(os.path.join(self.workdir, f'{name}.png'), grid)
      self.writer.write_image(step, name, grid)


def train_and_evaluate(config, workdir) -> dict:
  """Trains (or resumes) the run described by `config` in `workdir`.

  Returns the final evaluation metrics. Raises config.ConfigError,
  workdir.WorkdirError, data.DatasetError, checkpoint.CheckpointError or
  NonFiniteError with a message naming the field, file or step.
  """
  config_lib.validate(config)
  workdir = workdir_lib.prepare(workdir)
  workdir_lib.check_resume(workdir, config)
  trainer = Trainer(config, workdir)
  if trainer.main:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), config.to_dict())
    workdir_lib.record_versions(workdir)
  try:
    state = _train_loop(trainer)
    if state is None:  # Preempted: checkpoint saved, nothing else to do.
      return {}
    return _final_evaluation(trainer, state)
  finally:
    try:
      trainer.ckpt.close()  # Waits for the last save; raises if it failed.
    finally:
      trainer.writer.close()


def _train_loop(trainer: Trainer):
  config, exp = trainer.config, trainer.exp
  c = config.train
  state = trainer.initial_state()
  step = int(sharding.to_host(state.step))
  num_steps = exp.num_steps
  vlog.info(f'Training {config.model.architecture} VAE on {config.data.name}: '
            f'{models.count_params(state.params):,} params, {num_steps} steps '
            f'({exp.steps_per_epoch} per epoch), batch {c.batch_size}, '
            f'{jax.device_count()} device(s), from step {step}.')
  pending, first_pending, nonfinite_run = [], step, 0
  last_time, last_step = time.perf_counter(), step
  with _Preemption() as preemption:
    while step < num_steps:
      num = min(c.steps_per_call, num_steps - step)
      state, metrics = trainer.run_call(state, step, num)
      pending.append(metrics)
      step += num
      log_now = step % c.log_every_steps == 0 or step == num_steps
      save_now = step % c.checkpoint_every_steps == 0 or preemption.requested
      if log_now or save_now:
        means, finite = _mean_metrics(sharding.to_host(pending))
        nonfinite_run = _nonfinite_check(finite, first_pending, config, nonfinite_run)
        pending, first_pending = [], step
      if log_now:
        now = time.perf_counter()
        rate = (step - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, step
        trainer.writer.write(step, 'train', dict(means, steps_per_sec=rate))
        vlog.info(vlog.progress_line(step, num_steps, means, rate, c.batch_size))
      if step % c.eval_every_steps == 0 and step < num_steps:
        trainer.evaluate(state.params, step)
      if save_now:
        trainer.save(state, step)
      if preemption.requested:
        trainer.save(state, step, force=True)
        trainer.ckpt.wait_until_finished()
        vlog.info(f'SIGTERM: saved a checkpoint at step {step}; exiting. '
                  'Re-run the same command to resume.')
        return None
  trainer.save(state, step, force=True)
  # Committed before the final evaluation: a failed save stops the run before
  # it reports results, and a run killed during the evaluation keeps its state.
  trainer.ckpt.wait_until_finished()
  return state


def _final_evaluation(trainer: Trainer, state) -> dict:
  config, exp = trainer.config, trainer.exp
  step = int(sharding.to_host(state.step))
  metrics = trainer.evaluate(state.params, step)
  if config.eval.num_importance_samples:
    ll = evaluate.evaluate_log_likelihood(
        exp.model, state.params, trainer.eval_images, exp.keys['eval'],
        num_samples=config.eval.num_importance_samples,
        batch_size=config.eval.importance_batch_size,
        chunk_size=config.eval.importance_chunk_size)
    trainer.writer.write(step, 'eval', ll)
    metrics.update(ll)
  trainer.save_images(state.params, step)
  if trainer.main:
    workdir_lib.write_json(os.path.join(trainer.workdir, 'final_metrics.json'),
                           dict(metrics, step=step))
  vlog.info(f'Final held-out ELBO ({config.data.eval_split}, {len(trainer.eval_images)} '
            f'images, step {step}): {metrics["elbo"]:.2f} nats')
  return metrics
