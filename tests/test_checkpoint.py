"""Checkpointer: atomic commits, keep policy, shape checks, corruption."""

import logging
import os
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from vae_jax import checkpoint as ckpt_lib
from vae_jax.checkpoint import CheckpointError, Checkpointer

_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax 0.12's uncommitted-step suffix.


def _state(features=3, step=0, seed=0):
  params = nn.Dense(features).init(jax.random.key(seed), jnp.ones((1, 4)))
  # A few Adam updates so that mu, nu and count are not all zeros.
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)
  for _ in range(2):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return {'params': params, 'opt_state': opt_state, 'step': jnp.int32(step)}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_steps(directory, steps, **kwargs):
  with Checkpointer(directory, async_save=False, **kwargs) as ckpt:
    for s in steps:
      assert ckpt.save(s, _state(step=s, seed=s), metadata={'step': s})


@pytest.mark.parametrize('async_save', [True, False])
def test_round_trip_is_bit_identical(tmp_path, async_save):
  state = _state(step=7)
  meta = {'config_hash': 'abc', 'versions': {'jax': jax.__version__}}
  with Checkpointer(str(tmp_path), async_save=async_save) as ckpt:
    assert ckpt.save(7, state, metadata=meta)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [7] and ckpt.latest_step() == 7
    step, restored, restored_meta = ckpt.restore(_abstract(state))
  assert step == 7 and restored_meta == meta
  _assert_identical(restored, state)
  assert isinstance(restored['opt_state'][0], optax.ScaleByAdamState)
  assert isinstance(restored['opt_state'][1], optax.EmptyState)


def test_async_save_is_safe_with_donated_state(tmp_path):
  """The loop donates the state right after save() returns."""
  state = _state(step=1)
  expected = jax.tree.map(np.asarray, state)
  update = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state)
    # On CPU the host copy may alias a buffer and XLA then skips donating it;
    # on GPU/TPU the buffers are reused. Either way the saved values must be
    # those of the moment save() was called.
    new_state = update(state)
    ckpt.wait_until_finished()
    _, restored, _ = ckpt.restore(_abstract(new_state))
  _assert_identical(restored, expected)


def test_restore_keeps_target_sharding(tmp_path):
  """Replicated and sharded leaves come back where the target puts them.

  Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 to use 8 devices.
  """
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  state = jax.device_put(_state(), replicated)
  state['per_device'] = jax.device_put(
      jnp.arange(2.0 * len(jax.devices())), sharded)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state)
    ckpt.wait_until_finished()
    _, restored, meta = ckpt.restore(target)
  assert meta is None
  assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(
      lambda x: x.sharding, state)
  _assert_identical(restored, state)


def test_directory_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with Checkpointer('ckpts', async_save=False) as ckpt:
    assert ckpt.directory.is_absolute()
    ckpt.save(1, _state())
  assert (tmp_path / 'ckpts' / '1').is_dir()


def test_save_of_existing_step_is_a_noop(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.save(3, _state(seed=0), metadata={'v': 1})
    assert not ckpt.save(3, _state(seed=1), metadata={'v': 2})
    assert not ckpt.save(3, _state(seed=1), force=True)
    assert not ckpt.save(2, _state(seed=1))  # Older than the latest.
    _, restored, meta = ckpt.restore(_abstract(_state()))
  assert meta == {'v': 1}
  _assert_identical(restored, _state(step=0, seed=0))


def test_keep_policy_keeps_newest(tmp_path):
  _save_steps(str(tmp_path), range(1, 6), max_to_keep=2)
  with Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
    assert ckpt.all_steps() == [4, 5]
    # A forced save of an old step must not push out the newest one.
    assert ckpt.save(1, _state(), force=True)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [4, 5]
    assert not ckpt.save(3, _state())  # Lower than the latest, not forced.
    assert ckpt.save(6, _state())
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [5, 6]
  assert sorted(os.listdir(tmp_path)) == ['5', '6']


@pytest.mark.parametrize('max_to_keep', [0, -1])
def test_max_to_keep_is_validated(tmp_path, max_to_keep):
  with pytest.raises(ValueError, match='max_to_keep'):
    Checkpointer(str(tmp_path), max_to_keep=max_to_keep)


def test_uncommitted_step_is_ignored_and_cleaned_up(tmp_path):
  _save_steps(str(tmp_path), [1])
  # A crash between writing step 5 and renaming it leaves this behind.
  shutil.copytree(tmp_path / '1', tmp_path / f'5{_TMP_SUFFIX}')
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [1]
    step, _, meta = ckpt.restore_latest_valid(_abstract(_state()))
    assert (step, meta) == (1, {'step': 1})
    assert ckpt.save(2, _state(step=2))
    ckpt.wait_until_finished()
    assert sorted(os.listdir(tmp_path)) == ['1', '2']  # Leftover removed.
    assert ckpt.save(5, _state(step=5))
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2, 5]


def test_in_flight_async_save_is_not_listed(tmp_path, monkeypatch):
  """Until the rename commits, the step is neither listed nor restorable."""
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, _state())
    ckpt.wait_until_finished()
    finalize = ocp.path.atomicity.AtomicRenameTemporaryPath.finalize
    seen = {}

    def spy(self, *args, **kwargs):
      seen['steps'] = ckpt.all_steps()
      return finalize(self, *args, **kwargs)

    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath,
                        'finalize', spy)
    ckpt.save(2, _state())
    ckpt.wait_until_finished()
    assert seen['steps'] == [1] and ckpt.all_steps() == [1, 2]


def test_shape_mismatch_names_leaves_and_reads_nothing(tmp_path, monkeypatch):
  _save_steps(str(tmp_path), [1])
  with Checkpointer(str(tmp_path)) as ckpt:
    monkeypatch.setattr(ckpt._manager, 'restore', pytest.fail)
    with pytest.raises(CheckpointError) as info:
      ckpt.restore_latest_valid(_abstract(_state(features=5)))
  message = str(info.value)
  assert ('params/params/kernel: checkpoint (4, 3) float32, '
          'model (4, 5) float32') in message
  assert 'opt_state/0/mu/params/bias: checkpoint (3,) float32' in message
  assert os.listdir(tmp_path) == ['1']  # A model change is not corruption.


def test_dtype_and_structure_mismatch(tmp_path):
  _save_steps(str(tmp_path), [1])
  target = _abstract(_state())
  target['step'] = jax.ShapeDtypeStruct((), jnp.float32)
  target['extra'] = jax.ShapeDtypeStruct((2,), jnp.float32)
  del target['opt_state']
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError) as info:
      ckpt.restore(target)
  message = str(info.value)
  assert 'step: checkpoint () int32, model () float32' in message
  assert 'extra: checkpoint missing, model (2,) float32' in message
  assert 'opt_state/0/count: checkpoint () int32, model missing' in message


def _truncate_data(step_dir):
  for root, _, files in os.walk(step_dir / 'state' / 'd'):
    for name in files:
      open(os.path.join(root, name), 'w').close()


def _delete_tree_metadata(step_dir):
  os.remove(step_dir / 'state' / '_METADATA')


def _corrupt_json_metadata(step_dir):
  (step_dir / 'metadata' / 'metadata').write_text('{"trunc')


def _delete_json_metadata(step_dir):
  shutil.rmtree(step_dir / 'metadata')


# TensorStore reports a failed read after orbax has closed its event loop.
_IGNORE_CLOSED_LOOP = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


@_IGNORE_CLOSED_LOOP
@pytest.mark.parametrize(
    'corrupt', [_truncate_data, _delete_tree_metadata, _corrupt_json_metadata,
                _delete_json_metadata])
def test_corrupted_newest_is_set_aside(tmp_path, caplog, corrupt):
  _save_steps(str(tmp_path), [1, 2])
  corrupt(tmp_path / '2')
  with Checkpointer(str(tmp_path)) as ckpt:
    with caplog.at_level(logging.WARNING):
      step, restored, meta = ckpt.restore_latest_valid(_abstract(_state()))
    assert (step, meta) == (1, {'step': 1})
    _assert_identical(restored, _state(step=1, seed=1))
    assert ckpt.all_steps() == [1]
    assert ckpt.save(2, _state())  # The step number is free again.
  assert any('step 2' in r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING)
  (moved,) = os.listdir(tmp_path / 'corrupted')
  assert moved.startswith('2_')
  assert (tmp_path / 'corrupted' / moved / 'state').is_dir()


@_IGNORE_CLOSED_LOOP
def test_all_corrupted_raises_but_keeps_files(tmp_path):
  _save_steps(str(tmp_path), [1, 2])
  for s in (1, 2):
    _truncate_data(tmp_path / str(s))
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError, match='step 2.*step 1'):
      ckpt.restore_latest_valid(_abstract(_state()))
    assert ckpt.restore_latest_valid(_abstract(_state())) is None
  assert len(os.listdir(tmp_path / 'corrupted')) == 2


def test_no_checkpoint(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    assert ckpt.restore_latest_valid(_abstract(_state())) is None
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
      ckpt.restore(_abstract(_state()))


def _fail(*args, **kwargs):
  raise OSError('No space left on device')


async def _fail_async(*args, **kwargs):
  _fail()


@pytest.mark.parametrize('async_save', [True, False])
def test_failed_write_raises_and_is_never_listed(tmp_path, monkeypatch,
                                                 async_save):
  """The data write fails (disk full): nothing half-written is listed."""
  with Checkpointer(str(tmp_path), async_save=async_save) as ckpt:
    ckpt.save(1, _state())
    ckpt.wait_until_finished()
    monkeypatch.setattr(ocp.StandardCheckpointHandler, 'async_save',
                        _fail_async)
    with pytest.raises(CheckpointError, match='step 2.*No space left'):
      ckpt.save(2, _state())
    assert ckpt.all_steps() == [1]
    monkeypatch.undo()
    assert ckpt.save(2, _state())  # The next attempt still works.
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2]


def test_failed_async_commit_raises_on_wait(tmp_path, monkeypatch):
  """The background commit fails after save() returned."""
  with Checkpointer(str(tmp_path)) as ckpt:
    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath,
                        'finalize', _fail)
    assert ckpt.save(1, _state())
    with pytest.raises(CheckpointError, match='step 1.*No space left'):
      ckpt.wait_until_finished()
    assert ckpt.all_steps() == [] and ckpt.latest_step() is None
  assert not (tmp_path / '1').exists()


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason='root writes through 0o555; the monkeypatched failures above cover '
    'this, or run as root under `unshare --user` (which drops the override)')
def test_read_only_directory(tmp_path):
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    os.chmod(tmp_path, 0o555)
    try:
      with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        ckpt.save(1, _state())
      assert ckpt.all_steps() == []
    finally:
      os.chmod(tmp_path, 0o755)


def test_unserialisable_metadata_fails_before_writing(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError, match='JSON'):
      ckpt.save(1, _state(), metadata={'lr': object()})
  assert os.listdir(tmp_path) == []


def test_symlink_out_of_directory_is_refused(tmp_path):
  outside = tmp_path / 'outside'
  _save_steps(str(outside), [5])
  before = sorted(p for p in os.walk(outside))
  ckpt_dir = tmp_path / 'ckpts'
  _save_steps(str(ckpt_dir), [1])
  os.symlink(outside / '5', ckpt_dir / '5')
  with pytest.raises(CheckpointError, match=re.escape(str(ckpt_dir / '5'))):
    Checkpointer(str(ckpt_dir))
  assert sorted(p for p in os.walk(outside)) == before


def test_symlink_created_after_open_is_refused_at_restore(tmp_path):
  outside = tmp_path / 'outside'
  _save_steps(str(outside), [5])
  ckpt_dir = tmp_path / 'ckpts'
  with Checkpointer(str(ckpt_dir), async_save=False) as ckpt:
    ckpt.save(1, _state())
    os.symlink(outside / '5', ckpt_dir / '5')
    ckpt._manager.reload()  # As if another process had listed it.
    with pytest.raises(CheckpointError, match='symlink'):
      ckpt.restore_latest_valid(_abstract(_state()))
  assert (outside / '5' / 'state').is_dir()
  assert not (ckpt_dir / 'corrupted').exists()


def test_no_pickle(tmp_path):
  with open(ckpt_lib.__file__) as f:
    source = f.read()
  assert 'import pickle' not in source and 'PyTreeSave' not in source
  _save_steps(str(tmp_path), [1])
  for root, _, files in os.walk(tmp_path):
    for name in files:
      with open(os.path.join(root, name), 'rb') as f:
        head = f.read(2)
      # Pickle protocols 2-5 start with the PROTO opcode.
      is_pickle = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
      assert not is_pickle, name


# What a step holds is checked against what it says it is, after reading it.

def _weights(seed):
  """A state with one array large enough to live in its own compressed data file."""
  w = np.random.RandomState(seed).randn(256, 256).astype(np.float32)
  return {'w': jnp.asarray(w), 'step': jnp.int32(seed)}


def _flip_a_bit_in_the_middle_of_the_largest_array_file(step_dir):
  data_dir = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
  path = max((os.path.join(data_dir, name) for name in os.listdir(data_dir)),
             key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


def test_flipped_bytes_are_a_corrupt_step_set_aside_for_the_previous(tmp_path, caplog):
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, _weights(1))
    ckpt.save(2, _weights(2))
  _flip_a_bit_in_the_middle_of_the_largest_array_file(tmp_path / '2')
  target = _abstract(_weights(0))
  # What restore did before the checksums: other numbers, no complaint.
  with Checkpointer(str(tmp_path), verify=False) as ckpt:
    _, silently_wrong, _ = ckpt.restore(target, 2)
  assert not np.array_equal(np.asarray(silently_wrong['w']), np.asarray(_weights(2)['w']))
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(ckpt_lib.CorruptCheckpointError,
                       match=r'Step 2 in \S+/2 is corrupt: the bytes of w differ'):
      ckpt.restore(target, 2)
    with caplog.at_level(logging.WARNING):
      step, restored, _ = ckpt.restore_latest_valid(target)
  assert step == 1
  _assert_identical(restored, _weights(1))
  assert any('Checkpoint step 2 is unreadable, moved to' in r.getMessage() and
             'the bytes of w differ' in r.getMessage() for r in caplog.records)
  assert [name.split('_')[0] for name in os.listdir(tmp_path / 'corrupted')] == ['2']


@pytest.mark.parametrize('how', ['copy', 'link'])
def test_step_directory_holding_another_step_is_refused(tmp_path, how):
  _save_steps(str(tmp_path), [150])
  if how == 'copy':
    shutil.copytree(tmp_path / '150', tmp_path / '300')
  else:
    os.symlink('150', tmp_path / '300')  # A sibling: inside the directory.
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [150, 300]
    for restore in (lambda: ckpt.restore(_abstract(_state())),
                    lambda: ckpt.restore_latest_valid(_abstract(_state()))):
      with pytest.raises(CheckpointError, match=r'/300 holds step 150, not 300'):
        restore()
  assert sorted(os.listdir(tmp_path)) == ['150', '300']  # Refused, not set aside.


def _identity(seed=0, beta=1.0, allow_change=False):
  from vae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.default_config()
  c.seed, c.objective.beta, c.resume.allow_config_change = seed, beta, allow_change
  return workdir_lib.run_identity(c, hint='Move that step out.')


def test_step_of_another_run_is_refused_naming_both(tmp_path, caplog):
  other = _identity(seed=1, beta=2.0)
  with Checkpointer(str(tmp_path), async_save=False, identity=other) as ckpt:
    ckpt.save(5, _state())
  this = _identity()
  with Checkpointer(str(tmp_path), identity=this) as ckpt:
    with pytest.raises(CheckpointError) as info:
      ckpt.restore(_abstract(_state()))
  message = str(info.value)
  assert f'run {other.digest} (checkpoint) vs {this.digest} (this run)' in message
  assert 'objective.beta: 2.0 -> 1.0' in message and 'seed: 1 -> 0' in message
  assert message.endswith('Move that step out.')
  # The same run restores silently; an intended change restores with a warning.
  with Checkpointer(str(tmp_path), identity=_identity(seed=1, beta=2.0)) as ckpt:
    ckpt.restore(_abstract(_state()))
  with Checkpointer(str(tmp_path), identity=_identity(allow_change=True)) as ckpt:
    with caplog.at_level(logging.WARNING):
      ckpt.restore(_abstract(_state()))
  assert any('was saved by another config' in r.getMessage() and
             'seed: 1 -> 0' in r.getMessage() for r in caplog.records)


def test_step_saved_without_identity_or_checksums_restores_with_a_warning(tmp_path, caplog,
                                                                           monkeypatch):
  # As older versions saved: the caller's metadata only.
  monkeypatch.setattr(ckpt_lib, 'checksums', lambda tree: None)
  with Checkpointer(str(tmp_path), async_save=False, verify=False) as ckpt:
    ckpt.save(5, _state(), metadata={'step': 5})
  monkeypatch.undo()
  with Checkpointer(str(tmp_path), identity=_identity()) as ckpt:
    with caplog.at_level(logging.WARNING):
      step, restored, meta = ckpt.restore(_abstract(_state()))
  assert step == 5 and meta == {'step': 5}
  _assert_identical(restored, _state())
  assert any('records no run identity' in r.getMessage() for r in caplog.records)
