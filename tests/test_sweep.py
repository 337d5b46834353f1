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


def test_rows_and_groups_sort_numbers_as_numbers(tmp_path):
  rows = [{'point': f'b{b},s{s}', 'model.hidden': h, 'objective.beta': b, 'seed': s,
           'final_elbo': -100.0 - b - s}
          for h in ('[400]', '[50]') for b in (10.0, 2.0, 0.5) for s in (0, 1)]
  groups = sweep.group_over_seeds(rows, ['final_elbo'])
  # String order would put '10.0' before '2.0' and '[400]' before '[50]' alike.
  assert [(g['model.hidden'], g['objective.beta']) for g in groups] == [
      ('[400]', '0.5'), ('[400]', '2.0'), ('[400]', '10.0'),
      ('[50]', '0.5'), ('[50]', '2.0'), ('[50]', '10.0')]
  assert all(g['num_seeds'] == 2 for g in groups)
  # The std is the sample std over seeds (ddof=1): of (-102, -103) it is 1/sqrt(2).
  assert groups[1]['final_elbo_mean'] == pytest.approx(-102.5)
  assert groups[1]['final_elbo_std'] == pytest.approx(0.5 ** 0.5)
  # collect() orders results.csv rows the same way (its workdir names sort as strings).
  status = {}
  for beta in (10.0, 2.0, 0.5, 1.0):
    name = f'objective.beta={beta:g}'
    os.makedirs(tmp_path / name)
    (tmp_path / name / sweep.FINAL_METRICS).write_text(json.dumps({'elbo': -beta, 'step': 1}))
    status[name] = {'outcome': 'done', 'overrides': {'objective.beta': beta}}
  sweep.write_status(str(tmp_path), status)
  assert [r['objective.beta'] for r in sweep.collect(str(tmp_path))] == [0.5, 1.0, 2.0, 10.0]


def write_sweep_file(path, points):
  path.write_text(
      "BASE_CONFIG = 'configs/quickstart.py'\n"
      f"TINY = {TINY!r}\n"
      f"def get_sweep():\n  return [dict(TINY, **p) for p in {points!r}]\n")
  return str(path)


def run_sweep(sweep_file, sweep_dir, *extra, env=None):
  return subprocess.run([sys.executable, 'scripts/sweep.py', f'--sweep={sweep_file}',
                         f'--sweep_dir={sweep_dir}', '--workers=2', *extra],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def compilation_cache_env(cache_dir):
  """The environment with JAX's persistent compilation cache on, for the points to share.

  Points that differ only in their seed compile the same programs: with the
  cache, every point after the first few loads them instead of compiling.
  """
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


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
  """16 points, interrupted while some are done and others mid-run, relaunched, aggregated."""
  betas, seeds = [10.0, 2.0, 1.0, 0.5], [0, 1, 2, 3]
  # 100 steps, a checkpoint every 10: the sweep is interrupted while some point is
  # at most half way, so the signal cannot arrive after its last step.
  points = [{'train.num_steps': 100, 'train.eval_every_steps': 50, 'logging.tensorboard': False,
             'objective.beta': b, 'seed': s} for b in betas for s in seeds]
  sweep_file = write_sweep_file(tmp_path / 'sweep.py', points)
  names = sweep.point_names(points)
  assert len(names) == 16
  sweep_dir = tmp_path / 'runs'
  env = compilation_cache_env(tmp_path / 'jax_cache')
  proc = subprocess.Popen([sys.executable, 'scripts/sweep.py', f'--sweep={sweep_file}',
                           f'--sweep_dir={sweep_dir}', '--workers=2'], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  def finished():
    return {n for n in names if sweep.is_finished(sweep_dir / n)}

  def mid_run(at_most=100):
    # Unfinished points whose latest committed checkpoint (a step number; with a
    # save every 10 steps and 3 kept, step 10 itself may be gone by the next poll)
    # is at most `at_most`.
    running = set()
    for n in names:
      checkpoints = sweep_dir / n / 'checkpoints'
      if sweep.is_finished(sweep_dir / n) or not checkpoints.is_dir():
        continue
      steps = [int(d) for d in os.listdir(checkpoints) if d.isdigit()]
      if steps and max(steps) <= at_most:
        running.add(n)
    return running

  deadline = time.time() + 300
  while time.time() < deadline and not (len(finished()) >= 4 and mid_run(at_most=50)):
    time.sleep(0.05)
  assert proc.poll() is None, 'the sweep finished before it could be interrupted'
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 1, out
  assert 'run the same command again' in out
  done_first = finished()
  # A point caught mid-run saves a checkpoint and exits.
  interrupted = mid_run()
  assert 4 <= len(done_first) < 16 and interrupted, out
  status = json.loads((sweep_dir / 'status.json').read_text())
  assert all(status[n]['outcome'] == 'done' for n in done_first)
  assert all(status[n]['outcome'] != 'done' for n in interrupted)
  never_started = set(names) - set(status)
  print(f'interrupted with {len(done_first)} points done, {len(interrupted)} mid-run '
        f'({", ".join(sorted(interrupted))}), {len(never_started)} not started')
  mtimes = {n: (sweep_dir / n / sweep.FINAL_METRICS).stat().st_mtime_ns for n in done_first}
  logs_before = {n: (sweep_dir / 'logs' / f'{n}.log').read_text() for n in done_first}

  again = run_sweep(sweep_file, sweep_dir, env=env)
  assert again.returncode == 0, again.stdout + again.stderr
  assert f'16 points, {len(done_first)} already done, {16 - len(done_first)} to run' in again.stdout
  assert '[16/16 done, 0 failed' in again.stdout
  assert finished() == set(names)
  # Finished points were skipped: not run again, their results untouched.
  for n in done_first:
    assert (sweep_dir / n / sweep.FINAL_METRICS).stat().st_mtime_ns == mtimes[n]
    assert (sweep_dir / 'logs' / f'{n}.log').read_text() == logs_before[n]
  # Interrupted points resumed from their checkpoints; the others started afresh.
  for n in interrupted:
    assert 'Resumed from' in (sweep_dir / 'logs' / f'{n}.log').read_text(), n
  for n in never_started:
    assert 'Resumed from' not in (sweep_dir / 'logs' / f'{n}.log').read_text(), n
  for n in names:
    assert json.loads((sweep_dir / n / sweep.FINAL_METRICS).read_text())['step'] == 100

  agg = subprocess.run([sys.executable, 'scripts/aggregate.py', f'--sweep_dir={sweep_dir}',
                        '--x=objective.beta'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert agg.returncode == 0, agg.stdout + agg.stderr
  with open(sweep_dir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 16 and {r['point'] for r in rows} == set(names)
  assert [float(r['objective.beta']) for r in rows] == sorted(b for b in betas for _ in seeds)
  with open(sweep_dir / 'results_over_seeds.csv') as f:
    groups = list(csv.DictReader(f))
  assert [float(g['objective.beta']) for g in groups] == [0.5, 1.0, 2.0, 10.0]
  assert all(g['num_seeds'] == '4' for g in groups)
  assert (sweep_dir / 'learning_curves.png').exists()
  assert (sweep_dir / 'final_vs_objective.beta.png').exists()


@pytest.mark.slow
def test_submitit_launcher_runs_an_array_records_jobs_and_reruns_what_failed(tmp_path):
  """The SLURM path (one job array, job ids in status.json, status kept current,
  the same skip / resume / re-run semantics) on submitit's local executor."""
  pytest.importorskip('submitit')
  points = [{'train.num_steps': 10, 'seed': 0}, {'train.num_steps': 10, 'seed': 1},
            {'train.num_steps': 10, 'seed': 2, 'model.latent_dim': 0}]
  sweep_file = write_sweep_file(tmp_path / 'sweep.py', points)
  sweep_dir = tmp_path / 'runs'
  args = ('--launcher=submitit_local', '--poll_s=1')
  first = run_sweep(sweep_file, sweep_dir, *args, env=compilation_cache_env(tmp_path / 'cache'))
  assert first.returncode == 1, first.stdout + first.stderr
  assert 'submitted 3 points (submitit_local)' in first.stdout, first.stdout
  assert '[2/3 done, 1 failed' in first.stdout, first.stdout
  status = json.loads((sweep_dir / 'status.json').read_text())
  assert sorted(s['outcome'].split(' ')[0] for s in status.values()) == ['done', 'done', 'failed']
  assert len({s['job_id'] for s in status.values()}) == 3
  assert all(s['launcher'] == 'submitit_local' for s in status.values())
  bad = next(n for n, s in status.items() if s['outcome'].startswith('failed'))
  assert 'config.model.latent_dim' in (sweep_dir / 'logs' / f'{bad}.log').read_text()
  for name, entry in status.items():
    if entry['outcome'] == 'done':
      assert (sweep_dir / name / 'final_metrics.json').exists()
  # Again: the finished points are skipped, the failed one is submitted again.
  second = run_sweep(sweep_file, sweep_dir, *args, env=compilation_cache_env(tmp_path / 'cache'))
  assert '2 already done, 1 to run through submitit' in second.stdout, second.stdout
  assert 'submitted 1 points' in second.stdout and second.returncode == 1
  again = json.loads((sweep_dir / 'status.json').read_text())
  assert again[bad]['job_id'] != status[bad]['job_id']
  assert {n: s['job_id'] for n, s in again.items() if n != bad} == {
      n: s['job_id'] for n, s in status.items() if n != bad}
