"""Several processes train as one run, and a dead process ends the run (issue 5).

Every process is a subprocess running `python -m vae_jax.main` as a user
launches it: the same command, its own --process_id, the coordinator on a free
localhost port, its own fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count) and gloo collectives over
TCP between processes. Output goes to files, not pipes: a process blocked on a
full pipe would stall its peers in their next collective.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from test_cli import ROOT, TINY
from test_train import restored_state
from vae_jax import sharding
from vae_jax import workdir as workdir_lib

# Global batches that 1, 2, 4 and 8 devices divide (TINY's 50 and 100 are not).
FLAGS = [f for f in TINY if not f.startswith(('--config.train.batch_size=',
                                              '--config.eval.batch_size='))]
FLAGS += ['--config.train.batch_size=48', '--config.eval.batch_size=96']
# A run that goes wrong ends within this long instead of jax's default 100 s.
TEST_PEER_TIMEOUT_S = 30
# The dead-peer test's timeout, and the bound it asserts: the coordinator checks
# heartbeats about once per timeout, so a dead process is noticed within about
# twice the timeout; the rest is slack for a loaded 2-core machine.
PEER_TIMEOUT_S = 10
DEAD_PEER_EXIT_BOUND_S = 2 * PEER_TIMEOUT_S + 20

# Runs vae_jax.main and appends to REPORT the path (relative to WORKDIR) of
# every file under WORKDIR that the process opens for writing. Python's audit
# hook sees every open from Python code, in every thread; orbax's TensorStore
# writes checkpoint data from C++ and is not seen, which is fine: every
# process writes its part of the checkpoints.
AUDITED_MAIN = r'''
import os, runpy, sys
root = os.path.realpath(sys.argv[1])
report = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes_only = sys.argv[3] == 'writes'

def hook(event, args):
  if (event == 'open' and isinstance(args[0], (str, bytes, os.PathLike))
      and (not writes_only or isinstance(args[2], int) and args[2] & WRITE)):
    path = os.path.realpath(os.fsdecode(args[0]))
    if path.startswith(root + os.sep):
      os.write(report, (os.path.relpath(path, root) + '\n').encode())

sys.addaudithook(hook)
sys.argv = ['vae_jax.main'] + sys.argv[4:]
runpy.run_module('vae_jax.main', run_name='__main__', alter_sys=True)
'''
# With 'reads' instead of 'writes' it reports every file under ROOT the process opens
# (the streamed variant: which examples each process reads).


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class Run:
  """The processes of one training run, started at once; output in `logs/<i>.txt`."""

  def __init__(self, workdir, num_steps, num_processes, devices, *flags, audit=False,
               audit_reads=None):
    self.workdir = workdir
    self.logs = workdir.parent / f'{workdir.name}_logs'
    self.logs.mkdir(exist_ok=True)
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    port = free_port()
    self.procs = []
    for i in range(num_processes):
      args = ['--config=configs/quickstart.py', f'--workdir={workdir}',
              f'--config.train.num_steps={num_steps}', *FLAGS]
      if num_processes > 1:
        args += [f'--coordinator_address=localhost:{port}', f'--num_processes={num_processes}',
                 f'--process_id={i}', f'--peer_timeout_s={TEST_PEER_TIMEOUT_S}']
      args += flags  # Last: a flag given twice takes its last value.
      if audit_reads:
        command = [sys.executable, '-c', AUDITED_MAIN, str(audit_reads),
                   str(self.written_file(i)), 'reads']
      elif audit:
        command = [sys.executable, '-c', AUDITED_MAIN, str(workdir), str(self.written_file(i)),
                   'writes']
      else:
        command = [sys.executable, '-m', 'vae_jax.main']
      with open(self.log_file(i), 'w', encoding='utf-8') as log:
        self.procs.append(subprocess.Popen(command + args, cwd=ROOT, env=env, stdout=log,
                                           stderr=subprocess.STDOUT))

  def log_file(self, i):
    return self.logs / f'{i}.txt'

  def written_file(self, i):
    return self.logs / f'{i}.written'

  def output(self, i):
    return self.log_file(i).read_text(encoding='utf-8')

  def written(self, i):
    """Paths process i opened for writing; an atomic write's `NAME.<pid>.tmp` as `NAME.tmp`."""
    path = self.written_file(i)
    names = path.read_text().split() if path.exists() else []
    return {re.sub(r'\.\d+\.tmp$', '.tmp', name) for name in names}

  def finish(self, timeout=300):
    """Waits for every process; asserts that each exited 0; returns their outputs."""
    deadline = time.monotonic() + timeout
    try:
      for proc in self.procs:
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
      self.kill()
    for i, proc in enumerate(self.procs):
      assert proc.returncode == 0, f'process {i} exited {proc.returncode}:\n{self.output(i)[-4000:]}'
    return [self.output(i) for i in range(len(self.procs))]

  def wait_for_training(self, timeout=240):
    """Returns once process 0 has logged a training step; asserts all are alive."""
    deadline = time.monotonic() + timeout
    while not re.search(r'^step \d+/', self.output(0), re.MULTILINE):
      assert all(p.poll() is None for p in self.procs), self.output(0) + self.output(1)
      assert time.monotonic() < deadline, self.output(0)
      time.sleep(0.1)

  def kill(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def final_params(workdir):
  config = workdir_lib.load_config(str(workdir))
  step, state, _ = restored_state(str(workdir), config)
  return step, [np.asarray(x) for x in jax.tree.leaves(state['params'])]


def assert_same_params(workdir_a, workdir_b):
  step_a, params_a = final_params(workdir_a)
  step_b, params_b = final_params(workdir_b)
  assert step_a == step_b
  for a, b in zip(params_a, params_b, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  """The reference: 40 steps in one process on one device, global batch 48."""
  workdir = tmp_path_factory.mktemp('one_process') / 'run'
  Run(workdir, 40, 1, 1).finish()
  return workdir


@pytest.mark.slow
def test_two_processes_train_as_one_and_only_process_0_writes(one_process, tmp_path):
  run = Run(tmp_path / 'run', 40, 2, 2, audit=True)
  outputs = run.finish()
  assert 'process 0 of 2: 2 of 4 cpu devices' in outputs[0]
  assert 'process 1 of 2: 2 of 4 cpu devices' in outputs[1]
  # Each process holds two of the four batch shards; gradients are all-reduced
  # across processes: the same params as one device with the same global batch.
  assert_same_params(one_process, run.workdir)
  ours = json.loads((run.workdir / 'final_metrics.json').read_text())
  reference = json.loads((one_process / 'final_metrics.json').read_text())
  assert ours['elbo'] == pytest.approx(reference['elbo'], abs=1e-3)
  # Only process 0 wrote logs, images and JSON; process 1 only its checkpoint
  # part (and the workdir's write probe).
  written = [run.written(0), run.written(1)]
  assert {'metrics.jsonl', 'samples.png.tmp', 'reconstructions.png.tmp',
          'final_metrics.json.tmp', 'config.json.tmp'} <= written[0], written[0]
  assert any(path.startswith('tensorboard/') for path in written[0])
  assert not [p for p in written[1] if not p.startswith(('checkpoints/', '.write_test'))]
  records = [json.loads(line) for line in (run.workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['split'], r['step']) for r in records] == [
      ('train', 10), ('train', 20), ('train', 30), ('train', 40), ('eval', 40)]
  assert len(os.listdir(run.workdir / 'tensorboard')) == 1


@pytest.mark.slow
def test_checkpoint_of_eight_devices_resumes_on_two_processes(one_process, tmp_path):
  workdir = tmp_path / 'run'
  Run(workdir, 20, 1, 8).finish()
  outputs = Run(workdir, 40, 2, 1).finish()
  for output in outputs:
    assert 'at step 20.' in output and 'from step 20.' in output, output
  assert_same_params(one_process, workdir)


@pytest.mark.slow
@pytest.mark.parametrize('victim', [1, 0])
def test_a_killed_process_makes_the_other_exit_with_an_error_in_bounded_time(tmp_path, victim):
  run = Run(tmp_path / 'run', 10_000_000, 2, 1, f'--peer_timeout_s={PEER_TIMEOUT_S}')
  try:
    run.wait_for_training()
    run.procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    survivor = run.procs[1 - victim]
    try:
      survivor.wait(timeout=DEAD_PEER_EXIT_BOUND_S + 60)
    except subprocess.TimeoutExpired:
      pass
    elapsed = time.monotonic() - killed
  finally:
    run.kill()
  output = run.output(1 - victim)
  assert f'a process silent for {PEER_TIMEOUT_S} s will end the run' in output
  assert survivor.returncode not in (None, 0), output[-4000:]
  assert elapsed < DEAD_PEER_EXIT_BOUND_S, (elapsed, output[-4000:])
  # jax's coordination service names the cause: the dead task (it stopped
  # sending heartbeats) or the lost coordinator.
  assert 'JAX distributed service detected fatal errors' in output, output[-4000:]
  assert ('stopped sending heartbeats' in output) if victim == 1 else ('coordination service' in output)


@pytest.mark.slow
def test_sigterm_to_one_process_saves_in_all_at_the_same_step_then_resumes(tmp_path):
  workdir = tmp_path / 'run'
  run = Run(workdir, 10_000_000, 2, 1)
  try:
    run.wait_for_training()
    run.procs[1].send_signal(signal.SIGTERM)  # Process 0 gets no signal.
    outputs = run.finish(timeout=120)
  finally:
    run.kill()
  saved = {int(out.split('SIGTERM: saved a checkpoint at step ')[1].split(';')[0])
           for out in outputs}
  assert len(saved) == 1 and os.listdir(workdir / 'checkpoints') == [str(*saved)]
  outputs = Run(workdir, saved.pop() + 10, 2, 1).finish()
  assert all('Final held-out ELBO' in out for out in outputs)


# Each process says whether any process has a flag set that only process 1 sets.
ANY_PROCESS = r'''
import sys
from vae_jax import sharding
port, process_id = sys.argv[1], int(sys.argv[2])
assert sharding.initialize(f'localhost:{port}', 2, process_id, peer_timeout_s=30)
print('ANY', sharding.any_process(process_id == 1), sharding.any_process(False), flush=True)
'''


@pytest.mark.slow
def test_any_process_is_true_everywhere_when_true_in_one():
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, '-c', ANY_PROCESS, port, str(i)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, output in zip(procs, outputs):
    assert p.returncode == 0 and 'ANY True False' in output, output


@pytest.mark.slow
def test_a_coordinator_that_never_answers_ends_the_process(tmp_path):
  workdir = tmp_path / 'run'
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.main', '--config=configs/quickstart.py',
       f'--workdir={workdir}', f'--coordinator_address=localhost:{free_port()}',
       '--num_processes=2', '--process_id=1', '--initialization_timeout_s=5'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert time.monotonic() - start < 60
  assert 'Joining a multi-process run (flags: coordinator localhost:' in result.stdout
  assert 'process 1 of 2); waiting up to 5 s' in result.stdout
  assert not workdir.exists()  # Nothing was written.


def test_incomplete_coordinator_flags_are_a_one_line_error(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path / "run"}', '--coordinator_address=localhost:1234'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip() == (
      'error: --coordinator_address was given without --num_processes and --process_id; a '
      'run of several processes outside SLURM, Open MPI or a TPU VM needs '
      '--coordinator_address, --num_processes and --process_id in every process')


@pytest.fixture
def no_launcher(monkeypatch):
  for name in ('JAX_COORDINATOR_ADDRESS', 'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE',
               *sharding._SLURM_VARS):  # pylint: disable=protected-access
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(sharding, '_on_cloud_tpu_vm', lambda: False)
  return monkeypatch


def test_launchers_with_one_task_are_one_process(no_launcher):
  assert sharding.detect_launcher() is None
  slurm = dict(SLURM_JOB_ID='7', SLURM_STEP_NODELIST='node[1-2]', SLURM_PROCID='0',
               SLURM_LOCALID='0', SLURM_NTASKS='1')
  for name, value in slurm.items():
    no_launcher.setenv(name, value)
  assert sharding.detect_launcher() is None  # One task: one process, every local device.
  no_launcher.setenv('SLURM_NTASKS', '4')
  assert sharding.detect_launcher() == 'SLURM'
  for name in slurm:
    no_launcher.delenv(name)
  no_launcher.setenv('OMPI_MCA_orte_hnp_uri', '1.0;tcp://10.0.0.1:1234')
  no_launcher.setenv('OMPI_COMM_WORLD_SIZE', '2')
  assert sharding.detect_launcher() == 'Open MPI'
  no_launcher.delenv('OMPI_MCA_orte_hnp_uri')
  no_launcher.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  assert sharding.detect_launcher() == 'JAX_COORDINATOR_ADDRESS'


def test_one_process_starts_no_runtime(no_launcher):
  assert sharding.initialize() is False
  assert sharding.initialize(mode='off') is False
  with pytest.raises(sharding.DistributedError, match='--distributed=off but --num_processes'):
    sharding.initialize(num_processes=2, mode='off')
  with pytest.raises(sharding.DistributedError, match='without --coordinator_address and --process_id'):
    sharding.initialize(num_processes=2)
  with pytest.raises(ValueError, match='mode'):
    sharding.initialize(mode='yes')


def _digit_folder(root, num_train, num_test):
  """root/train and root/test: PNG files of embedded MNIST digits."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vae_jax import data  # pylint: disable=g-import-not-at-top
  ds = data.load(config_lib.default_config().data)
  for split, images in (('train', ds.train[:num_train]), ('test', ds.eval[:num_test])):
    (root / split).mkdir(parents=True)
    for i, image in enumerate(np.asarray(images)):
      Image.fromarray(image[..., 0]).save(root / split / f'{i:04d}.png')
  return root


@pytest.mark.slow
def test_two_processes_stream_disjoint_examples_and_train_as_one(tmp_path):
  # One epoch (480 digits, global batch 48, 10 steps) from a folder of PNG files.
  folder = _digit_folder(tmp_path / 'digits', 480, 96)
  flags = ('--config.data.name=folder', f'--config.data.path={folder}',
           '--config.data.input=stream', '--config.train.checkpoint_every_steps=5',
           '--config.train.log_every_steps=5')
  one = Run(tmp_path / 'one', 10, 1, 1, *flags)
  one.finish()
  two = Run(tmp_path / 'two', 10, 2, 1, *flags, audit_reads=folder / 'train')
  two.finish()
  assert_same_params(tmp_path / 'one', tmp_path / 'two')
  # Every process reads every file's header when it opens the folder (its sizes), then
  # decodes its own examples: the files it opened twice.
  own = []
  for i in range(2):
    opened = two.written_file(i).read_text().split()
    assert set(opened) == {f'{k:04d}.png' for k in range(480)}
    own.append({name for name in set(opened) if opened.count(name) == 2})
    assert all(opened.count(name) <= 2 for name in opened)
  assert len(own[0]) == len(own[1]) == 240 and not own[0] & own[1]  # Disjoint halves.
  assert own[0] | own[1] == {f'{k:04d}.png' for k in range(480)}  # Together, the epoch.

