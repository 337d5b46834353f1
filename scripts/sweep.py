"""Runs every point of a sweep in its own workdir under --sweep_dir.

  python scripts/sweep.py --sweep=experiments/beta_rate_distortion/sweep.py \
      --sweep_dir=runs/beta --workers=2
  python scripts/sweep.py --sweep=... --sweep_dir=... --launcher=slurm \
      --slurm_partition=gpu --slurm_gpus_per_node=1 --slurm_time_min=240
  python scripts/sweep.py --sweep=... --sweep_dir=... --print_commands  # for a script of your own

Resumable: a point whose workdir has final_metrics.json is skipped, an
interrupted one resumes from its checkpoints, a failed one is run again; one
failure does not stop the others. Each point's output goes to
<sweep_dir>/logs/<point>.log; status.json records the outcome of each point.

--launcher=local (the default) runs the points as processes here, --workers at
a time; Ctrl-C or SIGTERM passes SIGTERM to them (each saves a checkpoint and
exits) and stops. --launcher=slurm submits them with submitit as one SLURM job
array (one task per point, the resources from the --slurm_* flags, submitit's
files under <sweep_dir>/submitit), records each job id in status.json and
waits, updating status.json as each job ends; preempted or timed-out points
save and resume when the same command runs again, and points whose job is
still queued or running are left alone. Ctrl-C stops the waiting, not the jobs.
--launcher=submitit_local runs the same path with submitit's local executor
(processes on this machine), to try a sweep file before sending it to a cluster.
"""

import concurrent.futures
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from vae_jax import sweep  # pylint: disable=g-import-not-at-top

_SWEEP = flags.DEFINE_string('sweep', None, 'A sweep file (defines BASE_CONFIG and get_sweep()).')
_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'Directory holding one workdir per point.')
_WORKERS = flags.DEFINE_integer('workers', 1, 'Points run at once.')
_PRINT = flags.DEFINE_bool('print_commands', False, 'Print one command per point and exit.')
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'submitit_local'],
                              'Where the points run: processes here, SLURM (submitit), or '
                              "submitit's local executor.")
_PARTITION = flags.DEFINE_string('slurm_partition', None, 'SLURM partition.')
_ACCOUNT = flags.DEFINE_string('slurm_account', None, 'SLURM account.')
_QOS = flags.DEFINE_string('slurm_qos', None, 'SLURM quality of service.')
_TIME = flags.DEFINE_integer('slurm_time_min', 240, 'Time limit per point, minutes.')
_GPUS = flags.DEFINE_integer('slurm_gpus_per_node', 0, 'GPUs per point.')
_CPUS = flags.DEFINE_integer('slurm_cpus_per_task', 8, 'CPU cores per point.')
_MEM = flags.DEFINE_integer('slurm_mem_gb', 32, 'Memory per point, GB.')
_PARALLEL = flags.DEFINE_integer('slurm_array_parallelism', 64, 'Points running at once.')
_POLL = flags.DEFINE_float('poll_s', 30.0, 'Seconds between looks at the jobs (submitit).')
flags.mark_flags_as_required(['sweep', 'sweep_dir'])


class Runner:
  """Runs points in worker threads, one subprocess each; stops cleanly on a signal."""

  def __init__(self, base_config, sweep_dir):
    self.base_config = base_config
    self.sweep_dir = sweep_dir
    self.status = sweep.read_status(sweep_dir)
    self.lock = threading.Lock()
    self.procs = set()
    self.stopping = False

  def run_point(self, name, overrides):
    if self.stopping:
      return name, 'not started'
    workdir = os.path.join(self.sweep_dir, name)
    log_path = os.path.join(self.sweep_dir, 'logs', f'{name}.log')
    start = time.time()
    with open(log_path, 'a', encoding='utf-8') as log:
      proc = subprocess.Popen(sweep.command(self.base_config, workdir, overrides),
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
      with self.lock:
        self.procs.add(proc)
      returncode = proc.wait()
      with self.lock:
        self.procs.discard(proc)
    outcome = sweep.outcome(returncode, workdir, log_path)
    with self.lock:
      self.status[name] = {'outcome': outcome, 'seconds': round(time.time() - start, 1),
                           'overrides': overrides}
      sweep.write_status(self.sweep_dir, self.status)
    return name, outcome

  def stop(self, signum, frame):
    del frame
    print(f'\nsignal {signum}: asking running points to save and stop...', flush=True)
    self.stopping = True
    with self.lock:
      for proc in self.procs:
        proc.send_signal(signal.SIGTERM)


def _active_job(entry, folder):
  """The SLURM job of a submitted point if it is still queued or running, else None."""
  if not entry or entry.get('outcome') != 'submitted' or entry.get('launcher') != 'slurm':
    return None
  import submitit  # pylint: disable=g-import-not-at-top
  job = submitit.SlurmJob(folder=folder, job_id=entry['job_id'])
  return job if job.state in ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING',
                              'RESIZING', 'SUSPENDED') else None


def run_submitit(base_config, sweep_dir, todo, num_points):
  """Submits `todo` as one job array and waits, keeping status.json current; returns the
  number of points done."""
  try:
    import submitit  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit('error: --launcher: submitit is not installed (pip install submitit)')
  kind = _LAUNCHER.value
  folder = os.path.join(sweep_dir, 'submitit')
  status = sweep.read_status(sweep_dir)
  running = {n: _active_job(status.get(n), folder) for n in todo}
  running = {n: j for n, j in running.items() if j is not None}
  for name, job in running.items():
    print(f'{name}: still {job.state.lower()} as job {job.job_id}; left alone', flush=True)
  todo = {n: p for n, p in todo.items() if n not in running}
  executor = submitit.AutoExecutor(folder=folder, cluster='slurm' if kind == 'slurm' else 'local')
  executor.update_parameters(
      name=os.path.basename(sweep_dir), timeout_min=_TIME.value, cpus_per_task=_CPUS.value,
      gpus_per_node=_GPUS.value, mem_gb=_MEM.value, slurm_partition=_PARTITION.value,
      slurm_account=_ACCOUNT.value, slurm_qos=_QOS.value,
      slurm_array_parallelism=_PARALLEL.value)
  # The job processes import vae_jax to run a point: from this checkout.
  os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))
  jobs = {}
  if todo:
    with executor.batch():
      for name, overrides in todo.items():
        log_path = os.path.join(sweep_dir, 'logs', f'{name}.log')
        command = sweep.command(base_config, os.path.join(sweep_dir, name), overrides)
        jobs[name] = executor.submit(sweep.PointJob(command, log_path, ROOT))
  for name, job in jobs.items():
    status[name] = {'outcome': 'submitted', 'job_id': job.job_id, 'launcher': kind,
                    'overrides': todo[name]}
  sweep.write_status(sweep_dir, status)
  if jobs:
    print(f'submitted {len(jobs)} points ({kind}), job ids {jobs[next(iter(jobs))].job_id}...; '
          f'submitit files in {folder}', flush=True)
  done = num_points - len(todo) - len(running)
  failed, start = 0, time.time()
  pending = dict(jobs)
  try:
    while pending:
      for name, job in list(pending.items()):
        if not job.done():
          continue
        del pending[name]
        log_path = os.path.join(sweep_dir, 'logs', f'{name}.log')
        try:
          outcome = sweep.outcome(job.result(), os.path.join(sweep_dir, name), log_path)
        except Exception as e:  # pylint: disable=broad-except  # The job itself failed.
          text = str(e).strip().splitlines()
          outcome = f'failed (job {job.job_id}: {text[-1] if text else type(e).__name__})'
        status[name] = dict(status[name], outcome=outcome, seconds=round(time.time() - start, 1))
        sweep.write_status(sweep_dir, status)
        done += outcome == 'done'
        failed += outcome.startswith('failed')
        print(f'[{done}/{num_points} done, {failed} failed, {(time.time() - start) / 60:.1f} min] '
              f'{name} (job {job.job_id}): {outcome}', flush=True)
      if pending:
        time.sleep(_POLL.value)
  except KeyboardInterrupt:
    print(f'\nstopped waiting; {len(pending)} job(s) go on. Run the same command again to '
          'update status.json and submit what is left.', flush=True)
    sys.exit(130)
  return done


def main(argv):
  del argv
  base_config, points = sweep.load_sweep(_SWEEP.value)
  sweep_dir = os.path.abspath(_SWEEP_DIR.value)
  if _PRINT.value:
    for name, p in points.items():
      print(shlex.join(sweep.command(base_config, os.path.join(sweep_dir, name), p, python='python')))
    return
  os.makedirs(os.path.join(sweep_dir, 'logs'), exist_ok=True)
  todo = {n: p for n, p in points.items() if not sweep.is_finished(os.path.join(sweep_dir, n))}
  where = (f'with {_WORKERS.value} worker(s)' if _LAUNCHER.value == 'local'
           else f'through submitit ({_LAUNCHER.value})')
  print(f'{len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run '
        f'{where}; logs in {sweep_dir}/logs', flush=True)
  if _LAUNCHER.value != 'local':
    done = run_submitit(base_config, sweep_dir, todo, len(points))
    if done < len(points):
      print('Not every point finished; run the same command again to continue.', flush=True)
      sys.exit(1)
    return
  runner = Runner(base_config, sweep_dir)
  signal.signal(signal.SIGINT, runner.stop)
  signal.signal(signal.SIGTERM, runner.stop)
  done = len(points) - len(todo)
  failed = 0
  start = time.time()
  with concurrent.futures.ThreadPoolExecutor(_WORKERS.value) as pool:
    for future in concurrent.futures.as_completed([pool.submit(runner.run_point, n, p) for n, p in todo.items()]):
      name, outcome = future.result()
      done += outcome == 'done'
      failed += outcome.startswith('failed')
      elapsed = time.time() - start
      print(f'[{done}/{len(points)} done, {failed} failed, {elapsed / 60:.1f} min] {name}: {outcome}',
            flush=True)
  if done < len(points):
    print('Not every point finished; run the same command again to continue.', flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
