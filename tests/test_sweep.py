"""Sweep expansion, the resumable launcher, and aggregation."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vae_jax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {'model.hidden': (16,), 'model.latent_dim': 2, 'train.batch_size': 50,
        'train.num_epochs': 0.0, 'train.steps_per_call': 5, 'train.log_every_steps': 10,
        'train.eval_every_steps': 10, 'train.checkpoint_every_steps': 10,
        'eval.batch_size': 100, 'sampling.num_samples': 4, 'sampling.num_reconstructions': 4}


def test_grid_zip_product_random():
  assert sweep.grid({'a': [1, 2], 'b': ['x', 'y']}) == [
      {'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
  assert sweep.zipped({'a': [1, 2], 'b': [3, 4]}) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  with pytest.raises(ValueError, match='equal lengths'):
    sweep.zipped({'a': [1], 'b': [3, 4]})
  points = sweep.product(sweep.grid({'a': [1, 2]}), sweep.grid({'seed': [0, 1, 2]}))
  assert len(points) == 6 and points[0] == {'a': 1, 'seed': 0}
  r1 = sweep.random_choices({'lr': [1e-3, 1e-4], 'z': [2, 4, 8]}, 5, seed=3)
  assert r1 == sweep.random_choices({'lr': [1e-3, 1e-4], 'z': [2, 4, 8]}, 5, seed=3)
  assert all(p['z'] in (2, 4, 8) for p in r1)


def test_names_and_flags():
  points = [{'objective.beta': b, 'model.hidden': h, 'train.batch_size': 100}
            for b, h in ((0.1, (500, 500)), (2.0, (400,)))]
  assert sweep.point_names(points) == ['objective.beta=0.1,model.hidden=500x500',
                                       'objective.beta=2,model.hidden=400']
  assert sweep.point_names([{'a': 1}]) == ['default']
  long_names = sweep.point_names([{'f': 'x' * 200}, {'f': 'y' * 200}])
  assert all(len(n) <= 111 for n in long_names) and long_names[0] != long_names[1]
  assert sweep.override_flags({'model.hidden': (32,), 'seed': 1}) == [
      '--config.model.hidden=(32,)', '--config.seed=1']


def write_sweep_file(path, points):
  path.write_text(
      "BASE_CONFIG = 'configs/quickstart.py'\n"
      f"TINY = {TINY!r}\n"
      f"def get_sweep():\n  return [dict(TINY, **p) for p in {points!r}]\n")
  return str(path)


def run_sweep(sweep_file, sweep_dir, *extra):
  return subprocess.run([sys.executable, 'scripts/sweep.py', f'--sweep={sweep_file}',
                         f'--sweep_dir={sweep_dir}', '--workers=2', *extra],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_failures_are_isolated_rerun_skips_done_and_aggregates(tmp_path):
  points = [{'train.num_steps': 10, 'seed': 0}, {'train.num_steps': 10, 'seed': 1},
            {'train.num_steps': 10, 'seed': 2, 'model.latent_dim': 0}]
  sweep_file = write_sweep_file(tmp_path / 'sweep.py', points)
  sweep_dir = tmp_path / 'runs'
  first = run_sweep(sweep_file, sweep_dir)
  assert first.returncode == 1, first.stdout + first.stderr
  assert '[2/3 done, 1 failed' in first.stdout
  status = json.loads((sweep_dir / 'status.json').read_text())
  bad = [n for n, s in status.items() if s['outcome'].startswith('failed')]
  assert len(bad) == 1 and 'model.latent_dim=0' in bad[0]
  assert 'config.model.latent_dim' in (sweep_dir / 'logs' / f'{bad[0]}.log').read_text()
  second = run_sweep(sweep_file, sweep_dir)
  assert '2 already done, 1 to run' in second.stdout
  commands = run_sweep(sweep_file, sweep_dir, '--print_commands')
  assert commands.stdout.count('-m vae_jax.main') == 3
  agg = subprocess.run([sys.executable, 'scripts/aggregate.py', f'--sweep_dir={sweep_dir}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert agg.returncode == 0, agg.stderr
  with open(sweep_dir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['seed'] for r in rows) == ['0', '1']
  assert all(float(r['final_elbo']) < 0 for r in rows)
  assert (sweep_dir / 'learning_curves.png').exists()
  with open(sweep_dir / 'results_over_seeds.csv') as f:
    groups = list(csv.DictReader(f))
  assert len(groups) == 1 and groups[0]['num_seeds'] == '2'


@pytest.mark.slow
def test_interrupted_sweep_resumes(tmp_path):
  points = [{'train.num_steps': 1000, 'seed': s} for s in range(2)]
  sweep_file = write_sweep_file(tmp_path / 'sweep.py', points)
  sweep_dir = tmp_path / 'runs'
  proc = subprocess.Popen([sys.executable, 'scripts/sweep.py', f'--sweep={sweep_file}',
                           f'--sweep_dir={sweep_dir}', '--workers=2'], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  def some_checkpoint():
    # Any committed step: with a save every 10 steps and 3 kept, step 10 itself
    # lives for a fraction of a second, shorter than a poll.
    for p in points:
      checkpoints = sweep_dir / f'seed={p["seed"]}' / 'checkpoints'
      if checkpoints.is_dir() and any(d.isdigit() for d in os.listdir(checkpoints)):
        return True
    return False

  deadline = time.time() + 300
  while time.time() < deadline and not some_checkpoint():
    time.sleep(0.1)
  assert proc.poll() is None, 'the sweep finished before it could be interrupted'
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 1, out
  assert 'run the same command again' in out
  again = run_sweep(sweep_file, sweep_dir)
  assert again.returncode == 0, again.stdout
  assert '[2/2 done' in again.stdout
  logs = ''.join((sweep_dir / 'logs' / f).read_text() for f in os.listdir(sweep_dir / 'logs'))
  assert 'Resumed from' in logs
