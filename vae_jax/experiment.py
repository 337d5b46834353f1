"""Everything built from a config, and the same read back from a workdir.

`build_experiment` turns a config into the data, the model, the optimiser and
the run's length; `init_state` and `abstract_state` give its step-0 train state
and that state's shapes. `load_trained` reads a workdir back (config.json and a
checkpoint, opened read-only) as the experiment and the parameters it evaluates
with: what the tools that only read (generate, evaluate_workdir) use, without
the training loop.
"""

import dataclasses
import os
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import models
from vae_jax import objectives
from vae_jax import optim
from vae_jax import replicas
from vae_jax import workdir as workdir_lib


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
  keys: dict  # root_keys(config.seed): the first replica's streams.
  seeds: tuple  # config.seed + i for each of the train.num_seeds replicas.
  _shared: Any = None

  @property
  def shared(self):
    """replicas.shared_leaves of the optimiser: True at the leaves every replica shares
    and a skipped update still advances (step counters)."""
    if self._shared is None:
      self._shared = replicas.shared_leaves(self.tx, abstract_state(self).params)
    return self._shared


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
  model = models.make_model(config.model, dataset.image_shape,
                            levels=dataset.levels,
                            num_classes=dataset.num_classes)
  num_steps, steps_per_epoch = resolve_num_steps(config.train, dataset.num_train)
  tx = optim.make_optimizer(config.optimizer, num_steps,
                            objectives.extra_optimizers(config.objective, model))
  seeds = replicas.seeds(config)
  return Experiment(config, dataset, model, tx, num_steps, steps_per_epoch,
                    root_keys(config.seed), seeds)


def eval_params(state: TrainState):
  """The parameters evaluation and sampling use: the moving average where
  optimizer.ema_decay > 0 keeps one (optim.params_ema), else the parameters."""
  ema = optim.ema_params(state.opt_state)
  return state.params if ema is None else ema


def init_state(exp: Experiment, seed: int | None = None, *, shapes_only=False) -> TrainState:
  """The step-0 state of the run with `seed` (default: config.seed). A VQ-VAE's second
  stage starts from the trained VQ-VAE (`with_trained_vq_vae`), unless `shapes_only`:
  under jax.eval_shape, where only the shapes are wanted, nothing is read."""
  keys = exp.keys if seed is None else root_keys(seed)
  # The second half of the split once drew the init call's noise; kept so that
  # init_key, and so every initial parameter, stays what it has always been.
  init_key, _ = jax.random.split(keys['init'])
  params = models.init_params(exp.model, init_key, exp.dataset.image_shape)
  params = {**params, **objectives.extra_params(exp.config.objective, exp.model, init_key)}
  if exp.config.objective.name == 'code_prior' and not shapes_only:
    params = with_trained_vq_vae(exp.config, params)
  # One compiled program, not one per leaf (zeros and copies: the same values either way).
  return TrainState(jnp.zeros((), jnp.int32), params, jax.jit(exp.tx.init)(params))


def with_trained_vq_vae(config, params):
  """`params` with the encoder, codebook and decoder of the trained VQ-VAE in
  config.model.prior_workdir (the parameters it evaluates with), for objective
  code_prior, after `check_trained_vq_vae`."""
  check_trained_vq_vae(config)
  _, trained, _ = load_trained(config.model.prior_workdir)
  return {**params, **{name: trained[name] for name in objectives.FROZEN_IN_STAGE_TWO}}


def check_trained_vq_vae(config):
  """Refuses, naming the field or file, a config.model.prior_workdir that is not a VQ-VAE
  trained to its last step, or one whose data or networks differ from this config's."""
  source = config.model.prior_workdir
  where = f'config.model.prior_workdir={source!r}'
  if not os.path.isdir(source):
    raise workdir_lib.WorkdirError(f'{where}: no such directory')
  saved = workdir_lib.load_config(source)
  if saved.objective.name != 'vq_vae' or saved.model.get('posterior') != 'vq':
    raise workdir_lib.WorkdirError(
        f"{where} is not a VQ-VAE: it trained objective {saved.objective.name!r} with "
        f"model.posterior={saved.model.get('posterior')!r} (expected 'vq_vae' and 'vq')")
  if not os.path.exists(os.path.join(source, 'final_metrics.json')):
    raise workdir_lib.WorkdirError(
        f'{where} has not finished training (no final_metrics.json): run it again to resume '
        'it to its last step first')
  flat_saved, flat_now = config_lib.flatten(saved.to_dict()), config_lib.flatten(config.to_dict())
  for field in config_lib.VQ_STAGE_ONE_FIELDS:
    if flat_saved.get(field) != flat_now.get(field):
      raise workdir_lib.WorkdirError(
          f'config.{field}: {flat_now.get(field)!r} here, but the VQ-VAE in {source} was '
          f'trained with {flat_saved.get(field)!r}; the prior must be learned on its codes')


def abstract_state(exp: Experiment, sharding_=None) -> TrainState:
  """The shapes and dtypes of `init_state` (jax.ShapeDtypeStructs with `sharding_`),
  without running it: the target of a restore. Initialising a deep model op by op
  takes tens of seconds (30 s for the five-group ladder here), tracing it well
  under one."""
  shapes = jax.eval_shape(lambda: init_state(exp, shapes_only=True))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_),
                      shapes)


def labels_of(exp: Experiment, labels):
  """The labels a conditional model reads; None for any other (nothing is sent to the step)."""
  return labels if exp.model.num_classes else None


def load_trained(workdir, step=None, stages=None):
  """(experiment, params, step) of a workdir, from its config.json and a checkpoint.

  The params are what the run evaluated: the moving average with optimizer.ema_decay > 0.
  `stages` (a logging.Stages) is told when the data and the checkpoint are read.
  """
  config = workdir_lib.load_config(workdir)
  try:
    # One device: the batch divides any count of devices a tool runs on; the
    # tools do not train, and evaluation batches are their own.
    config_lib.validate(config, num_devices=1)
  except config_lib.ConfigError as e:  # A hand-edited config.json.
    raise workdir_lib.WorkdirError(
        f'{os.path.join(workdir, workdir_lib.CONFIG_FILE)}: {e}') from e
  if config.train.num_seeds > 1:
    seeds = replicas.seeds(config)
    raise workdir_lib.WorkdirError(
        f'{workdir} trained {len(seeds)} seeds at once; each is a workdir of its own: '
        + ', '.join(replicas.replica_workdir(workdir, s) for s in seeds))
  checkpoints = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(checkpoints):  # Checkpointer would create it.
    raise workdir_lib.WorkdirError(f'{workdir} has no checkpoints/ directory')
  if stages is not None:
    stages.start('loading the data')
  exp = build_experiment(config)
  if stages is not None:
    stages.start('restoring the checkpoint')
  target = abstract_state(exp, jax.sharding.SingleDeviceSharding(jax.devices()[0])).to_dict()
  identity = workdir_lib.run_identity(config, hint=(
      f'{os.path.join(workdir, workdir_lib.CONFIG_FILE)} is not the config it was trained '
      'with: evaluate it in the workdir it came from.'))
  ckpt = checkpoint.Checkpointer(checkpoints, async_save=False, identity=identity,
                                 read_only=True)
  try:
    restored_step, state, _ = _restore_for_reading(ckpt, target, step)
  finally:
    ckpt.close()
  return exp, eval_params(TrainState(**state)), restored_step


def _restore_for_reading(ckpt, target, step):
  """ckpt.restore for a tool that only reads: an unreadable step is never set aside.

  Without --step, an unreadable newest step is skipped with a warning for the
  newest readable one; with --step, the error names the newest readable step.
  """
  if step is not None:
    try:
      return ckpt.restore(target, step)
    except checkpoint.CorruptCheckpointError as e:
      readable = _newest_readable(ckpt, target, [s for s in ckpt.all_steps() if s != step])
      hint = (f'the newest readable step is {readable[0]}: pass --step={readable[0]}'
              if readable else 'no other step is readable')
      raise checkpoint.CheckpointError(f'{str(e).rstrip(".")}; {hint}.') from e
  steps = ckpt.all_steps()
  if not steps:
    raise checkpoint.CheckpointError(f'No checkpoint in {ckpt.directory}.')
  try:
    return ckpt.restore(target, steps[-1])
  except checkpoint.CorruptCheckpointError as e:
    readable = _newest_readable(ckpt, target, steps[:-1])
    if readable is None:
      raise checkpoint.CheckpointError(f'{str(e).rstrip(".")}, and no older step is '
                                       'readable.') from e
    logging.warning('%s; using step %d, the newest readable one (--step chooses another).',
                    str(e).rstrip('.'), readable[0])
    return readable


def _newest_readable(ckpt, target, steps):
  """ckpt.restore of the newest of `steps` that reads back, or None."""
  for step in reversed(sorted(steps)):
    try:
      return ckpt.restore(target, step)
    except checkpoint.CorruptCheckpointError:
      continue
  return None
