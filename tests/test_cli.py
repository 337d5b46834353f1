"""The entry points as a user runs them: preemption by SIGTERM, resume, generate."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from vae_jax import logs as vlog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.model.hidden=(32,)', '--config.model.latent_dim=4',
        '--config.train.batch_size=50', '--config.train.num_epochs=0',
        '--config.train.steps_per_call=5', '--config.train.log_every_steps=10',
        '--config.train.eval_every_steps=100000', '--config.train.checkpoint_every_steps=100000',
        '--config.eval.batch_size=100', '--config.sampling.num_samples=4',
        '--config.sampling.num_reconstructions=4']


def train_command(workdir, num_steps):
  return [sys.executable, '-m', 'vae_jax.main', '--config=configs/quickstart.py',
          f'--workdir={workdir}', f'--config.train.num_steps={num_steps}'] + TINY


def signal_once_training(workdir, signum):
  """Starts a long run, sends `signum` once its first progress line is out; returns
  (exit status, console output, seconds from the signal to the exit)."""
  proc = subprocess.Popen(train_command(workdir, 10_000_000), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    for line in proc.stdout:  # Wait until training is under way.
      if line.startswith('step '):
        break
    proc.send_signal(signum)
    start = time.monotonic()
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  return proc.returncode, out, time.monotonic() - start


def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
  workdir = tmp_path / 'run'
  returncode, out, seconds = signal_once_training(workdir, signal.SIGTERM)
  assert returncode == 0, out
  assert seconds < 60
  assert 'SIGTERM: saved a checkpoint at step' in out
  saved = int(out.split('SIGTERM: saved a checkpoint at step ')[1].split(';')[0])
  assert saved > 0 and str(saved) in os.listdir(workdir / 'checkpoints')
  resumed = subprocess.run(train_command(workdir, saved + 10), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert f'from step {saved}' in resumed.stdout
  assert 'Final held-out ELBO' in resumed.stdout


@pytest.mark.slow
def test_ctrl_c_saves_and_stops(tmp_path):
  workdir = tmp_path / 'run'
  returncode, out, _ = signal_once_training(workdir, signal.SIGINT)
  assert returncode == 130, out
  assert 'Traceback' not in out and 'KeyboardInterrupt' not in out, out
  assert 'Ctrl-C: saving a checkpoint after this call' in out
  step = int(out.split('Ctrl-C: saved a checkpoint at step ')[1].split(';')[0])
  assert [name for name in os.listdir(workdir / 'checkpoints') if name.isdigit()] == [str(step)]
  assert out.rstrip().endswith(f'interrupted: saved a checkpoint at step {step}; '
                               'committed checkpoints are kept.')
  resumed = subprocess.run(train_command(workdir, step + 10), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0 and f'from step {step}' in resumed.stdout, resumed.stderr


@pytest.mark.slow
def test_ctrl_c_before_training_is_one_line(tmp_path):
  proc = subprocess.Popen(train_command(tmp_path / 'run', 10_000_000), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    time.sleep(2)  # Importing, building: before the loop's handler exists.
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 130, out
  assert 'Traceback' not in out, out
  assert out.rstrip().splitlines()[-1].startswith('interrupted: ')


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A finished 20-step run: (workdir, its console output). One checkpoint, step 20."""
  workdir = tmp_path_factory.mktemp('trained')
  result = subprocess.run(train_command(workdir, 20), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  return workdir, result.stdout


@pytest.fixture(scope='module')
def trained(trained_run):
  return trained_run[0]


def test_progress_line_shows_step_loss_speed_and_eta(trained_run):
  _, out = trained_run
  lines = [line for line in out.splitlines() if line.startswith('step ')]
  # 90 steps per epoch: 4,500 digits, batch 50.
  assert [line.split(' | ')[0] for line in lines] == ['step 10/20 (epoch 0.1)',
                                                      'step 20/20 (epoch 0.2)'], out
  pattern = (r'step (\d+)/20 \(epoch 0\.\d\) \| loss (\d+\.\d\d) \| elbo (-\d+\.\d\d) \| recon -?\d+\.\d\d \| '
             r'kl \d+\.\d\d( \| [a-z_]+ -?\d+\.\d\d)* \| (\d+\.\d) steps/s \(([\d,]+) img/s\) \| '
             r'ETA (\d+)m(\d\d)s')
  for line in lines:
    match = re.fullmatch(pattern, line)
    assert match, line
    step, loss, elbo = int(match.group(1)), float(match.group(2)), float(match.group(3))
    rate, images = float(match.group(5)), int(match.group(6).replace(',', ''))
    eta = 60 * int(match.group(7)) + int(match.group(8))
    assert loss > 0 and elbo < 0 and rate > 0
    assert abs(images - rate * 50) <= 0.05 * 50 + 1  # batch_size 50; rate is rounded.
    # ETA = steps left / rate (the rate shown is rounded to 0.05, the ETA down to 1 s).
    assert (20 - step) / (rate + 0.05) - 1 <= eta
    assert rate <= 0.05 or eta <= (20 - step) / (rate - 0.05)


def test_generate_writes_grids(trained, tmp_path):
  out = tmp_path / 'gen'
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.generate', f'--workdir={trained}', f'--output_dir={out}',
       '--temperatures=0.5,1', '--num_samples=9', '--reconstruct=0,3,5', '--traverse_dims=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out)) == ['interpolation.png', 'reconstructions.png', 'samples_t0.5.png',
                                     'samples_t1.png', 'traversal.png']


def test_generate_on_a_non_workdir_is_a_clear_error(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'vae_jax.generate', f'--workdir={tmp_path}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert 'config.json not found' in result.stderr and 'Traceback' not in result.stderr


def test_workdir_that_is_a_file_is_a_clear_error(tmp_path):
  path = tmp_path / 'file'
  path.write_text('not a directory')
  result = subprocess.run(train_command(path, 10), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 1
  assert 'is not a directory' in result.stderr and 'Traceback' not in result.stderr
  assert path.read_text() == 'not a directory'


# Runs `python -m vae_jax.main ARGS` with one function made to announce itself
# and wait, so that a SIGTERM from outside reliably lands while it runs.
_PAUSED_MAIN = """
import runpy, sys, time
from vae_jax import checkpoint, data, evaluate
owner, name = {'data': (data, 'load'), 'restore': (checkpoint.Checkpointer, 'restore'),
               'evaluation': (evaluate, 'evaluate_elbo')}[sys.argv.pop(1)]
real = getattr(owner, name)
def paused(*args, **kwargs):
  print('PAUSED IN', name, flush=True)
  time.sleep(120)
  return real(*args, **kwargs)
setattr(owner, name, paused)
runpy.run_module('vae_jax.main', run_name='__main__', alter_sys=True)
"""


def files_of(directory):
  """{relative path: sha256} of every file under `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return files


def sigterm_while_paused(phase, workdir, num_steps):
  """Launches training paused in `phase`, sends SIGTERM there; returns (returncode, output)."""
  command = train_command(workdir, num_steps)
  proc = subprocess.Popen([sys.executable, '-c', _PAUSED_MAIN, phase] + command[3:], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    before = []
    for line in proc.stdout:
      before.append(line)
      if line.startswith('PAUSED IN'):
        break
    assert before and before[-1].startswith('PAUSED IN'), ''.join(before)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  return proc.returncode, ''.join(before) + out


@pytest.mark.parametrize('phase', ['data', 'restore', 'evaluation'])
def test_sigterm_outside_the_training_loop_ends_with_the_signal_and_keeps_checkpoints(
    trained, tmp_path, phase):
  """README, Preemption: a SIGTERM while the data loads, a checkpoint restores or the
  final evaluation runs ends the process with the signal's status; nothing saved is
  touched, and the final checkpoint is committed before the final evaluation."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  checkpoints = workdir / 'checkpoints'
  saved = files_of(checkpoints)
  assert sorted(os.listdir(checkpoints)) == ['20']
  returncode, out = sigterm_while_paused(phase, workdir, 30)
  assert returncode == -signal.SIGTERM, out
  assert 'SIGTERM: saved' not in out and 'Traceback' not in out, out
  if phase != 'evaluation':
    assert not re.search(r'^step ', out, re.M), out  # Stopped before training.
    assert files_of(checkpoints) == saved
    assert sorted(os.listdir(checkpoints)) == ['20']
    return
  # Training ran to step 30 and committed it before the evaluation began.
  assert 'step 30/30' in out and 'Final held-out ELBO' not in out, out
  assert sorted(os.listdir(checkpoints)) == ['20', '30']
  after = files_of(checkpoints)
  assert {k: v for k, v in after.items() if k.startswith('20' + os.sep)} == saved
  assert json.loads((workdir / 'final_metrics.json').read_text())['step'] == 20
  # Re-running only repeats the evaluation.
  again = subprocess.run(train_command(workdir, 30), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr
  assert 'at step 30.' in again.stdout and 'Final held-out ELBO' in again.stdout, again.stdout
  assert not re.search(r'^step ', again.stdout, re.M), again.stdout
  assert json.loads((workdir / 'final_metrics.json').read_text())['step'] == 30
  assert files_of(checkpoints) == after


def test_eta_is_unknown_before_any_speed_is_measured():
  line = vlog.progress_line(0, 100, {'loss': 1.0}, 0.0, 50)
  assert line.endswith('ETA ?'), line


def test_progress_line_of_several_seeds_says_its_terms_are_means():
  line = vlog.progress_line(50, 100, {'loss': 1.0}, 2.0, 50, steps_per_epoch=20, means_of=4)
  assert line.startswith('step 50/100 (epoch 2.5) | mean of 4 seeds: loss 1.00 | 2.0 steps/s')
