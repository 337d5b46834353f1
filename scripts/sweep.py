"""Runs every point of a sweep in its own workdir under --sweep_dir.

  python scripts/sweep.py --sweep=experiments/beta_rate_distortion/sweep.py \
      --sweep_dir=runs/beta --workers=2
  python scripts/sweep.py --sweep=... --sweep_dir=... --print_commands  # for a cluster

Resumable: a point whose workdir has final_metrics.json is skipped, an
interrupted one resumes from its checkpoints, a failed one is run again; one
failure does not stop the others. Ctrl-C or SIGTERM passes SIGTERM to the running
points (each saves a checkpoint and exits) and stops. Each point's output goes
to <sweep_dir>/logs/<point>.log; status.json records the outcome of each point.
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
    finished = sweep.is_finished(workdir)
    outcome = 'done' if returncode == 0 and finished else (
        # 130: Ctrl-C at the terminal reaches the points too; they save and stop.
        'interrupted' if returncode in (0, 130) else f'failed (exit {returncode}, see {log_path})')
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
  print(f'{len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run '
        f'with {_WORKERS.value} worker(s); logs in {sweep_dir}/logs', flush=True)
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
