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


class Layout:
  """How the replicas of one run sit in one program: a single run as it is, or S > 1
  seeds stacked on a leading axis. The training loop asks it every question whose
  answer depends on the number of seeds, so it never branches on that number.
  """

  def __init__(self, seeds, shared):
    self.seeds = tuple(seeds)
    self.shared = shared
    self.stacked = len(self.seeds) > 1

  def __len__(self):
    return len(self.seeds)

  def workdir(self, workdir, seed):
    """Where replica `seed` keeps its files: its own DIR/seed_<s> when stacked."""
    return replica_workdir(workdir, seed) if self.stacked else workdir

  def config(self, config, seed):
    """The config replica `seed` reproduces on its own."""
    return replica_config(config, seed) if self.stacked else config

  def run_name(self, workdir, seed):
    name = os.path.basename(os.path.normpath(workdir))
    return f'{name}/seed_{seed}' if self.stacked else name

  def checkpoints(self, workdir):
    """What a resume names: a single run's checkpoints/, or the run holding the replicas."""
    return os.path.abspath(workdir) if self.stacked else os.path.abspath(
        os.path.join(workdir, 'checkpoints'))

  def vmapped_note(self):
    return f'{len(self)} seeds vmapped, ' if self.stacked else ''

  def where(self, i):
    """' (seed s)' naming replica i in a message, or '' for a single run."""
    return f' (seed {self.seeds[i]})' if self.stacked else ''

  def stack(self, states):
    """Single-run states, one per replica -> the state the train step takes."""
    return stack(states, self.shared) if self.stacked else states[0]

  def unstack(self, state):
    """The train step's state -> each replica's single-run state."""
    if not self.stacked:
      return [state]
    return [unstack(state, i, self.shared) for i in range(len(self))]

  def split(self, tree):
    """A tree with a replica axis (params, a call's metrics) -> one tree per replica."""
    if not self.stacked:
      return [tree]
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(len(self))]

  def join(self, per_replica):
    """One array per replica (keys, batch indices) -> what the train step takes, and the
    axis of the batch in it (after the replica and step axes)."""
    if not self.stacked:
      return per_replica[0]
    return jnp.stack(per_replica) if isinstance(per_replica[0], jax.Array) else np.stack(
        per_replica)

  @property
  def batch_axis(self):
    """The batch's axis in the indices the step takes ([S,] T, B)."""
    return 2 if self.stacked else 1

  def combine(self, results):
    """The run's numbers from each replica's: a single run's own; for stacked seeds the
    mean of each scalar, '<name>_std' (sample std, ddof=1), and each seed's under
    'per_seed'."""
    if not self.stacked:
      return results[0]
    summary = {}
    for name, (mean, std) in _mean_and_std(results).items():
      summary[name], summary[f'{name}_std'] = mean, std
    summary['per_seed'] = {str(seed): {k: v for k, v in m.items() if np.ndim(v) == 0}
                           for seed, m in zip(self.seeds, results)}
    return summary

  def describe(self, results):
    """'elbo -105.20, recon ...' of one run; ', mean ± std of S seeds' and
    'elbo -105.20 ± 0.31, ...' of several: (note, numbers)."""
    if not self.stacked:
      return '', ', '.join(f'{k} {float(v):.2f}' for k, v in results[0].items()
                           if np.ndim(v) == 0)
    return (f', mean \u00b1 std of {len(results)} seeds', ', '.join(
        f'{name} {mean:.2f} \u00b1 {std:.2f}'
        for name, (mean, std) in _mean_and_std(results).items()))

  def final_line(self, results, what, k):
    """The run's last line: 'Final <what>: -105.20 nats, log p(x) ...' of one run, or
    'Final <what>, 3 seeds: -105.20 ± 0.31 nats (per seed: ...); log p(x) ...'."""
    if not self.stacked:
      m = results[0]
      ll = f', log p(x) {m["log_px"]:.2f} nats (K={k})' if 'log_px' in m else ''
      return f'Final {what}: {m["elbo"]:.2f} nats{ll}'
    summary = self.combine(results)
    ll = (f'; log p(x) {summary["log_px"]:.2f} \u00b1 {summary["log_px_std"]:.2f} nats (K={k})'
          if 'log_px' in summary else '')
    per_seed = ', '.join(f'{m["elbo"]:.2f}' for m in results)
    return (f'Final {what}, {len(results)} seeds: {summary["elbo"]:.2f} \u00b1 '
            f'{summary["elbo_std"]:.2f} nats (per seed: {per_seed}){ll}')


def _mean_and_std(results) -> dict:
  """{name: (mean, sample std with ddof=1)} over the replicas of each scalar metric."""
  stats = {}
  for name in results[0]:
    values = [m[name] for m in results]
    if all(np.ndim(v) == 0 for v in values):
      stats[name] = (float(np.mean(values)), float(np.std(values, ddof=1)))
  return stats
