"""Checkpoints: the one place that talks to orbax.

A step directory holds two orbax items: `state` (the train-state pytree, via
`StandardSave`: TensorStore/OCDBT, no pickle) and `metadata` (small JSON: the
step, a SHA-256 of every array, and what identifies the run that saved it).
Orbax gives atomic commits (written to `<step>.orbax-checkpoint-tmp`, renamed
when complete), async saves and multi-host coordination. On top we add a keep
policy ordered by step number, shape checks before any array is read, checks
after it (the step saved is the directory's, the arrays hash as they did when
saved, the run is this one), and a resume that moves unreadable steps to
`<directory>/corrupted/` instead of crashing or deleting them.

Every process calls every method, as orbax expects; nothing is done by process
0 alone. Setting a step aside is a rename that tolerates another process having
done it first, so all processes must see the same corruption.

  ckpt = Checkpointer(workdir + '/checkpoints', max_to_keep=3, identity=identity)
  resumed = ckpt.restore_latest_valid(abstract_state)  # None on a fresh run.
  ckpt.save(step, state)
  ckpt.close()
"""

import dataclasses
import datetime
import hashlib
import json
import logging as std_logging
import os
from typing import Any, Callable

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from vae_jax import logs as vlog

_STATE = 'state'
_METADATA = 'metadata'
# What orbax logs (as warnings) each time a CheckpointManager opens read-only, as the
# tools that only read do: it says nothing the user can act on.
_READ_ONLY_NOTICES = ('CheckpointManagerOptions.read_only=True',
                      'Given directory is read only')


def _not_read_only_notice(record) -> bool:
  return not record.getMessage().startswith(_READ_ONLY_NOTICES)


std_logging.getLogger('absl').addFilter(_not_read_only_notice)
_CORRUPTED = 'corrupted'
_OWN = 'checkpoint'  # The metadata key of what this module records; the rest is the caller's.


class CheckpointError(Exception):
  """A checkpoint could not be saved or restored; the message names where."""


class CorruptCheckpointError(CheckpointError):
  """A step exists on disk but its files cannot be read back."""


@dataclasses.dataclass(frozen=True)
class RunIdentity:
  """What every saved step records of the run that saved it, and how restore compares.

  Attributes:
    record: JSON-serialisable (the run's resolved config), saved under 'run'.
    differences: the fields in which a saved record differs from this run, each
      as 'field: checkpoint's -> this run's'; empty when the step is this run's.
    allow_change: warn about differences instead of refusing the step.
    hint: what the user can do about a refused step (ends the error message).
  """
  record: dict
  differences: Callable[[dict], list]
  allow_change: bool = False
  hint: str = ''

  @property
  def digest(self) -> str:
    return record_digest(self.record)


def record_digest(record) -> str:
  """A short name for a run record: 12 hex digits of the SHA-256 of its JSON."""
  text = json.dumps(record, sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


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


def _path_name(path) -> str:
  return '/'.join(_key_name(k) for k in path)


def _leaf_specs(tree) -> dict[str, str]:
  """Maps 'a/b/0/c' leaf paths to '(shape) dtype' for arrays or metadata."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {
      _path_name(path): f'{tuple(getattr(leaf, "shape", ()))} {np.dtype(leaf.dtype).name}'
      for path, leaf in leaves
  }


def _host_value(leaf) -> np.ndarray | None:
  """The whole value of a leaf on this host; None for an array sharded across hosts."""
  if isinstance(leaf, jax.Array):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if leaf.is_fully_replicated:
      leaf = leaf.addressable_data(0)
    elif not leaf.is_fully_addressable:
      return None
  return np.ascontiguousarray(np.asarray(leaf))


def checksums(tree) -> dict[str, str]:
  """{'a/b/0/c': SHA-256 of the leaf's bytes} for every leaf this host holds whole.

  Shape and dtype are checked apart (before reading), so the bytes alone are hashed.
  """
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = _host_value(leaf)
    if value is not None:
      sums[_path_name(path)] = hashlib.sha256(value.reshape(-1).view(np.uint8)).hexdigest()
  return sums


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


def _is_local(path: epath.Path) -> bool:
  return '://' not in str(path)


class Checkpointer:
  """Saves and restores the train state of one run in one directory."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               async_save: bool = True, identity: RunIdentity | None = None,
               verify: bool = True, read_only: bool = False):
    """Opens (creating) `directory`, made absolute as orbax requires.

    Leftovers of unfinished saves are removed in the background, before the
    first save. `read_only` (the tools that only read): nothing in `directory` is
    created, cleaned, saved or deleted. With an `identity`, every step saved records it and every step
    restored is compared with it. `verify=False` neither writes nor checks the
    arrays' checksums (the benchmark's baseline). Raises CheckpointError if a
    step directory is a symlink leading outside `directory`, and ValueError if
    `max_to_keep` < 1.
    """
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1, got {max_to_keep}.')
    self._identity = identity
    self._verify = verify
    self._read_only = read_only
    if _is_local(epath.Path(directory)):
      directory = os.path.abspath(directory)
    self._dir = epath.Path(directory)
    self._pending_step = None
    # Before orbax lists the steps: that already reads inside each step dir.
    self._check_step_links()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_KeepNewestSteps(max_to_keep),
        cleanup_tmp_directories=not read_only,  # Leftovers of a crash mid-save.
        read_only=read_only, create=not read_only,
        enable_async_checkpointing=async_save and not read_only,
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
          f'Cannot open checkpoints in {self._dir}: {vlog.brief(e)}') from e

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

    The metadata saved also holds the step, the arrays' checksums and the run's
    identity, under a key of this module's own ('checkpoint') that restore checks
    and strips from the metadata it returns. A step that exists is never
    overwritten; a step lower than the latest is saved only with `force` (and
    the keep policy may drop it at once).

    Returns:
      Whether a save was started.

    Raises:
      CheckpointError: if this save, or the previous async one, failed.
    """
    if self._read_only:
      raise CheckpointError(f'{self._dir} was opened read-only: nothing is saved there.')
    step = int(step)
    self.wait_until_finished()
    # Decided here rather than by orbax, whose notion of "latest" is the last
    # step saved, not the highest.
    steps = self._manager.all_steps()
    if step in steps or (not force and steps and step < max(steps)):
      logging.info('Not saving step %d: %s holds steps up to %d.', step,
                   self._dir, max(steps))
      return False
    own = {'step': step}
    if self._verify:
      own['checksums'] = checksums(state)
    if self._identity is not None:
      own['run'] = self._identity.record
    metadata = {**(metadata or {}), _OWN: own}
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
          f'Saving step {step} to {self._dir} failed: {vlog.brief(e)}') from e
    self._pending_step = step
    return True

  def wait_until_finished(self) -> None:
    """Blocks until an async save is committed; raises if it failed."""
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise CheckpointError(f'Async save of step {step} to {self._dir} '
                            f'failed: {vlog.brief(e)}') from e

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
      CheckpointError: the step is absent, a symlink out of the directory, its
        tree/shapes/dtypes differ from `target` (checked before reading), it
        holds another step than its directory's name, or another run's state.
      CorruptCheckpointError: the step's files cannot be read, or an array's
        bytes differ from those saved.
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
          f'{vlog.brief(e)}') from e
    state, metadata = restored[_STATE], restored[_METADATA]
    metadata = metadata if isinstance(metadata, dict) else {}
    own = metadata.get(_OWN) if isinstance(metadata.get(_OWN), dict) else {}
    # Steps saved before this module kept its own record had the trainer's {'step': n}.
    self._check_saved_step(step, own.get('step', metadata.get('step')))
    self._check_checksums(step, state, own.get('checksums'))
    self._check_run(step, own.get('run'))
    return step, state, {k: v for k, v in metadata.items() if k != _OWN} or None

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
          f'Cannot read metadata of {where}: {vlog.brief(e)}') from e
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

  def _check_saved_step(self, step: int, saved) -> None:
    if saved is not None and saved != step:
      raise CheckpointError(
          f'Checkpoint directory {self._step_dir(step)} holds step {saved}, not {step} '
          '(a copy or a link of another step?); move it out of '
          f'{self._dir} or give it its own step number.')

  def _check_checksums(self, step: int, state, saved) -> None:
    if not self._verify or not isinstance(saved, dict):  # Saved before checksums were.
      return
    bad = sorted(name for name, digest in checksums(state).items()
                 if saved.get(name, digest) != digest)
    if bad:
      shown = ', '.join(bad[:3]) + (f' and {len(bad) - 3} more' if len(bad) > 3 else '')
      raise CorruptCheckpointError(
          f'Step {step} in {self._step_dir(step)} is corrupt: the bytes of {shown} '
          'differ from those saved (their SHA-256 does not match the metadata).')

  def _check_run(self, step: int, saved) -> None:
    if self._identity is None:
      return
    if not isinstance(saved, dict):
      logging.warning('Checkpoint step %d in %s records no run identity (saved by an '
                      'older vae_jax); taking it as this run\'s.', step, self._dir)
      return
    diffs = self._identity.differences(saved)
    if not diffs:
      return
    listed = '\n  '.join(diffs)
    who = (f'run {record_digest(saved)} (checkpoint) vs {self._identity.digest} '
           f'(this run); checkpoint -> this run:\n  {listed}')
    if self._identity.allow_change:
      logging.warning('Checkpoint step %d in %s was saved by another config: %s',
                      step, self._dir, who)
      return
    raise CheckpointError(
        f'Checkpoint step {step} in {self._step_dir(step)} was saved by another run: '
        f'{who}\n{self._identity.hint}'.rstrip())

  def set_aside(self, step: int) -> epath.Path:
    """Moves a step under corrupted/ so that it is neither listed nor lost."""
    if self._read_only:
      raise CheckpointError(f'{self._dir} was opened read-only: step {step} stays where it is.')
    stamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S.%f')
    dest = self._dir / _CORRUPTED / f'{step}_{stamp}'
    try:
      dest.parent.mkdir(parents=True, exist_ok=True)
      self._step_dir(step).rename(dest)
    except FileNotFoundError:
      pass  # Another process of this run moved it first.
    except OSError as e:
      raise CheckpointError(f'Cannot move unreadable step {step} to {dest}: '
                            f'{vlog.brief(e)}') from e
    self._manager.reload()
    return dest
