"""Several seeds in one program: stacking replicas, and which optimiser leaves they share.

With config.train.num_seeds = S > 1 the replicas' parameters and optimiser
moments are stacked on a leading axis of size S and the train step is
`jax.vmap`ped over it. The leaves of the optimiser state that no replica's
data can change (its step counters: the count of Adam's bias correction, of a
schedule, of the moving average) stay unstacked scalars shared by all, so the
arithmetic that reads them is the same scalar code as in a single run. Batched,
XLA rewrites `m / broadcast(1 - b^t)` as a multiplication by the reciprocal,
one rounding away from a single run.

Which leaves those are is not read off the state's layout (an optax chain may
hold integers that are not counters): `shared_leaves` traces one update and
keeps the leaves whose new value depends on neither the gradients, the
parameters nor a leaf that does. The same mask tells the train step what a
skipped update still advances: shared leaves move on every step, so schedules
and bias corrections follow the step number, while every other leaf (moments,
averages, anything a gradient reaches) is left untouched.

A replica of seed s has the workdir DIR/seed_<s>: a complete single-run
workdir (`replica_config`), which evaluate_workdir, generate and `main` treat
like any other.
"""

import os

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

AXIS = 'seeds'  # The vmapped replica axis, named for lax.pmin.


def seeds(config) -> tuple:
  """config.seed, config.seed + 1, ...: the seeds of the train.num_seeds replicas."""
  return tuple(config.seed + i for i in range(config.train.num_seeds))


def replica_config(config, seed):
  """The single-run config that replica `seed` of a multi-seed run reproduces."""
  single = ml_collections.ConfigDict(config.to_dict())
  single.seed = seed
  single.train.num_seeds = 1
  return single


def replica_workdir(workdir, seed):
  return os.path.join(workdir, f'seed_{seed}')


def _dependent_outputs(fn, args, marked_inputs):
  """For each flat output of fn(*args): whether it depends on a flat input marked True.

  A data-dependence pass over the traced program; an equation's outputs depend
  on all of its inputs (conservative inside nested programs: a cond or a jit
  counts as one equation).
  """
  closed = jax.make_jaxpr(fn)(*args)
  marked = {v for v, m in zip(closed.jaxpr.invars, marked_inputs) if m}
  is_var = lambda v: not isinstance(v, jax_core.Literal)
  for eqn in closed.jaxpr.eqns:
    if any(is_var(v) and v in marked for v in eqn.invars):
      marked.update(eqn.outvars)
  return [is_var(v) and v in marked for v in closed.jaxpr.outvars]


def shared_leaves(tx: optax.GradientTransformation, params):
  """A tree like tx.init(params) of bools: True where the leaf is the same for every
  replica at every step (it depends on neither gradients nor parameters, at init
  or through any number of updates), False where it is the replica's own.

  `params` may be shapes (jax.ShapeDtypeStruct).
  """
  opt_state = jax.eval_shape(tx.init, params)
  n_params = len(jax.tree.leaves(params))
  own = _dependent_outputs(lambda p: jax.tree.leaves(tx.init(p)), (params,), [True] * n_params)

  def update(grads, state, p):
    return jax.tree.leaves(tx.update(grads, state, p)[1])

  while True:  # Until no leaf is newly reached: at most one pass per leaf.
    reached = _dependent_outputs(update, (params, opt_state, params),
                                 [True] * n_params + own + [True] * n_params)
    grown = [a or b for a, b in zip(own, reached)]
    if grown == own:
      break
    own = grown
  return jax.tree.unflatten(jax.tree.structure(opt_state), [not o for o in own])


def select(take_new, new, old, shared):
  """`new` where `take_new`, else `old`; shared leaves always from `new` (they advance
  on every step, applied or not)."""
  return jax.tree.map(lambda s, n, o: n if s else jnp.where(take_new, n, o), shared, new, old)


def state_axes(state, shared):
  """`jax.vmap` axes of a stacked TrainState: 0 for the replicas' own leaves, None for shared."""
  return state.replace(step=None, params=jax.tree.map(lambda _: 0, state.params),
                       opt_state=jax.tree.map(lambda s: None if s else 0, shared))


def stack(states: list, shared):
  """Single-run states of the replicas (all at one step) -> one stacked state."""
  steps = {int(s.step) for s in states}
  if len(steps) != 1:
    raise ValueError(f'replicas are at different steps: {sorted(steps)}')

  def stack_shared(s, *leaves):
    if s:
      if len({np.asarray(x).tobytes() for x in leaves}) != 1:
        raise ValueError(f'replicas disagree on a shared optimiser leaf: {leaves}')
      return leaves[0]
    return jnp.stack(leaves)
  opt_state = jax.tree.map(stack_shared, shared, *[s.opt_state for s in states])
  params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s.params for s in states])
  return states[0].replace(params=params, opt_state=opt_state)


def unstack(state, i: int, shared):
  """Replica i of a stacked state, as the state of a single run."""
  return state.replace(params=jax.tree.map(lambda x: x[i], state.params),
                       opt_state=jax.tree.map(lambda s, x: x if s else x[i], shared,
                                              state.opt_state))
