"""The optax optimiser and learning-rate schedule named by `config.optimizer`."""

import optax


def learning_rate_schedule(opt_config, num_steps):
  """constant, cosine decay to 0, or linear warm-up then cosine decay."""
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
  raise ValueError(f'optimizer.schedule: unknown {opt_config.schedule!r}')


def make_optimizer(opt_config, num_steps) -> optax.GradientTransformation:
  """Builds the update rule; gradient clipping (by global norm) comes first."""
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
  return tx
