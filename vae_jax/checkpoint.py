"""Checkpoints: the one place that talks to orbax.

A step directory holds two orbax items: `state` (the train-state pytree, via
`StandardSave`: TensorStore/OCDBT, no pickle) and `metadata` (small JSON: config
hash, versions). Orbax gives atomic commits (written to
`<step>.orbax-checkpoint-tmp`, renamed when complete), async saves and
multi-host coordination. On top we add a keep policy ordered by step number,
shape checks before any array is read, and a resume that moves unreadable steps
to `<directory>/corrupted/` instead of crashing or deleting them.

Every process calls every method, as orbax expects; nothing is done by process
0 alone. Setting a step aside is a rename that tolerates another process having
done it first, so all processes must see the same corruption.

  ckpt = Checkpointer(workdir + '/checkpoints', max_to_keep=3)
  resumed = ckpt.restore_latest_valid(abstract_state)  # None on a fresh run.
  ckpt.save(step, state, metadata={'config_hash': h})
  ckpt.close()
"""

import datetime
import json
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE = 'state'
_METADATA = 'metadata'
_CORRUPTED = 'corrupted'


class CheckpointError(Exception):
  """A checkpoint could not be saved or restored; the message names where."""


class CorruptCheckpointError(CheckpointError):
  """A step exists on disk but its files cannot be read back."""


class _KeepNewestSteps(ocp.checkpoint_managers.PreservationPolicy):
  """Keeps the `n` highest steps (orbax's `LatestN` keeps the last n saved)."""

  def __init__(self, n: int):
    self.n = n

  def should_preserve(self, checkpoints, *, context):
    del context
    keep = set(sorted(c.step for c in checkpoints)[-self.n:])
    return [c.step in keep for c in checkpoints]


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):  # DictKey, GetAttrKey, SequenceKey.
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_specs(tree) -> dict[str, str]:
  """Maps 'a/b/0/c' leaf paths to '(shape) dtype' for arrays or metadata."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {
      '/'.join(_key_name(k) for k in path):
          f'{tuple(getattr(leaf, "shape", ()))} {np.dtype(leaf.dtype).name}'
      for path, leaf in leaves
  }


def _mismatches(saved: dict[str, str], wanted: dict[str, str]) -> list[str]:
  """Lists every leaf whose presence, shape or dtype differs."""
  lines = []
  for path in sorted(saved.keys() | wanted.keys()):
    ckpt, model = saved.get(path, 'missing'), wanted.get(path, 'missing')
    if ckpt != model:
      lines.append(f'{path}: checkpoint {ckpt}, model {model}')
  return lines


def _abstract(x) -> jax.ShapeDtypeStruct:
  # Restoring into the target's sharding is what keeps replicated or sharded
  # params where the train step expects them.
  return jax.ShapeDtypeStruct(
      np.shape(x), x.dtype, sharding=getattr(x, 'sharding', None))


def _brief(error: BaseException) -> str:
  """'Type: first line': TensorStore errors append a page-long spec after it."""
  lines = str(error).strip().splitlines()
  name = type(error).__name__
  return f'{name}: {lines[0]}' if lines else name


def _is_local(path: epath.Path) -> bool:
  return '://' not in str(path)


class Checkpointer:
  """Saves and restores the train state of one run in one directory."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               async_save: bool = True):
    """Opens (creating) `directory`, made absolute as orbax requires.

    Leftovers of unfinished saves are removed in the background, before the
    first save. Raises CheckpointError if a step directory is a symlink leading
    outside `directory`, and ValueError if `max_to_keep` < 1.
    """
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1, got {max_to_keep}.')
    if _is_local(epath.Path(directory)):
      directory = os.path.abspath(directory)
    self._dir = epath.Path(directory)
    self._pending_step = None
    # Before orbax lists the steps: that already reads inside each step dir.
    self._check_step_links()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_KeepNewestSteps(max_to_keep),
        cleanup_tmp_directories=True,  # Leftovers of a crash mid-save.
        enable_async_checkpointing=async_save,
        # An unwritable directory then fails save() at once; created in the
        # background, it left orbax's writer threads waiting 300 s for it, so
        # the process hung that long after reporting the error.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    handlers = {_STATE: ocp.StandardCheckpointHandler(),
                _METADATA: ocp.JsonCheckpointHandler()}
    try:
      self._manager = ocp.CheckpointManager(
          self._dir, options=options, item_handlers=handlers)
    except Exception as e:
      raise CheckpointError(
          f'Cannot open checkpoints in {self._dir}: {_brief(e)}') from e

  @property
  def directory(self) -> epath.Path:
    return self._dir

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first (an in-flight async save is not one)."""
    return sorted(
        s for s in self._manager.all_steps()
        if ocp.path.step.is_path_finalized(self._step_dir(s)))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, *, metadata: dict | None = None,
           force: bool = False) -> bool:
    """Saves `state` and JSON-serialisable `metadata` as `step`.

    A step that exists is never overwritten; a step lower than the latest is
    saved only with `force` (and the keep policy may drop it at once).

    Returns:
      Whether a save was started.

    Raises:
      CheckpointError: if this save, or the previous async one, failed.
    """
    step = int(step)
    self.wait_until_finished()
    # Decided here rather than by orbax, whose notion of "latest" is the last
    # step saved, not the highest.
    steps = self._manager.all_steps()
    if step in steps or (not force and steps and step < max(steps)):
      logging.info('Not saving step %d: %s holds steps up to %d.', step,
                   self._dir, max(steps))
      return False
    try:
      json.dumps(metadata)
    except TypeError as e:
      raise CheckpointError(
          f'Metadata for step {step} is not JSON-serialisable: {e}') from e
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                 _METADATA: ocp.args.JsonSave(metadata)})
    try:
      self._manager.save(step, args=args, force=True)
    except Exception as e:
      raise CheckpointError(
          f'Saving step {step} to {self._dir} failed: {_brief(e)}') from e
    self._pending_step = step
    return True

  def wait_until_finished(self) -> None:
    """Blocks until an async save is committed; raises if it failed."""
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise CheckpointError(f'Async save of step {step} to {self._dir} '
                            f'failed: {_brief(e)}') from e

  def restore(self, target: Any, step: int | None = None
              ) -> tuple[int, Any, dict | None]:
    """Restores `step` (default: latest) like `target`.

    Args:
      target: pytree of arrays or `jax.ShapeDtypeStruct`s, whose shardings the
        restored arrays get.
      step: a committed step, or None for the latest.

    Returns:
      (step, state, metadata or None).

    Raises:
      CheckpointError: the step is absent, a symlink out of the directory, or
        its tree/shapes/dtypes differ from `target` (checked before reading).
      CorruptCheckpointError: the step's files cannot be read.
    """
    steps = self.all_steps()
    step = steps[-1] if step is None and steps else step
    if step not in steps:
      raise CheckpointError(f'No checkpoint {step=} in {self._dir}; '
                            f'committed steps: {steps}.')
    self._check_link(self._step_dir(step))
    items = self._read_item_metadata(step)
    self._check_compatible(step, items[_STATE].tree, target)
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(jax.tree.map(_abstract, target)),
        _METADATA: ocp.args.JsonRestore()})
    try:
      restored = self._manager.restore(step, args=args)
    except Exception as e:
      raise CorruptCheckpointError(
          f'Cannot read step {step} in {self._step_dir(step)}: '
          f'{_brief(e)}') from e
    return step, restored[_STATE], restored[_METADATA]

  def restore_latest_valid(self, target: Any
                           ) -> tuple[int, Any, dict | None] | None:
    """Restores the newest readable step; None if there is no step at all.

    An unreadable step is logged, moved to `corrupted/<step>_<time>` (never
    deleted) and the next older one is tried. A shape mismatch is raised at
    once: the model changed, and older steps would not match either. Raises
    CheckpointError if steps exist but none can be restored.
    """
    steps = self.all_steps()
    if not steps:
      return None
    failures = []
    for step in reversed(steps):
      try:
        return self.restore(target, step)
      except CorruptCheckpointError as e:
        moved_to = self.set_aside(step)
        logging.warning('Checkpoint step %d is unreadable, moved to %s: %s',
                        step, moved_to, e)
        failures.append(f'step {step}: {e}')
    raise CheckpointError(f'No checkpoint in {self._dir} could be restored '
                          f'(all set aside under {_CORRUPTED}/): {failures}')

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's threads."""
    try:
      self.wait_until_finished()
    finally:
      self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _step_dir(self, step: int) -> epath.Path:
    return self._dir / str(step)  # orbax's default step naming.

  def _check_link(self, path: epath.Path) -> None:
    """Refuses a symlink leading out of the directory, without following it."""
    if not _is_local(path) or not os.path.islink(path):
      return
    root = os.path.realpath(self._dir)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
      raise CheckpointError(
          f'Checkpoint step directory {path} is a symlink to '
          f'{os.readlink(path)}, outside {self._dir}; refusing to use it.')

  def _check_step_links(self) -> None:
    if _is_local(self._dir) and self._dir.is_dir():
      for entry in self._dir.iterdir():
        if entry.name.isdigit():
          self._check_link(entry)

  def _read_item_metadata(self, step: int):
    """Reads the tree, shapes and dtypes of a step, not its arrays."""
    where = f'step {step} in {self._step_dir(step)}'
    try:
      items = self._manager.item_metadata(step)
    except Exception as e:
      raise CorruptCheckpointError(
          f'Cannot read metadata of {where}: {_brief(e)}') from e
    for name in (_STATE, _METADATA):  # save() always writes both.
      if name not in items:
        raise CorruptCheckpointError(f'No {name!r} item in {where}.')
    if items[_STATE] is None:
      raise CorruptCheckpointError(f'Unreadable {_STATE!r} item in {where}.')
    return items

  def _check_compatible(self, step: int, saved_tree, target) -> None:
    lines = _mismatches(_leaf_specs(saved_tree), _leaf_specs(target))
    if lines:
      raise CheckpointError(
          f'Checkpoint step {step} in {self._dir} does not match the model:\n'
          + '\n'.join(lines))

  def set_aside(self, step: int) -> epath.Path:
    """Moves a step under corrupted/ so that it is neither listed nor lost."""
    stamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S.%f')
    dest = self._dir / _CORRUPTED / f'{step}_{stamp}'
    try:
      dest.parent.mkdir(parents=True, exist_ok=True)
      self._step_dir(step).rename(dest)
    except FileNotFoundError:
      pass  # Another process of this run moved it first.
    except OSError as e:
      raise CheckpointError(f'Cannot move unreadable step {step} to {dest}: '
                            f'{_brief(e)}') from e
    self._manager.reload()
    return dest
