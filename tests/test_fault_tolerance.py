"""Fault tolerance and bad input: nothing lost, nothing silent (issue 7).

One test, or a small group, per scenario: test_NN_* is scenario NN. What other
files already cover is not repeated here:

   2  Checkpointer level: test_checkpoint.py::test_uncommitted_step_is_ignored_and_cleaned_up.
   3  SIGTERM saves at the current step, exits 0 in bounded time, the next launch
      resumes: test_cli.py::test_sigterm_saves_and_exits_zero_then_resumes; outside
      the training loop (data loading, restore, final evaluation) it ends the process
      with the signal and changes no checkpoint:
      test_cli.py::test_sigterm_outside_the_training_loop_ends_with_the_signal_and_keeps_checkpoints.
   4  Checkpointer level: test_checkpoint.py::test_failed_write_raises_and_is_never_listed,
      ::test_failed_async_commit_raises_on_wait.
   5  Checkpointer level: test_checkpoint.py::test_corrupted_newest_is_set_aside (four kinds
      of damage), ::test_all_corrupted_raises_but_keeps_files.
   6  Forced saves of old steps: test_checkpoint.py::test_keep_policy_keeps_newest.
   7  NaN / inf (each with NaN and with +inf in the loss and gradients):
      test_train.py::test_nan_stops_naming_the_step_and_keeps_last_checkpoint,
      ::test_skip_policy_stops_after_bounded_run (both restore the last checkpoint and
      check every leaf is finite).
   9  validate level: test_config.py::test_bad_value_names_the_field,
      ::test_batch_must_divide_device_count, ::test_cli_rejects_misspelt_field.
  10  Changed config refused, a shape change never loads:
      test_train.py::test_resume_with_changed_config_is_refused.
  11  Tree, shapes and dtypes checked before any array is read: test_checkpoint.py::
      test_shape_mismatch_names_leaves_and_reads_nothing, ::test_dtype_and_structure_mismatch
      (and at run level test_train.py::test_resume_with_changed_config_is_refused);
      no pickle on disk: test_checkpoint.py::test_no_pickle.
  12  A workdir that is a file: test_cli.py::test_workdir_that_is_a_file_is_a_clear_error;
      step symlinks, Checkpointer level:
      test_checkpoint.py::test_symlink_out_of_directory_is_refused.
  13  Same seed same numbers, another seed differs:
      test_train.py::test_same_seed_same_params_other_seed_differs.
  16  Checkpointer level: test_checkpoint.py::test_step_of_another_run_is_refused_naming_both,
      ::test_step_directory_holding_another_step_is_refused,
      ::test_flipped_bytes_are_a_corrupt_step_set_aside_for_the_previous.

chmod does not stop root, so a read-only or a full file system is made for real
in new user and mount namespaces (`unshare --user --map-root-user --mount`: a
read-only bind mount, a small tmpfs) and the CLI runs inside; those tests skip
where namespaces are not allowed.
"""

import errno
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_checkpoint import _TMP_SUFFIX
from test_cli import ROOT, TINY, train_command
from test_train import assert_trees_equal, restored_state, tiny_config
from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import evaluate
from vae_jax import evaluate_workdir
from vae_jax import experiment
from vae_jax import logs as vlog
from vae_jax import models
from vae_jax import objectives
from vae_jax import sampling
from vae_jax import train
from vae_jax import workdir as workdir_lib

# TensorStore reports a failed read (test_05) after orbax has closed its event
# loop, and the report can surface in whichever test runs next.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _namespaces_work():
  try:
    subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'true'],
                   check=True, capture_output=True, timeout=30)
    return True
  except (OSError, subprocess.SubprocessError):
    return False


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason='needs `unshare --user --map-root-user --mount`')


def run_in_namespace(setup, command, timeout, after='true'):
  """Runs argv `command` between the shell lines `setup` and `after`, as root of new
  user and mount namespaces; returns with the command's exit status."""
  script = f'{setup} || exit 99; "$@"; status=$?; {after}; exit $status'
  return subprocess.run(
      ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c', script, 'sh'] + command,
      cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_only_bind(path):
  path = shlex.quote(str(path))
  return f'mount --bind {path} {path} && mount -o remount,bind,ro {path}'


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished tiny run (tests/test_train.py's config): checkpoints at steps 20 and 40."""
  workdir = tmp_path_factory.mktemp('finished')
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


def copy_of(workdir, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy, symlinks=True)
  return copy


def committed_steps(workdir):
  with checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints')) as ckpt:
    return ckpt.all_steps()


def _fail(*args, **kwargs):
  raise OSError(errno.ENOSPC, 'No space left on device')


async def _fail_async(*args, **kwargs):
  _fail()


def _largest_data_file(step_dir):
  data_dir = step_dir / 'state' / 'ocdbt.process_0' / 'd'
  files = [os.path.join(root, name) for root, _, names in os.walk(data_dir) for name in names]
  return max(files, key=os.path.getsize)


# 1. kill -9 mid-training, then resume.

def _committed_step_dirs(directory):
  return [name for name in os.listdir(directory) if name.isdigit()] if directory.is_dir() else []


def _digits_npz(path):
  """embedded MNIST's digits as an .npz ('train', 'test'), for the streamed variant."""
  ds = data.load(config_lib.default_config().data)
  np.savez(path, train=np.asarray(ds.train), test=np.asarray(ds.eval))
  return path


@pytest.mark.slow
@pytest.mark.parametrize('input_path', ['memory', 'stream'])
def test_01_kill9_mid_training_then_resume_is_bit_identical(tmp_path, input_path):
  num_steps = 3000
  overrides = [f for f in TINY if not f.startswith(('--config.train.checkpoint_every_steps',
                                                     '--config.train.log_every_steps'))]
  overrides += ['--config.train.checkpoint_every_steps=100', '--config.train.log_every_steps=50']
  if input_path == 'stream':  # grain with a worker process, its position in each checkpoint.
    overrides += ['--config.data.name=npz', '--config.data.input=stream',
                  '--config.data.workers=1',
                  f'--config.data.path={_digits_npz(tmp_path / "digits.npz")}']

  def command(workdir):
    return train_command(workdir, num_steps)[:6] + overrides

  killed = tmp_path / 'killed'
  proc = subprocess.Popen(command(killed), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not _committed_step_dirs(killed / 'checkpoints'):  # Kill once a checkpoint exists.
      assert proc.poll() is None and time.monotonic() < deadline
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL
  assert str(num_steps) not in _committed_step_dirs(killed / 'checkpoints')  # Killed mid-run.

  resumed = subprocess.run(command(killed), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  start = int(re.search(r'Resumed from \S+ at step (\d+)\.', resumed.stdout).group(1))
  assert 100 <= start < num_steps
  full = tmp_path / 'uninterrupted'
  uninterrupted = subprocess.run(command(full), cwd=ROOT, capture_output=True, text=True,
                                 timeout=300)
  assert uninterrupted.returncode == 0, uninterrupted.stderr

  config = workdir_lib.load_config(str(full))
  step_a, state_a, _ = restored_state(str(full), config)
  step_b, state_b, _ = restored_state(str(killed), config)
  assert step_a == step_b == num_steps
  assert_trees_equal(state_a, state_b)  # Params, optimiser state and step.
  # The batches after the resume are the same ones: every logged training loss
  # after the resume equals the uninterrupted run's (the killed run's own lines
  # for the steps it redid come first in its metrics file, so the last one wins).
  after = {workdir: {r['step']: r for r in vlog.read_metrics(str(workdir), 'train')
                     if r['step'] > start} for workdir in (full, killed)}
  assert after[full].keys() == after[killed].keys() and len(after[full]) >= 10
  for step, record in after[full].items():
    assert {k: record[k] for k in ('loss', 'recon', 'kl')} == {
        k: after[killed][step][k] for k in ('loss', 'recon', 'kl')}, step
  assert (json.loads((full / 'final_metrics.json').read_text())
          == json.loads((killed / 'final_metrics.json').read_text()))


# 2. A crash between a checkpoint's write and its commit.

def test_02_leftover_of_an_uncommitted_save_is_cleaned_and_the_run_carries_on(
    finished_run, tmp_path, capsys):
  workdir = copy_of(finished_run, tmp_path)
  ckpts = workdir / 'checkpoints'
  # What a crash before the rename leaves: step 60 written halfway, never committed.
  leftover = ckpts / f'60{_TMP_SUFFIX}'
  shutil.copytree(ckpts / '40', leftover)
  for marker in leftover.rglob('commit_success.txt'):
    marker.unlink()
  os.truncate(_largest_data_file(leftover), 100)
  train.train_and_evaluate(tiny_config(train__num_steps=80), str(workdir))
  assert re.search(r'Resumed from \S+ at step 40\.', capsys.readouterr().out)
  assert sorted(os.listdir(ckpts)) == ['40', '60', '80']  # Keep 3; leftover gone.
  step, state, _ = restored_state(str(workdir), tiny_config(), step=60)
  assert step == 60 and int(state['step']) == 60
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


# 3. SIGTERM: tests/test_cli.py (see the module docstring).

# 4. A checkpoint save that fails.

@pytest.mark.parametrize('stage', ['write', 'commit'])
def test_04_failed_save_stops_the_run_with_the_error_and_lists_no_half_written_step(
    finished_run, tmp_path, monkeypatch, stage):
  workdir = copy_of(finished_run, tmp_path)
  os.remove(workdir / 'final_metrics.json')
  if stage == 'write':  # The data write fails (disk full): save() raises.
    monkeypatch.setattr(ocp.StandardCheckpointHandler, 'async_save', _fail_async)
  else:  # The background commit fails: the next save (or the end of the run) raises.
    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath, 'finalize', _fail)
  with pytest.raises(checkpoint.CheckpointError, match=r'step 60 .*No space left on device'):
    train.train_and_evaluate(tiny_config(train__num_steps=80), str(workdir))
  monkeypatch.undo()
  assert not (workdir / 'final_metrics.json').exists()  # No results reported as if all was well.
  assert not (workdir / 'checkpoints' / '60').exists()
  assert committed_steps(workdir) == [20, 40]


@needs_namespaces
def test_04_read_only_disk_exits_nonzero_at_once_with_the_error(tmp_path):
  workdir = tmp_path / 'run'
  ckpts = workdir / 'checkpoints'
  ckpts.mkdir(parents=True)
  start = time.monotonic()
  result = run_in_namespace(read_only_bind(ckpts), train_command(workdir, 20), timeout=300)
  # Before checkpoint.py created step directories synchronously, orbax's writer
  # threads waited 300 s for a directory that could not be made.
  assert time.monotonic() - start < 120
  assert result.returncode == 1, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: Saving step 20') and 'Read-only file system' in last, last
  assert os.listdir(ckpts) == []
  assert not (workdir / 'final_metrics.json').exists()


@pytest.mark.slow
@needs_namespaces
def test_04_full_disk_exits_nonzero_with_the_error(tmp_path):
  disk = tmp_path / 'disk'
  disk.mkdir()
  workdir = disk / 'run'
  # 256 KiB: room for config, logs and metrics, not for a ~600 KB checkpoint.
  setup = f'mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(disk))}'
  start = time.monotonic()
  # The tmpfs goes with the namespace: list the checkpoints before leaving it.
  listing = f'echo LISTING; ls -A {shlex.quote(str(workdir / "checkpoints"))}'
  result = run_in_namespace(setup, train_command(workdir, 20), timeout=300, after=listing)
  assert time.monotonic() - start < 120
  assert result.returncode == 1, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'step 20' in last, last
  assert 'No space left on device' in last, last
  assert 'Final held-out ELBO' not in result.stdout
  left = result.stdout.split('LISTING')[1].split()
  assert not [name for name in left if name.isdigit()], left  # Nothing half-written listed.


# 5. A corrupted newest checkpoint.

def _truncate_largest(step_dir):
  path = _largest_data_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _delete_largest(step_dir):
  os.remove(_largest_data_file(step_dir))


@pytest.mark.parametrize('damage', [_truncate_largest, _delete_largest])
def test_05_corrupted_newest_is_named_set_aside_and_the_run_carries_on_from_the_previous(
    finished_run, tmp_path, caplog, capsys, damage):
  workdir = copy_of(finished_run, tmp_path)
  damage(workdir / 'checkpoints' / '40')
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(tiny_config(train__num_steps=60), str(workdir))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(w.startswith('Checkpoint step 40 is unreadable, moved to') for w in warnings), warnings
  assert all(len(w) < 2000 for w in warnings)  # A reason, not TensorStore's whole spec.
  assert re.search(r'Resumed from \S+ at step 20\.', capsys.readouterr().out)
  (moved,) = os.listdir(workdir / 'checkpoints' / 'corrupted')
  assert moved.startswith('40_')
  assert committed_steps(workdir) == [20, 40, 60]
  # The redone step 40 is the one the run saved before the damage.
  _, redone, _ = restored_state(str(workdir), tiny_config(), step=40)
  _, original, _ = restored_state(str(finished_run), tiny_config(), step=40)
  assert_trees_equal(redone, original)


# 6. The keep policy never deletes the newest step.

def test_06_keep_policy_never_deletes_the_newest_step(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  config = tiny_config(train__checkpoint_every_steps=10, train__max_checkpoints_to_keep=1)
  real_save, seen = checkpoint.Checkpointer.save, []

  def save_and_list(self, step, *args, **kwargs):
    started = real_save(self, step, *args, **kwargs)
    self.wait_until_finished()
    seen.append((step, self.all_steps()))
    return started

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save_and_list)
  train.train_and_evaluate(config, workdir)
  assert seen == [(10, [10]), (20, [20]), (30, [30]), (40, [40])]
  monkeypatch.undo()
  # Keeping one, a save that never commits must not cost the one kept.
  monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath, 'finalize', _fail)
  config.train.num_steps = 60
  with pytest.raises(checkpoint.CheckpointError, match='step 50'):
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert committed_steps(workdir) == [40]


# 7. NaN / inf: tests/test_train.py (see the module docstring).

# 8. Numeric edge cases through the real model and objectives.

_SHAPE = (6, 6, 1)
_LATENT = 4
_MIXTURES = 3  # Components of the logistic mixture.
_LOG_VARIANCES = [-100.0, 1e4, [-100.0, -30.0, 30.0, 1e4]]  # Per latent dimension.
_LOGITS = [200.0, -200.0, np.where(np.arange(np.prod(_SHAPE)) % 2, 200.0, -200.0)]
_DECODER_LOG_SCALES = [-100.0, 1e4]  # Second output planes: log-scales, context weights.
# Per likelihood, the decoder planes (per pixel) that get the extreme first output (the
# Bernoulli logit; the Gaussian, logistic and mixture components' means, and one mixture
# logit) and those that get the extreme log-scale; None where there is no scale.
_PLANES = {
    'bernoulli': ([0], None),
    'local_bernoulli': ([0], [1, 2, 3, 4]),  # The second planes: its 4 context weights.
    'causal_bernoulli': ([0], list(range(1, 13))),  # Its 12 learned features' weights.
    'gaussian': ([0], [1]),
    'discretized_logistic': ([0], [1]),
    'logistic_mixture': ([0] + list(range(_MIXTURES, 2 * _MIXTURES)),
                         list(range(2 * _MIXTURES, 3 * _MIXTURES))),
}


def _with_extremes(params, log_var, first_plane, second_plane, planes):
  """Shifts the output layers' biases: encoder log-variances and decoder outputs become extreme."""
  first_planes, second_planes = planes
  params = jax.tree.map(jnp.asarray, params)
  enc = params['encoder']['Dense_1']
  enc['bias'] = enc['bias'].at[_LATENT:].add(jnp.asarray(log_var, jnp.float32))
  dec = params['decoder']['Dense_1']
  out = dec['bias'].reshape(np.prod(_SHAPE), -1)  # [pixel, plane]: the likelihood's split.
  first = jnp.asarray(first_plane, jnp.float32)
  out = out.at[:, first_planes].add(first[..., None] if first.ndim else first)
  if second_plane is not None:
    out = out.at[:, second_planes].add(second_plane)
  dec['bias'] = out.reshape(-1)
  return params


def _raw_log_var(model, params, x):
  """The encoder's log-variances before any clipping: the second half of its features."""
  return model.apply({'params': params}, x, method=lambda m, x: m.encoder(x))[:, _LATENT:]


def test_08_the_planes_cover_every_likelihood():
  assert set(_PLANES) == set(models.LIKELIHOODS)
  for name, (first, second) in _PLANES.items():
    channels = models.likelihoods.make_likelihood(
        name, channels=1, levels=256, num_mix=_MIXTURES).out_channels(1)
    assert max(first + (second or [])) < channels and (second is None) == (channels == 1)


@pytest.mark.parametrize('likelihood', models.LIKELIHOODS)
@pytest.mark.parametrize('objective,free_bits,num_samples', [
    ('elbo', 0.0, 1), ('elbo', 0.5, 1), ('iwae', 0.0, 4)])
def test_08_extreme_logits_and_log_variances_keep_loss_and_gradients_finite(
    likelihood, objective, free_bits, num_samples):
  model_config = config_lib.default_config().model
  model_config.hidden, model_config.latent_dim = (16,), _LATENT
  model_config.likelihood = likelihood
  model_config.num_mixtures = _MIXTURES
  model = models.make_model(model_config, _SHAPE)
  binary = likelihood in ('bernoulli', 'local_bernoulli', 'causal_bernoulli')
  levels = [0.0, 1.0] if binary else [0.0, 0.5, 1.0]  # Edges and interior.
  x = jnp.asarray(np.resize(levels, (3,) + _SHAPE), jnp.float32)
  params = models.init_params(model, jax.random.key(0), _SHAPE)
  loss_fn = objectives.make_loss_fn(model, objective, beta=1.0, warmup_steps=0,
                                    free_bits=free_bits, num_samples=num_samples)
  loss_and_grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  planes = _PLANES[likelihood]
  seconds = _DECODER_LOG_SCALES if planes[1] is not None else [None]
  for log_var in _LOG_VARIANCES:
    for logits in _LOGITS:
      for second in seconds:
        extreme = _with_extremes(params, log_var, logits, second, planes)
        raw_log_var = _raw_log_var(model, extreme, x)
        assert float(jnp.max(jnp.abs(raw_log_var))) > 95  # The extremes reach the objective.
        with jax.debug_nans(True):
          (loss, metrics), grads = loss_and_grads(extreme, x, jax.random.key(2), jnp.int32(3))
        case = f'log_var={log_var} logits={np.ravel(logits)[:2]} second={second}'
        assert np.isfinite(float(loss)), case
        assert all(np.isfinite(float(v)) for v in metrics.values()), case
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)), case


# 9. Bad configs fail fast, name the field, write and compile nothing.

BAD_FIELDS = [
    ('model.latent_dim', 0), ('model.hidden', (32, 0)), ('train.batch_size', 0),
    ('train.num_steps', -5), ('eval.batch_size', -100), ('optimizer.learning_rate', -1e-3),
    ('data.name', 'imagenet'), ('model.architecture', 'resnet'), ('model.likelihood', 'poisson'),
    ('optimizer.name', 'lion'), ('objective.num_samples', 5),
]


@pytest.fixture
def compilations():
  """Messages jax logs for each compilation during the test (jax_log_compiles)."""
  messages = []

  class Collect(logging.Handler):
    def emit(self, record):
      if 'ompil' in record.getMessage():
        messages.append(record.getMessage())

  handler, logger = Collect(logging.DEBUG), logging.getLogger('jax')
  logger.addHandler(handler)
  previous = jax.config.jax_log_compiles
  jax.config.update('jax_log_compiles', True)
  try:
    yield messages
  finally:
    jax.config.update('jax_log_compiles', previous)
    logger.removeHandler(handler)


@pytest.mark.parametrize('field,value', BAD_FIELDS)
def test_09_bad_config_fails_fast_naming_the_field_with_no_workdir_and_no_compilation(
    tmp_path, compilations, field, value):
  config = tiny_config()
  section, name = field.split('.')
  config[section][name] = value
  workdir = tmp_path / 'run'
  start = time.monotonic()
  with pytest.raises(config_lib.ConfigError, match=re.escape(f'config.{field}:')):
    train.train_and_evaluate(config, str(workdir))
  assert time.monotonic() - start < 10  # Microseconds of checks; generous for a loaded machine.
  assert not workdir.exists()
  assert compilations == []
  jax.jit(lambda v: v * 3.0 + 1.0)(np.arange(3.0))  # The log does catch a compilation.
  assert compilations


def _cli(workdir, overrides, env=None, timeout=120):
  env = dict(os.environ, JAX_LOG_COMPILES='1', **(env or {}))
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.main', '--config=configs/quickstart.py',
       f'--workdir={workdir}'] + overrides,
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  return result, time.monotonic() - start


@pytest.mark.parametrize('overrides,env,named', [
    (['--config.model.latnet_dim=5'], {}, 'latnet_dim'),
    (['--config.train.batch_size=100'],
     {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
     'config.train.batch_size: 100 is not divisible by the 8 devices'),
])
def test_09_cli_bad_config_fails_fast_with_no_workdir_and_no_compilation(
    tmp_path, overrides, env, named):
  result, seconds = _cli(tmp_path / 'run', overrides, env)
  assert result.returncode != 0
  assert named in result.stderr
  assert 'Traceback' not in result.stderr
  assert 'Compiling' not in result.stdout + result.stderr
  assert not (tmp_path / 'run').exists()
  assert seconds < 60  # Startup only (~1-3 s); generous for a loaded machine.


def _cli_value(value):
  return '(' + ','.join(map(str, value)) + ',)' if isinstance(value, tuple) else str(value)


@pytest.mark.slow
def test_09_cli_every_bad_field(tmp_path):
  for field, value in BAD_FIELDS:
    workdir = tmp_path / field
    result, seconds = _cli(workdir, [f'--config.{field}={_cli_value(value)}'])
    assert result.returncode == 1, (field, result.stderr)
    assert f'config.{field}:' in result.stderr, (field, result.stderr)
    assert 'Traceback' not in result.stderr and 'Compiling' not in result.stderr, field
    assert not workdir.exists() and seconds < 60, field
  # The same check sees compilations when there are some.
  result, _ = _cli(tmp_path / 'valid', TINY + ['--config.train.num_steps=5'])
  assert result.returncode == 0 and 'Compiling' in result.stderr


# 10. Resume with a changed config: tests/test_train.py (see the module docstring).

# 11. Untrusted files.

_UNSAFE = [
    (r'^\s*(import|from)\s+(c?pickle|_pickle|cloudpickle|dill|shelve|marshal)\b',
     'unpickling module'),
    (r'\b(c?pickle|cloudpickle|dill|marshal|shelve)\.', 'unpickling call'),
    (r'allow_pickle\s*=\s*True', 'allow_pickle=True'),
    (r'\b(np|numpy|jnp|onp)\.load\s*\((?![^)]*allow_pickle\s*=\s*False)',
     'np.load without allow_pickle=False'),
    (r'\byaml\.(load|unsafe_load|full_load|load_all)\s*\(', 'yaml.load'),
    (r'(?<![\w.])(eval|exec|compile)\s*\(', 'eval/exec/compile'),
    (r'\b__import__\s*\(', '__import__'),
    (r'\btorch\.load\s*\(', 'torch.load'),
    (r'\bPyTree(Save|Restore|CheckpointHandler)\b', 'orbax PyTree handlers (may pickle)'),
]


def _unsafe(line):
  code = line.split('#', 1)[0]
  return [what for pattern, what in _UNSAFE if re.search(pattern, code)]


@pytest.mark.parametrize('line,flagged', [
    ('import pickle', True), ('from cloudpickle import loads', True), ('x = pickle.loads(b)', True),
    ('np.load(f)', True), ('np.load(f, allow_pickle=True)', True), ('yaml.load(s)', True),
    ('eval(s)', True), ('exec(code)', True), ('m = __import__(name)', True),
    ('np.load(f, allow_pickle=False)', False), ('yaml.safe_load(s)', False),
    ('evaluate.evaluate_elbo(m, p, x, k)', False), ('ds.num_eval', False),
    ("'no pickle'  # a docstring", False),
])
def test_11_unsafe_patterns_are_recognised(line, flagged):
  assert bool(_unsafe(line)) == flagged


def test_11_nothing_in_the_package_unpickles_or_executes_strings():
  package = os.path.join(ROOT, 'vae_jax')
  hits = []
  for name in sorted(os.listdir(package)):
    if name.endswith('.py'):
      with open(os.path.join(package, name), encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
          hits += [f'vae_jax/{name}:{number}: {what}: {line.strip()}' for what in _unsafe(line)]
  assert hits == []


def test_11_saved_config_is_read_as_data_never_executed(finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  sentinel = tmp_path / 'executed'
  payload = f"__import__('os').system('touch {sentinel}')"
  path = workdir / 'config.json'
  saved = json.loads(path.read_text())
  saved['model']['activation'] = payload
  saved['seed'] = f"eval(\"open('{sentinel}', 'w')\")"
  path.write_text(json.dumps(saved))
  assert workdir_lib.load_config(str(workdir)).model.activation == payload  # A string.
  with pytest.raises(workdir_lib.WorkdirError) as info:
    train.train_and_evaluate(tiny_config(), str(workdir))
  assert f"model.activation: {payload!r} -> 'relu'" in str(info.value)
  assert 'seed: ' in str(info.value)
  assert not sentinel.exists()
  # A config.json that is not a JSON object is a clear error, not a traceback.
  for text in ('{"model": {"latent_dim', '["not", "a", "config"]'):
    path.write_text(text)
    with pytest.raises(workdir_lib.WorkdirError, match=re.escape(str(path))):
      train.train_and_evaluate(tiny_config(), str(workdir))
    with pytest.raises(workdir_lib.WorkdirError, match=re.escape(str(path))):
      workdir_lib.load_config(str(workdir))


# 12. Paths.

def _snapshot(root):
  """Every path under root with its kind, size, mtime and (for files) content."""
  state = {}
  for directory, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(directory, name)
      info = os.lstat(path)
      content = open(path, 'rb').read() if name in files else None
      state[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
  return state


def test_12_step_symlink_out_of_the_workdir_is_refused_and_nothing_outside_is_touched(
    finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  outside = tmp_path / 'outside'
  shutil.copytree(workdir / 'checkpoints' / '40', outside / '60')
  os.symlink(outside / '60', workdir / 'checkpoints' / '60')
  before = _snapshot(outside)
  with pytest.raises(checkpoint.CheckpointError,
                     match=re.escape(f'{workdir / "checkpoints" / "60"} is a symlink')):
    train.train_and_evaluate(tiny_config(train__num_steps=80), str(workdir))
  assert _snapshot(outside) == before
  assert os.path.islink(workdir / 'checkpoints' / '60')


@needs_namespaces
@pytest.mark.parametrize('exists', [True, False])
def test_12_unwritable_workdir_is_a_clear_error(tmp_path, exists):
  read_only = tmp_path / 'read_only'
  read_only.mkdir()
  workdir = read_only if exists else read_only / 'run'
  result = run_in_namespace(read_only_bind(read_only), train_command(workdir, 10), timeout=120)
  assert result.returncode == 1
  assert f'error: workdir {workdir} is not writable' in result.stderr
  assert 'Traceback' not in result.stderr
  assert os.listdir(read_only) == []


# 13. Randomness: no key is reused.

@pytest.mark.parametrize('objective,num_samples', [('elbo', 1), ('iwae', 3)])
def test_13_train_step_objectives_evaluation_and_sampling_reuse_no_key(objective, num_samples):
  config = tiny_config(objective__name=objective, objective__num_samples=num_samples)
  exp = experiment.build_experiment(config)
  indices = data.batch_indices_for_steps(config.seed, 0, 10, config.train.batch_size,
                                         exp.dataset.num_train)
  eval_images = data.fixed_eval_images(exp.dataset, config.seed)[:8]
  with jax.debug_key_reuse(True):
    state = experiment.init_state(exp)
    step_fn = train.make_train_step(exp)
    for first in (0, 5):  # Two calls with the run's one training key.
      state, metrics = step_fn(state, exp.dataset.train, indices[first:first + 5],
                               exp.keys['train'])
    assert np.asarray(metrics['finite']).all()
    evaluate.evaluate_elbo(exp.model, state.params, eval_images, exp.keys['eval'], batch_size=4)
    evaluate.evaluate_log_likelihood(exp.model, state.params, eval_images, exp.keys['eval'],
                                     num_samples=6, batch_size=4, chunk_size=3, progress=False)
    sampling.prior_samples(exp.model, state.params, exp.keys['sample'], 4, 0.5)
    with pytest.raises(jax.errors.KeyReuseError):  # The checker is on.
      jax.jit(lambda k: jax.random.normal(k) + jax.random.normal(k))(jax.random.key(0))


# 14. Environment: versions recorded; a resume under others warns.

def test_14_versions_are_recorded_and_a_resume_under_other_versions_warns(finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  path = workdir / 'versions.json'
  recorded = json.loads(path.read_text())
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint'):
    assert recorded[name] == importlib.metadata.version(name), name
  path.write_text(json.dumps(dict(recorded, jax='0.0.1', optax='0.0.2')))
  with pytest.warns(UserWarning, match=re.escape(
      f'jax 0.0.1 -> {recorded["jax"]}, optax 0.0.2 -> {recorded["optax"]}')):
    train.train_and_evaluate(tiny_config(), str(workdir))  # Nothing to train; evaluates.
  assert json.loads(path.read_text()) == recorded
  path.write_text('{"jax": "0.')  # Unreadable: warned about and replaced, not fatal.
  with pytest.warns(UserWarning) as caught:
    workdir_lib.record_versions(str(workdir))
  (message,) = [str(w.message) for w in caught]
  assert message.startswith(f'{path} is unreadable')
  assert json.loads(path.read_text()) == recorded


# 15. A missing or unprepared dataset, no network.

@pytest.mark.parametrize('download', [False, True])
def test_15_unprepared_dataset_is_one_clear_error_naming_dataset_directory_and_command(
    tmp_path, download):
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  # No network, whatever this machine has: HTTP(S) goes to a closed local port.
  offline = {name: 'http://127.0.0.1:9' for name in
             ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY')}
  start = time.monotonic()
  result = subprocess.run(
      train_command(tmp_path / 'run', 10) + [
          '--config.data.name=mnist', f'--config.data.data_dir={data_dir}',
          f'--config.data.download={download}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, NO_PROXY='', no_proxy='', **offline))
  assert time.monotonic() - start < 240
  assert result.returncode == 1, result.stderr
  err = result.stderr
  assert f"error: dataset 'mnist' is not prepared in {data_dir}" in err
  assert f'tfds build mnist --data_dir={data_dir} --file_format=array_record' in err
  assert 'Traceback' not in err and len(err.strip().splitlines()) <= 12, err
  if not download:
    assert list(data_dir.iterdir()) == []  # Looking creates nothing.


# 16. A checkpoint is used only by the run that saved it, and only as the step it holds.

@pytest.fixture(scope='module')
def other_run(tmp_path_factory):
  """A tiny run of the same shapes as finished_run's, with another beta and seed, 60 steps."""
  workdir = tmp_path_factory.mktemp('other')
  config = tiny_config(objective__beta=2.0, train__num_steps=60)
  config.seed = 1
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_16_a_step_of_another_run_is_refused_by_resume_and_by_the_tools(
    finished_run, other_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  shutil.copytree(other_run / 'checkpoints' / '60', workdir / 'checkpoints' / '60')
  expected = (r'(?s)Checkpoint step 60 in \S+/60 was saved by another run: run \w{12} '
              r'\(checkpoint\) vs \w{12} \(this run\).*objective.beta: 2.0 -> 1.0.*seed: 1 -> 0')
  with pytest.raises(checkpoint.CheckpointError, match=expected + '.*allow_config_change'):
    train.train_and_evaluate(tiny_config(train__num_steps=80), str(workdir))
  with pytest.raises(checkpoint.CheckpointError, match=expected + '.*config.json is not'):
    experiment.load_trained(str(workdir))
  assert committed_steps(workdir) == [20, 40, 60]  # Refused, nothing moved or written.
  # Its own steps still serve the tools.
  assert experiment.load_trained(str(workdir), step=40)[2] == 40


def test_16_a_step_directory_holding_another_step_is_refused(finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  os.symlink('20', workdir / 'checkpoints' / '300')
  with pytest.raises(checkpoint.CheckpointError, match=r'/300 holds step 20, not 300'):
    evaluate_workdir.evaluate_workdir(str(workdir), 'test', num_samples=2, progress=False)
  with pytest.raises(checkpoint.CheckpointError, match=r'/300 holds step 20, not 300'):
    train.train_and_evaluate(tiny_config(train__num_steps=320), str(workdir))


def test_16_flipped_bytes_in_the_newest_step_the_tools_skip_it_naming_step(
    finished_run, tmp_path, caplog):
  workdir = copy_of(finished_run, tmp_path)
  path = _largest_data_file(workdir / 'checkpoints' / '40')
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))
  with caplog.at_level(logging.WARNING):
    _, params, step = experiment.load_trained(str(workdir))
  assert step == 20
  assert any('Step 40' in r.getMessage() and 'is corrupt' in r.getMessage() and
             'using step 20, the newest readable one (--step' in r.getMessage()
             for r in caplog.records)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'Step 40 .* is corrupt.*newest readable step is 20: pass --step=20'):
    experiment.load_trained(str(workdir), step=40)
  assert committed_steps(workdir) == [20, 40]  # A tool that reads sets nothing aside.
  # Training sets it aside and redoes it from step 20 (as for any unreadable step).
  train.train_and_evaluate(tiny_config(), str(workdir))
  assert committed_steps(workdir) == [20, 40]
  assert [n.split('_')[0] for n in os.listdir(workdir / 'checkpoints' / 'corrupted')] == ['40']


# 17. One writer per workdir.

def test_17_a_second_run_on_a_workdir_is_refused_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from vae_jax import workdir as w\n'
       'with w.hold_lock(sys.argv[1]):\n  print("held", flush=True); time.sleep(120)',
       str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lib.WorkdirError,
                       match=rf'{workdir} is in use by another run \(pid {holder.pid} on host '
                             rf'{re.escape(os.uname().nodename)} since .*run.lock'):
      train.train_and_evaluate(tiny_config(), str(workdir))
    assert sorted(os.listdir(workdir)) == ['run.lock']  # Nothing written, nothing read.
  finally:
    holder.kill()
    holder.wait()
  # A lock left by a killed run blocks nothing: its file is only a record.
  train.train_and_evaluate(tiny_config(train__num_steps=20), str(workdir))
  assert (workdir / 'run.lock').read_text().startswith(f'pid {os.getpid()} on host ')


def test_17_the_processes_of_one_run_are_one_writer(tmp_path):
  with workdir_lib.hold_lock(str(tmp_path)):
    # Another process of the same run does not take the lock...
    with workdir_lib.hold_lock(str(tmp_path), main_process=False, agree=lambda ok: ok):
      pass
    # ...and stops with the others when the main process could not take it.
    with pytest.raises(workdir_lib.WorkdirError, match='the main process of this one found'):
      with workdir_lib.hold_lock(str(tmp_path), main_process=False, agree=lambda ok: False):
        pass


# 18. A run that failed before its first checkpoint does not bind the workdir to its config.

def test_18_a_workdir_without_a_checkpoint_takes_the_corrected_config(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'

  def out_of_memory(self):
    raise workdir_lib.WorkdirError('RESOURCE_EXHAUSTED: out of memory while building')
  monkeypatch.setattr(train.Trainer, 'initial_state', out_of_memory)
  with pytest.raises(workdir_lib.WorkdirError, match='RESOURCE_EXHAUSTED'):
    train.train_and_evaluate(tiny_config(model__latent_dim=8), str(workdir))
  assert json.loads((workdir / 'config.json').read_text())['model']['latent_dim'] == 8
  monkeypatch.undo()
  train.train_and_evaluate(tiny_config(train__num_steps=20), str(workdir))
  assert json.loads((workdir / 'config.json').read_text())['model']['latent_dim'] == 4
  # Once a step is committed, the workdir is bound to its config again.
  with pytest.raises(workdir_lib.WorkdirError, match=r'model.latent_dim: 4 -> 8'):
    train.train_and_evaluate(tiny_config(model__latent_dim=8), str(workdir))
