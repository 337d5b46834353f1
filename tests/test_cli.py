"""The entry points as a user runs them: preemption by SIGTERM, resume, generate."""

import os
import signal
import subprocess
import sys
import time

import pytest

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


def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(train_command(workdir, 10_000_000), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    for line in proc.stdout:  # Wait until training is under way.
      if line.startswith('step '):
        break
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, out
  assert time.monotonic() - start < 60
  assert 'SIGTERM: saved a checkpoint at step' in out
  saved = int(out.split('SIGTERM: saved a checkpoint at step ')[1].split(';')[0])
  assert saved > 0 and str(saved) in os.listdir(workdir / 'checkpoints')
  resumed = subprocess.run(train_command(workdir, saved + 10), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert f'from step {saved}' in resumed.stdout
  assert 'Final held-out ELBO' in resumed.stdout


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  result = subprocess.run(train_command(workdir, 20), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  return workdir


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
