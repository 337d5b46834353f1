"""The optax optimiser and learning-rate schedule named by `config.optimizer`."""

from typing import Any, NamedTuple

import jax
import optax

BURDA_STAGE_DECAY = 10 ** (-1 / 7)
OPTIMIZERS = ('adam', 'adamw', 'adagrad', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'burda', 'burda_equal')


def burda_schedule(learning_rate, num_steps, growth=3, num_stages=8):
  """Burda et al. 2015 (sec. 5): stage i at learning_rate * 10^(-i/7), i = 0..7.

  In the paper stage i lasts 3^i passes (growth=3); the stages keep those
  proportions (growth^i / sum_j growth^j of the run), so a run of 3,280 epochs
  is the paper's schedule exactly and a shorter one the same schedule
  compressed. growth=1 gives every stage an equal share, which spends more of a
  short run at the higher rates.
  """
  lengths = [growth ** i for i in range(num_stages)]
  total = sum(lengths)
  boundaries, so_far = {}, 0
  for length in lengths[:-1]:
    so_far += length
    boundary = int(round(so_far / total * num_steps))
    # Stages shorter than a step merge; their decays still compound.
    boundaries[boundary] = boundaries.get(boundary, 1.0) * BURDA_STAGE_DECAY
  return optax.piecewise_constant_schedule(learning_rate, boundaries)


# Schedules whose curve depends on the run's length: a new length changes every later rate.
LENGTH_SHAPED = ('cosine', 'warmup_cosine', 'burda', 'burda_equal')
WARMUP_SCHEDULES = ('constant', 'warmup_cosine')  # Those that read optimizer.warmup_steps.
# The fields each optimiser reads beyond the learning rate; any other at a value
# other than its default would be ignored, so it is refused.
_READS = {'adam': ('b1', 'b2', 'eps'), 'adamw': ('b1', 'b2', 'eps'), 'adagrad': ('eps',),
          'sgd': ('b1',)}
_MEANING = {'b1': "Adam's first-moment decay or sgd's momentum", 'b2': "Adam's second-moment "
            'decay', 'eps': "Adam's or adagrad's epsilon"}


class OptimizerConfigError(ValueError):
  """An optimizer field that cannot work or would be ignored; the message names it."""


def _check(ok, field, message):
  if not ok:
    raise OptimizerConfigError(f'config.optimizer.{field}: {message}')


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_config(opt_config, defaults):
  """Refuses, naming the field, an optimizer field that cannot work, or one set away from
  its value in `defaults` (config.default_config().optimizer) that the chosen optimiser or
  schedule would ignore."""
  o = opt_config
  _check(o.get('name') in OPTIMIZERS, 'name', f'{o.get("name")!r} is not one of {OPTIMIZERS}')
  _check(o.get('schedule') in SCHEDULES, 'schedule', f'{o.get("schedule")!r} is not one of {SCHEDULES}')
  for field, low, high, rule in (
      ('learning_rate', 0, None, 'must be > 0'), ('eps', 0, None, 'must be > 0'),
      ('warmup_steps', 0, None, 'must be an int >= 0'),
      ('weight_decay', 0, None, 'must be >= 0'),
      ('grad_clip_norm', 0, None, 'must be >= 0 (0 turns clipping off)'),
      ('skip_threshold', 0, None, 'must be >= 0 (0 never skips)'),
      ('ema_decay', 0, 1, 'must be in [0, 1) (0 evaluates the parameters themselves)'),
      ('b1', 0, 1, 'must be in [0, 1)'), ('b2', 0, 1, 'must be in [0, 1)')):
    value = o.get(field)
    _check(_is_number(value), field, f'expected a number, got {value!r}')
    strict = field in ('learning_rate', 'eps')
    ok = (value > low if strict else value >= low) and (high is None or value < high)
    if field == 'warmup_steps':
      ok = ok and isinstance(value, int)
    _check(ok, field, f'{rule}, got {value!r}')
  _check(not o.warmup_steps or o.schedule in WARMUP_SCHEDULES, 'warmup_steps',
         f'{o.warmup_steps} steps of warm-up, but schedule {o.schedule!r} has none (those '
         f'with a warm-up: {WARMUP_SCHEDULES}); set it to 0 or change the schedule')
  for field in ('b1', 'b2', 'eps'):
    _check(field in _READS[o.name] or o[field] == defaults[field], field,
           f'{o[field]!r} would be ignored: {o.name!r} has no {_MEANING[field]} (leave it at '
           f'{defaults[field]!r})')


def learning_rate_fn(opt_config, num_steps):
  """step -> the learning rate (a float) the optimiser applies there, for the logs."""
  schedule = learning_rate_schedule(opt_config, num_steps)
  return lambda step: float(schedule(step) if callable(schedule) else schedule)


def learning_rate_schedule(opt_config, num_steps):
  """constant, cosine decay to 0, linear warm-up then cosine decay, or Burda's 8
  stages (burda: 3^i epochs each as in the paper; burda_equal: equal shares)."""
  lr = opt_config.learning_rate
  if opt_config.schedule == 'constant':
    if opt_config.warmup_steps:
      return optax.linear_schedule(0.0, lr, opt_config.warmup_steps)
    return lr
  if opt_config.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, max(num_steps, 1))
  if opt_config.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, opt_config.warmup_steps, max(num_steps, opt_config.warmup_steps + 1))
  if opt_config.schedule in ('burda', 'burda_equal'):
    return burda_schedule(lr, num_steps, growth=3 if opt_config.schedule == 'burda' else 1)
  raise ValueError(f'optimizer.schedule: unknown {opt_config.schedule!r}')


class ParamsEMAState(NamedTuple):
  """The exponential moving average of the parameters, kept in the optimiser's state."""
  ema: Any


def params_ema(decay) -> optax.GradientTransformation:
  """Tracks ema <- decay * ema + (1 - decay) * new params; passes the updates through.

  The last link of the chain, so it sees the updates that will be applied. It
  starts at the initial parameters (no bias correction, as in VDVAE). Kept in
  the optimiser state, it is checkpointed, restored, vmapped over seeds and
  left unchanged by a skipped step with everything else.
  """
  def init(params):
    return ParamsEMAState(jax.tree.map(lambda p: p.copy(), params))

  def update(updates, state, params):
    ema = jax.tree.map(lambda e, p, u: decay * e + (1.0 - decay) * (p + u),
                       state.ema, params, updates)
    return updates, ParamsEMAState(ema)
  return optax.GradientTransformation(init, update)


def ema_params(opt_state):
  """The moving average in an optimiser state made with optimizer.ema_decay > 0, else None."""
  found = [leaf for leaf in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, ParamsEMAState))
           if isinstance(leaf, ParamsEMAState)]
  return found[0].ema if found else None


_MODEL = 'model'  # The multi_transform label of the model's parameters.


def _labels_of(extra_keys):
  def labels(params):
    return {key: jax.tree.map(lambda _, k=key: k if k in extra_keys else _MODEL, value)
            for key, value in params.items()}
  return labels


def make_optimizer(opt_config, num_steps, extra=None) -> optax.GradientTransformation:
  """Builds the update rule; gradient clipping (by global norm) comes first, the moving
  average of the parameters (optimizer.ema_decay > 0) last.

  `extra` ({top-level key: optimiser}, objectives.extra_optimizers) gives the
  parameters an objective trains beside the model (FactorVAE's discriminator)
  their own rule through `optax.multi_transform`; the config's rule, clipping
  included, then applies to the model's parameters only, and the moving average
  to all of them.
  """
  schedule = learning_rate_schedule(opt_config, num_steps)
  name = opt_config.name
  if name == 'adam':
    tx = optax.adam(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                     weight_decay=opt_config.weight_decay)
  elif name == 'adagrad':
    tx = optax.adagrad(schedule, eps=opt_config.eps)
  elif name == 'sgd':
    tx = optax.sgd(schedule, momentum=opt_config.b1 or None)
  else:
    raise ValueError(f'optimizer.name: unknown {name!r}')
  if opt_config.weight_decay and name != 'adamw':
    # L2 on the weights: the N(0, 1/(2*wd)) prior on parameters of Kingma & Welling (2013).
    tx = optax.chain(optax.add_decayed_weights(opt_config.weight_decay), tx)
  if opt_config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  if extra:
    tx = optax.multi_transform({**extra, _MODEL: tx}, _labels_of(tuple(extra)))
  if opt_config.get('ema_decay', 0.0):
    tx = optax.chain(tx, params_ema(opt_config.ema_decay))
  return tx
