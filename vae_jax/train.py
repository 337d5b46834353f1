"""The compiled train step and the training loop (the experiment they run: experiment.py).

The loop owns every side effect (files, logs, checkpoints, signals); the step is
a pure function of (state, dataset, indices, key). It never computes a loss
itself: that is objectives.py's job.
"""

import dataclasses
import os
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

import vae_jax
from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import disentanglement
from vae_jax import evaluate
from vae_jax import experiment
from vae_jax import logs as vlog
from vae_jax import models
from vae_jax import objectives
from vae_jax import optim
from vae_jax import replicas
from vae_jax import sampling
from vae_jax import sharding
from vae_jax import stream as stream_lib
from vae_jax import trackers
from vae_jax import workdir as workdir_lib


class NonFiniteError(RuntimeError):
  """The loss or its gradient became NaN/inf; the message names the step."""


def step_compiler_options(config) -> dict:
  """XLA options of the train step: with train.exact_replicas on CPU, no YNNPACK reductions.

  XLA:CPU hands some reductions (a bias gradient, a sum over the batch) to
  YNNPACK when they carry a leading replica axis and emits them itself when
  they do not; the two sum in different orders, so vmapped seeds would drift
  from single runs by an ulp per step. Keeping YNNPACK to matmuls and
  convolutions gives both programs the same reductions (`tests/test_seeds.py`)
  at some speed at small batches (README, performance table). Single runs and
  vmapped ones must agree on the setting to agree bit for bit. On the jaxlib
  versions that miscompile some YNNPACK fusions, `import vae_jax` sets the same
  restriction for every program (vae_jax/__init__.py), so there False changes
  nothing unless VAE_JAX_KEEP_XLA_DEFAULTS=1.
  """
  if jax.default_backend() != 'cpu' or not config.train.exact_replicas:
    return {}
  return {'xla_cpu_experimental_ynn_fusion_type': vae_jax.YNN_DOTS_AND_CONVOLUTIONS}


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


def make_train_step(exp: experiment.Experiment):
  """(state, train_images, indices [T, B], key, train_labels=None) -> (state, metrics [T]).

  Streamed data (data.input 'stream'): (state, batches [T, B, H, W, C], None, key,
  batch labels [T, B] or None), the batches those indices would have gathered.

  Runs T steps in one `lax.scan`. The key of step s is fold_in(key, s), split
  into the binarisation draw and the reparameterisation draw, so a step's
  randomness does not depend on how steps are grouped into calls. A step whose
  loss or gradient is not finite leaves params and optimiser moments unchanged
  and reports `finite = 0`; the loop decides what to do about it. So does a
  finite step whose gradient norm reaches optimizer.skip_threshold (> 0),
  reporting `skipped = 1`. The
  optimiser's step counters (the leaves `replicas.shared_leaves` finds) advance on
  every step, applied or skipped, so the learning-rate schedule and bias
  correction follow the step number.

  With train.num_seeds = S > 1 the state is stacked (`replicas.stack`), indices
  are [S, T, B] (each replica's own data order), keys are [S] and metrics
  [S, T]: the same step, `jax.vmap`ped over the replicas.
  """
  c = exp.config
  loss_fn = objectives.loss_fn_of_config(exp.model, c.objective, exp.dataset.num_train)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  binarization = exp.dataset.binarization
  dequantize = exp.model.likelihood.dequantize
  multi = len(exp.seeds) > 1
  shared = exp.shared
  skip_threshold = float(c.optimizer.get('skip_threshold', 0.0))

  bits = exp.dataset.bits
  streamed = exp.dataset.streamed

  def train_step(state, images, indices, key, labels=None):
    def one_step(state, xs):
      data_key, sample_key = jax.random.split(jax.random.fold_in(key, state.step))
      if streamed:  # The batch itself, read by stream.py.
        batch, batch_labels = xs
      else:  # Its indices into the dataset held on device.
        batch, batch_labels = images[xs], None if labels is None else labels[xs]
      x = data.to_float(batch, binarization, data_key, dequantize=dequantize, bits=bits)
      (loss, metrics), grads = grad_fn(state.params, x, sample_key, state.step, batch_labels)
      grad_norm = optax.global_norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      # VDVAE's skip: a finite update whose gradient norm is far above normal is not applied.
      ok = finite & (grad_norm < skip_threshold) if skip_threshold else finite

      def apply(operands):
        params, opt_state = operands
        updates, new_opt_state = exp.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state

      def skip(operands):
        # The update's shared leaves (counters) advance; XLA drops the rest of it.
        params, opt_state = operands
        _, new_opt_state = exp.tx.update(grads, opt_state, params)
        return params, replicas.select(False, new_opt_state, opt_state, shared)

      def apply_where_ok(operands):
        (params, opt_state), (new_params, new_opt_state) = operands, apply(operands)
        return (jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_params, params),
                replicas.select(ok, new_opt_state, opt_state, shared))

      # Vmapped over replicas, the update runs under a lax.cond on a predicate
      # they all share (every replica finite), so it stays a cond: with a
      # per-replica predicate vmap would make it a select of both branches,
      # and XLA simplifies the update's arithmetic differently there (Adam's
      # bias correction becomes a multiplication by a reciprocal), one
      # rounding away from the single run's cond. In the rare step where some
      # replica is not finite, each one keeps or skips its own update. A
      # single run skips the whole update: its other branch reads nothing, so
      # no copy of the state is made for it.
      if multi:
        params, opt_state = jax.lax.cond(jax.lax.pmin(ok, replicas.AXIS), apply,
                                         apply_where_ok, (state.params, state.opt_state))
      else:
        params, opt_state = jax.lax.cond(ok, apply, skip, (state.params, state.opt_state))
      metrics = dict(metrics, finite=finite.astype(jnp.float32), grad_norm=grad_norm)
      if skip_threshold:
        metrics['skipped'] = (finite & ~ok).astype(jnp.float32)
      return experiment.TrainState(state.step + 1, params, opt_state), metrics

    xs = (images, labels) if streamed else indices
    return jax.lax.scan(one_step, state, xs, unroll=scan_unroll(exp.config))

  step_fn = train_step
  if multi:
    axes = replicas.state_axes(experiment.abstract_state(exp), shared)
    # In memory the replicas share the dataset and each has its indices; streamed,
    # each has its batches (and labels) and there are no indices.
    in_axes = (axes, 0, None, 0, 0) if streamed else (axes, None, 0, 0, None)
    vmapped = jax.vmap(train_step, in_axes=in_axes, out_axes=(axes, 0),
                       axis_name=replicas.AXIS)

    def step_fn(state, images, indices, key, labels=None):
      return vmapped(state, images, indices, key, labels)
  return jax.jit(step_fn, donate_argnums=(0,),
                 compiler_options=step_compiler_options(exp.config))


# The checkpoint metadata key of the data stream's position (stream.Stream.state).
STREAM_METADATA = 'data_stream'


class _Preemption:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop checks between calls: it
  saves, then stops. A second Ctrl-C aborts at once (KeyboardInterrupt), saving nothing."""

  def __init__(self):
    self.requested = False
    self.interrupted = False  # A Ctrl-C among the signals: the run ends in KeyboardInterrupt.
    self._previous = {}

  def __enter__(self):
    try:
      self._previous = {sig: signal.signal(sig, self._handle)
                        for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # Not the main thread (e.g. a test runner thread): no handler.
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.interrupted:
        raise KeyboardInterrupt('a second Ctrl-C: stopped without saving')
      self.interrupted = True
      vlog.info('Ctrl-C: saving a checkpoint after this call, then stopping '
                '(Ctrl-C again stops at once, without saving).')
    self.requested = True

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  @property
  def name(self):
    return 'Ctrl-C' if self.interrupted else 'SIGTERM'


def _mean_metrics(chunks):
  """Per-step metrics of several calls -> (means over finite steps, finite [T], applied [T]).

  'skipped' (steps whose update the skip threshold refused) is a count, not a mean.
  """
  stacked = {k: np.concatenate([np.asarray(c[k]).reshape(-1) for c in chunks]) for k in chunks[0]}
  finite = stacked.pop('finite') > 0
  skipped = stacked.pop('skipped', np.zeros_like(finite, dtype=np.float32)) > 0
  means = {k: float(v[finite].mean()) if finite.any() else float('nan') for k, v in stacked.items()}
  if skipped.any():
    means['skipped'] = float(skipped.sum())
  return means, finite, finite & ~skipped


def _nonfinite_check(finite, applied, first_step, config, run_so_far, where=''):
  """Returns the updated run (steps, of which skipped) without an update; raises when it must stop.

  A step is not applied when its loss or gradient is not finite or its gradient
  norm reached optimizer.skip_threshold. `where` (e.g. ' (seed 3)') names the
  replica in the message.
  """
  steps, skipped = run_so_far
  for offset, (ok, done) in enumerate(zip(finite, applied)):
    steps, skipped = (0, 0) if done else (steps + 1, skipped + bool(ok))
    if not ok and config.train.nan_policy == 'stop':
      raise NonFiniteError(
          f'non-finite loss or gradient at step {first_step + offset}{where}; stopping '
          '(the update was not applied; the last checkpoint is intact). Set '
          '--config.train.nan_policy=skip to skip such steps instead.')
    if steps >= config.train.max_consecutive_nonfinite:
      what = (f'{steps} non-finite steps in a row' if not skipped else
              f'{steps} steps in a row without an update ({skipped} skipped: gradient norm '
              f'at or above optimizer.skip_threshold={config.optimizer.skip_threshold})')
      raise NonFiniteError(
          f'{what}{where}, the last at step {first_step + offset} '
          f'(train.max_consecutive_nonfinite={config.train.max_consecutive_nonfinite}); stopping.')
  return steps, skipped


@dataclasses.dataclass
class Replica:
  """One seed's run: its keys, held-out images, and where its files go.

  A single run has one replica living in the workdir itself; with
  train.num_seeds = S > 1 replica i lives in DIR/seed_<seed + i>, a complete
  single-run workdir (config.json with that seed and num_seeds = 1,
  checkpoints, metrics, images), so evaluate_workdir, generate, the aggregator,
  and even `main` resuming it alone, treat it like any other run.
  """
  seed: int
  workdir: str
  keys: dict
  eval_images: np.ndarray
  eval_labels: np.ndarray | None
  ckpt: checkpoint.Checkpointer
  writer: vlog.MetricWriter
  last_saved_step: int | None = None


class Trainer:
  """Holds the run's pieces so the loop below reads as a list of steps. A single run and
  an S-seed run go through the same code: what differs (one workdir or one per seed,
  stacking, the summary over seeds) is `replicas.Layout`'s to answer."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.exp = experiment.build_experiment(config)
    self.mesh = sharding.make_mesh()
    self.main = sharding.is_main_process()
    self.layout = replicas.Layout(self.exp.seeds, self.exp.shared)
    self.replicas = [self._replica(seed) for seed in self.exp.seeds]
    self.stream = None  # Streamed data: opened by initial_state, at the step it resumes.
    if self.exp.dataset.streamed:
      self.train_images = self.train_labels = None
    else:
      self.train_images = sharding.put_replicated(self.exp.dataset.train, self.mesh)
      labels = experiment.labels_of(self.exp, self.exp.dataset.train_labels)
      self.train_labels = None if labels is None else sharding.put_replicated(labels, self.mesh)
    self.train_keys = self.layout.join([r.keys['train'] for r in self.replicas])
    self.step_fn = make_train_step(self.exp)
    self.record_final = True  # False for a finished run launched again (set by the loop).

  def _replica(self, seed):
    c = self.config
    workdir, single = self.layout.workdir(self.workdir, seed), self.layout.config(c, seed)
    if workdir != self.workdir:  # A replica's own workdir: made and checked here.
      workdir_lib.prepare(workdir)
      workdir_lib.check_resume(workdir, single)
    identity = workdir_lib.run_identity(single, hint=(
        'Move that step out of checkpoints/ (or train in another --workdir); if the change '
        'is intended, pass --config.resume.allow_config_change=True.'))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), identity=identity,
                                   max_to_keep=c.train.max_checkpoints_to_keep)
    writer = vlog.MetricWriter(
        workdir, enabled=self.main, tensorboard=c.logging.tensorboard,
        trackers=trackers.parse(c.logging.trackers), project=c.logging.project,
        run_name=self.layout.run_name(self.workdir, seed),
        config=config_lib.flatten(single.to_dict()))
    dequantize = self.exp.model.likelihood.dequantize
    return Replica(seed, workdir, experiment.root_keys(seed),
                   data.fixed_eval_images(self.exp.dataset, seed, dequantize=dequantize),
                   experiment.labels_of(self.exp, self.exp.dataset.eval_labels), ckpt, writer)

  def write_configs(self):
    """config.json and versions.json of the run and of each replica (process 0)."""
    if not self.main:
      return
    workdir_lib.write_json(os.path.join(self.workdir, workdir_lib.CONFIG_FILE),
                           self.config.to_dict())
    workdir_lib.record_versions(self.workdir)
    workdir_lib.record_launch(self.workdir, jax.devices())
    for r in self.replicas:
      if r.workdir != self.workdir:
        workdir_lib.write_json(os.path.join(r.workdir, workdir_lib.CONFIG_FILE),
                               self.layout.config(self.config, r.seed).to_dict())
        workdir_lib.record_versions(r.workdir)

  def initial_state(self):
    """Each replica's latest restorable checkpoint (the newest step they share), else
    their step-0 states. A restore needs only the state's shapes, not its values."""
    restored = None
    if any(r.ckpt.all_steps() for r in self.replicas):
      target = experiment.abstract_state(self.exp, sharding.replicated(self.mesh))
      restored = _restore_common_step(self.replicas, [target] * len(self.replicas))
    if restored is None:
      states = [experiment.init_state(self.exp, r.seed) for r in self.replicas]
      targets = [sharding.put_replicated(s, self.mesh) for s in states]
      step, metadata = 0, None
    else:
      step, targets, metadata = restored
      for r in self.replicas:
        r.last_saved_step = step
      vlog.info(f'Resumed from {self.layout.checkpoints(self.workdir)} at step {step}.')
    if self.exp.dataset.streamed:
      self.open_stream(step, (metadata or {}).get(STREAM_METADATA))
    return sharding.put_replicated(self.layout.stack(targets), self.mesh)

  def open_stream(self, step, saved=None):
    """The streamed training data from `step` (the grain state `saved` in the checkpoint
    restored where it applies)."""
    c = self.config
    self.stream = stream_lib.Stream(
        self.exp.dataset.train_source, seeds=self.exp.seeds, batch_size=c.train.batch_size,
        rows=sharding.process_rows(self.mesh, c.train.batch_size),
        num_steps=self.exp.num_steps, first_step=step, workers=c.data.workers,
        prefetch_steps=c.data.prefetch * c.train.steps_per_call,
        process_count=jax.process_count(), saved=saved)
    if self.stream.note:
      vlog.info(f'Note: {self.stream.note}.')

  def run_call(self, state, step, num):
    c = self.config.train
    if self.stream is not None:
      images, labels = self.stream.take(num)  # [S, T, R, ...]: each seed's rows of T steps.
      images, labels = (
          None if a is None else sharding.put_local_batch(
              self.layout.join(list(a)), self.mesh, self.layout.batch_axis, c.batch_size)
          for a in (images, experiment.labels_of(self.exp, labels)))
      return self.step_fn(state, images, None, self.train_keys, labels)
    indices = [data.batch_indices_for_steps(seed, step, num, c.batch_size,
                                            self.exp.dataset.num_train)
               for seed in self.exp.seeds]
    indices = sharding.put_batch(self.layout.join(indices), self.mesh,
                                 batch_axis=self.layout.batch_axis)
    return self.step_fn(state, self.train_images, indices, self.train_keys, self.train_labels)

  def replica_states(self, state):
    """[(replica, its single-run state)]."""
    return list(zip(self.replicas, self.layout.unstack(state)))

  def replica_params(self, params):
    """[(replica, its parameters)]."""
    return list(zip(self.replicas, self.layout.split(params)))

  def save(self, state, step, force=False):
    metadata = None if self.stream is None else {STREAM_METADATA: self.stream.state()}
    for r, s in self.replica_states(state):
      if step != r.last_saved_step:
        r.ckpt.save(step, s.to_dict(), force=force, metadata=metadata)
        r.last_saved_step = step

  def wait_for_saves(self):
    for r in self.replicas:
      r.ckpt.wait_until_finished()

  def close(self):
    """Waits for the last saves (raising if one failed), then closes the logs and the stream."""
    try:
      for r in self.replicas:
        r.ckpt.close()
    finally:
      for r in self.replicas:
        r.writer.close()
      if self.stream is not None:
        self.stream.close()

  def evaluate(self, params, step, record=True):
    """Held-out ELBO of every replica, logged per replica (with `record`, also written to
    metrics.jsonl and TensorBoard); returns a list of dicts."""
    results = []
    for r, replica_params in self.replica_params(params):
      metrics = evaluate.evaluate_elbo(self.exp.model, replica_params, r.eval_images,
                                       r.keys['eval'], batch_size=self.config.eval.batch_size,
                                       labels=r.eval_labels)
      if record:
        r.writer.write(step, 'eval', dict(metrics, epoch=step / self.exp.steps_per_epoch))
      results.append(metrics)
    note, numbers = self.layout.describe(results)
    vlog.info(f'eval at step {step} ({self.config.data.eval_split}{note}): {numbers}')
    return results

  def save_images(self, params, step, record=True):
    """samples.png and reconstructions.png of every replica (and, with `record`, the
    same grids in TensorBoard at `step`)."""
    if not self.main:
      return
    # Host copies: every process must run each computation over global arrays,
    # and only process 0 gets here.
    params = sharding.to_host(params)
    model, s = self.exp.model, self.config.sampling
    for r, replica_params in self.replica_params(params):
      samples = sampling.prior_samples(model, replica_params, r.keys['sample'], s.num_samples,
                                       s.temperature, class_rows(model, s.num_samples))
      x = r.eval_images[:s.num_reconstructions]
      labels = None if r.eval_labels is None else r.eval_labels[:s.num_reconstructions]
      pairs = sampling.side_by_side(x, sampling.reconstructions(model, replica_params, x,
                                                                labels=labels))
      for name, images, columns in (('samples', samples, None), ('reconstructions', pairs, 16)):
        grid = vlog.image_grid(np.asarray(images), columns=columns)
        vlog.save_png(os.path.join(r.workdir, f'{name}.png'), grid)
        if record:
          r.writer.write_image(step, name, grid)


def class_rows(model, num):
  """Labels 0, 1, ..., C-1, 0, ... for `num` samples of a conditional model; None otherwise."""
  return jnp.arange(num) % model.num_classes if model.num_classes else None


def _restore_common_step(replicas, targets):
  """(step, restored states, the first one's metadata) at the newest step every replica
  can restore, or None.

  One replica: its latest readable step (unreadable ones are set aside). Several:
  a run stopped between two replicas' saves may leave the last step in only
  some of them; the newest step all of them hold is restored, each replica's
  unreadable steps set aside as for a single run.
  """
  if len(replicas) == 1:
    restored = replicas[0].ckpt.restore_latest_valid(targets[0].to_dict())
    if restored is None:
      return None
    step, tree, metadata = restored
    return step, [experiment.TrainState(**tree)], metadata
  held = [set(r.ckpt.all_steps()) for r in replicas]
  if not any(held):
    return None
  while True:
    common = set.intersection(*held)
    if not common:
      raise checkpoint.CheckpointError(
          'the replicas hold no checkpoint step in common: ' + '; '.join(
              f'{r.ckpt.directory}: {sorted(h)}' for r, h in zip(replicas, held)))
    step = max(common)
    states, metadata = [], []
    for r, h, target in zip(replicas, held, targets):
      try:
        _, tree, saved = r.ckpt.restore(target.to_dict(), step)
      except checkpoint.CorruptCheckpointError as e:
        logging.warning('%s; setting it aside.', e)
        r.ckpt.set_aside(step)
        h.discard(step)
        break
      states.append(experiment.TrainState(**tree))
      metadata.append(saved)
    else:
      return step, states, metadata[0]


def train_and_evaluate(config, workdir) -> dict:
  """Trains (or resumes) the run described by `config` in `workdir`.

  Returns the final evaluation metrics (with train.num_seeds > 1: their means
  over the replicas, and each replica's under 'per_seed'). Raises
  config.ConfigError, workdir.WorkdirError, data.DatasetError,
  checkpoint.CheckpointError or NonFiniteError with a message naming the field,
  file or step.
  """
  config_lib.validate(config)
  if config.objective.name == 'code_prior' and not workdir_lib.has_committed_step(workdir):
    experiment.check_trained_vq_vae(config)  # Before the workdir is made: a wrong path costs nothing.
  workdir = workdir_lib.prepare(workdir)
  with workdir_lib.hold_lock(workdir, sharding.is_main_process(),
                             agree=lambda ok: not sharding.any_process(not ok)):
    workdir_lib.check_resume(workdir, config)
    trainer = Trainer(config, workdir)
    try:  # Closing the writers (and trackers) whatever goes wrong from here.
      check_schedule_length(workdir, config, trainer.exp)
      trainer.write_configs()
      state = _train_loop(trainer)
      if state is None:  # Preempted: checkpoint saved, nothing else to do.
        return {}
      return _final_evaluation(trainer, state)
    finally:
      trainer.close()


def check_schedule_length(workdir, config, exp):
  """A resumed run under a schedule shaped by its length (cosine, burda) keeps its length,
  or says that its learning-rate curve changes (resume.allow_config_change)."""
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if (config.optimizer.schedule not in optim.LENGTH_SHAPED or not os.path.exists(path)
      or not workdir_lib.has_committed_step(workdir)):
    return
  saved = workdir_lib.load_config(workdir)
  saved_steps, _ = experiment.resolve_num_steps(saved.train, exp.dataset.num_train)
  if saved_steps == exp.num_steps or saved.optimizer.schedule != config.optimizer.schedule:
    return  # Unchanged, or a schedule change check_resume has already listed.
  what = (f"optimizer.schedule {config.optimizer.schedule!r} is shaped by the run's length: "
          f'{saved_steps} steps when it started, {exp.num_steps} now, so the learning rate '
          'would differ at every step after the checkpoint')
  if not config.resume.allow_config_change:
    raise workdir_lib.WorkdirError(
        f'refusing to resume {workdir}: {what}. Keep train.num_steps / train.num_epochs, or '
        'pass --config.resume.allow_config_change=True to continue on the new curve.')
  vlog.info(f'Resuming on a new learning-rate curve: {what}.')


def _train_loop(trainer: Trainer):
  config, exp = trainer.config, trainer.exp
  c = config.train
  num_steps = exp.num_steps
  state = trainer.initial_state()
  step = int(sharding.to_host(state.step))
  # A finished run launched again only reports: its final point is on record already.
  trainer.record_final = step < num_steps
  seeds = trainer.layout.vmapped_note()
  kind = 'VQ-VAE' if config.model.posterior == 'vq' else f'{config.model.architecture} VAE'
  vlog.info(f'Training {kind} on {config.data.name}: '
            f'{models.count_params(trainer.replica_params(state.params)[0][1]):,} params, '
            f'{seeds}{num_steps} steps ({exp.steps_per_epoch} per epoch), batch '
            f'{c.batch_size}, {sharding.device_count()} device(s), from step {step}.')
  learning_rate = optim.learning_rate_fn(config.optimizer, num_steps)
  pending, first_pending = [], step
  nonfinite_runs = [(0, 0)] * len(exp.seeds)
  last_time, last_step = time.perf_counter(), step
  with _Preemption() as preemption:
    while step < num_steps:
      num = min(c.steps_per_call, num_steps - step)
      state, metrics = trainer.run_call(state, step, num)
      pending.append(metrics)
      step += num
      log_now = step % c.log_every_steps == 0 or step == num_steps
      # One process's SIGTERM stops every process at the same step (a collective
      # when there are several processes, a plain read otherwise).
      preempted = sharding.any_process(preemption.requested)
      save_now = step % c.checkpoint_every_steps == 0 or preempted
      if log_now or save_now:
        per_replica = [_mean_metrics(chunks) for chunks in zip(
            *(trainer.layout.split(c) for c in sharding.to_host(pending)))]
        for i, (means, finite, applied) in enumerate(per_replica):
          nonfinite_runs[i] = _nonfinite_check(finite, applied, first_pending, config,
                                               nonfinite_runs[i], trainer.layout.where(i))
        pending, first_pending = [], step
      if log_now:
        now = time.perf_counter()
        rate = (step - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, step
        schedules = {'epoch': step / exp.steps_per_epoch, 'learning_rate': learning_rate(step)}
        if config.objective.name == 'elbo':
          schedules['kl_weight'] = float(objectives.kl_weight(
              step, config.objective.beta, config.objective.kl_warmup_steps))
        for r, (means, _, _) in zip(trainer.replicas, per_replica):
          r.writer.write(step, 'train', dict(means, steps_per_sec=rate, **schedules))
        shown = {k: float(np.mean([m.get(k, 0.0) for m, _, _ in per_replica]))
                 for k in set().union(*(m for m, _, _ in per_replica))}
        vlog.info(vlog.progress_line(step, num_steps, shown, rate, c.batch_size,
                                     exp.steps_per_epoch, len(exp.seeds)))
      if step % c.eval_every_steps == 0 and step < num_steps:
        params = experiment.eval_params(state)
        trainer.evaluate(params, step)
        trainer.save_images(params, step)  # TensorBoard's pictures over time.
      if save_now:
        trainer.save(state, step)
      if preempted:
        trainer.save(state, step, force=True)
        trainer.wait_for_saves()
        vlog.info(f'{preemption.name}: saved a checkpoint at step {step}; exiting. '
                  'Re-run the same command to resume.')
        if preemption.interrupted:  # Python's answer to Ctrl-C, after the save.
          raise KeyboardInterrupt(f'saved a checkpoint at step {step}')
        return None
  trainer.save(state, step, force=True)
  # Committed before the final evaluation: a failed save stops the run before
  # it reports results, and a run killed during the evaluation keeps its state.
  trainer.wait_for_saves()
  return state


def _final_evaluation(trainer: Trainer, state) -> dict:
  config, exp = trainer.config, trainer.exp
  step = int(sharding.to_host(state.step))
  params = experiment.eval_params(state)
  record = trainer.record_final
  results = trainer.evaluate(params, step, record=record)
  for (r, replica_params), metrics in zip(trainer.replica_params(params), results):
    if config.eval.num_importance_samples:
      ll = evaluate.evaluate_log_likelihood(
          exp.model, replica_params, r.eval_images, r.keys['eval'],
          num_samples=config.eval.num_importance_samples,
          batch_size=config.eval.importance_batch_size,
          chunk_size=config.eval.importance_chunk_size, labels=r.eval_labels)
      if record:
        r.writer.write(step, 'eval', ll)
      metrics.update(ll)
    if config.eval.disentanglement and exp.dataset.train_factors is not None:
      scores = _disentanglement(config, exp, replica_params, r.seed)
      if record:
        r.writer.write(step, 'eval', scores)
      metrics.update(scores)
    if trainer.main:
      workdir_lib.write_json(os.path.join(r.workdir, 'final_metrics.json'),
                             dict(metrics, step=step))
    if record:
      r.writer.write_hparams(
          config_lib.flatten(trainer.layout.config(config, r.seed).to_dict()), metrics, step)
  trainer.save_images(params, step, record=record)
  images = f'{len(trainer.replicas[0].eval_images)} images, step {step}'
  summary = trainer.layout.combine(results)
  if trainer.main and all(r.workdir != trainer.workdir for r in trainer.replicas):
    workdir_lib.write_json(os.path.join(trainer.workdir, 'final_metrics.json'),
                           dict(summary, step=step))
  vlog.info(trainer.layout.final_line(
      results, f'{_held_out(exp)}ELBO ({config.data.eval_split}, {images})',
      config.eval.num_importance_samples))
  return summary


def _held_out(exp) -> str:
  """'held-out ', except for factor datasets, which evaluate on images they train on."""
  return '' if exp.dataset.train_factors is not None else 'held-out '


def _disentanglement(config, exp, params, seed) -> dict:
  """The disentanglement metrics of `params` on the training data, with a line saying so."""
  start = time.time()
  scores = disentanglement.evaluate_model(
      exp.model, params, exp.dataset, seed, num_train=config.eval.disentanglement_num_train,
      num_eval=config.eval.disentanglement_num_eval, batch_size=config.eval.batch_size)
  vlog.info(f'Disentanglement (seed {seed}, {time.time() - start:.0f} s): ' + ', '.join(
      f'{name} {scores[name]:.3f}' for name in (
          'beta_vae_score', 'factor_vae_score', 'mig', 'dci_disentanglement', 'sap')))
  return scores
