"""The workdir: its checks, its config.json and versions.json.

A workdir is everything one run leaves behind. A saved config is read back as
JSON data, never executed, and a resumed run must agree with it.
"""

import contextlib
import datetime
import fcntl
import glob
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings

import ml_collections

from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import logs as vlog

CONFIG_FILE = 'config.json'
LOCK_FILE = 'run.lock'
LAUNCHES_FILE = 'launches.jsonl'
VERSIONS_FILE = 'versions.json'
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'tensorflow-datasets')


class WorkdirError(RuntimeError):
  """A workdir that cannot be used, or a resume that is refused; says which and why."""


class FlagError(ValueError):
  """A tool's flag that cannot be used; names the flag and what it accepts."""


def check_at_least(least, **counts):
  """FlagError naming the first of the `counts` (flag name -> value) below `least`."""
  for name, value in counts.items():
    if value < least:
      raise FlagError(f'--{name}: must be {least} or more, got {value}')


def _probe_write(directory):
  """Writes and removes a file in `directory`; OSError if it cannot. A name of its
  own: every process of a multi-process run probes at once."""
  with tempfile.NamedTemporaryFile('w', dir=directory, prefix='.write_test') as probe:
    probe.write('ok')
    probe.flush()


def check_writable(path: str, hint: str = '') -> str:
  """`path` (absolute) if a file can be written there, checked by writing a probe
  beside it; FlagError naming the path (and `hint`) otherwise. For tools that write
  their result after minutes of work: they check first."""
  path = os.path.abspath(os.path.expanduser(path))
  try:
    if os.path.isdir(path):
      raise OSError(f'{path} is a directory')
    _probe_write(os.path.dirname(path))
  except OSError as e:
    raise FlagError(f'--output: cannot write {path}: {e}{hint}') from e
  return path


def prepare(workdir: str) -> str:
  """Makes the workdir (absolute) and checks that it is a writable directory."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'workdir {path} exists and is not a directory')
  try:
    os.makedirs(path, exist_ok=True)
    _probe_write(path)
  except OSError as e:
    raise WorkdirError(f'workdir {path} is not writable: {e}') from e
  return path


write_json = vlog.write_json  # One atomic JSON write for the package.


def read_json(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def runs_of(workdirs):
  """The runs behind some workdirs: a multi-seed workdir becomes its seed_* replicas."""
  runs = []
  for workdir in workdirs:
    replicas = sorted(glob.glob(os.path.join(workdir, 'seed_*')),
                      key=lambda p: int(p.rsplit('_', 1)[1]) if p.rsplit('_', 1)[1].isdigit() else 0)
    replicas = [r for r in replicas if os.path.exists(os.path.join(r, CONFIG_FILE))]
    runs += replicas or [workdir]
  return runs


def newest_evaluation(workdir):
  """The evaluate_workdir JSON (eval_SPLIT_kK*.json) of the most images, then the most
  importance samples, then the newest; None when the workdir has none."""
  found = []
  for path in glob.glob(os.path.join(workdir, 'eval_*_k*.json')):
    try:
      found.append((read_json(path), os.path.getmtime(path)))
    except (OSError, ValueError):
      continue
  found = [(r, t) for r, t in found if isinstance(r, dict) and 'log_px' in r]
  if not found:
    return None
  return max(found, key=lambda rt: (rt[0].get('num_images', 0), rt[0].get('num_samples', 0),
                                    rt[1]))[0]


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, read as data from config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(f'{path} not found: is {workdir} a vae_jax workdir?')
  saved = _with_defaults(_read_saved_config(path))
  try:
    return ml_collections.ConfigDict(_tuples(saved))
  except (ValueError, TypeError) as e:
    raise WorkdirError(f'{path} is not a config: {e}') from e


def _read_saved_config(path) -> dict:
  try:
    saved = read_json(path)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{path} cannot be read as JSON: {e}') from e
  if not isinstance(saved, dict):
    raise WorkdirError(f'{path} holds a {type(saved).__name__}, not a config')
  return saved


def _with_defaults(saved: dict) -> dict:
  """`saved` over default_config(): a field added since the run was saved gets its
  default, which by design reproduces what the code did before it existed."""
  def merge(default, value):
    if isinstance(default, dict) and isinstance(value, dict):
      return {**default, **{k: merge(default.get(k), v) for k, v in value.items()}}
    return value
  defaults = json.loads(json.dumps(config_lib.default_config().to_dict(), default=list))
  return merge(defaults, saved)


def _tuples(tree):
  """JSON lists back to tuples, as the configs declare sequences."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(tree)
  return tree


def run_identity(config, hint='') -> checkpoint.RunIdentity:
  """What a checkpoint of the run `config` describes records, and compares on restore:
  its resolved config, told apart from another's by the fields that matter
  (those config_lib.differing_fields compares), the seed among them."""
  record = json.loads(json.dumps(config.to_dict(), default=list))

  def differences(saved):
    return config_lib.differing_fields(_with_defaults(saved), record)
  return checkpoint.RunIdentity(record, differences,
                                bool(config.resume.allow_config_change), hint)


def has_committed_step(workdir) -> bool:
  """Whether a checkpoint was ever committed in `workdir` (or its seed_* replicas)."""
  candidates = [os.path.join(workdir, 'checkpoints')]
  if os.path.isdir(workdir):
    candidates += [os.path.join(workdir, name, 'checkpoints') for name in os.listdir(workdir)
                   if name.startswith('seed_')]
  return any(name.isdigit() for directory in candidates if os.path.isdir(directory)
             for name in os.listdir(directory))


def check_resume(workdir, config):
  """Refuses to resume under a config that differs in a field that matters.

  Returns the differing fields (empty when none); raises WorkdirError listing
  them unless config.resume.allow_config_change is set. A workdir without a
  committed checkpoint has nothing to resume: its config.json (left by a run
  that failed before its first save) is replaced, whatever it says.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path) or not has_committed_step(workdir):
    return []
  diffs = config_lib.differing_fields(_with_defaults(_read_saved_config(path)),
                                      config.to_dict())
  if diffs and not config.resume.allow_config_change:
    listed = '\n  '.join(diffs)
    raise WorkdirError(
        f'refusing to resume {workdir}: the config differs from {path} in\n  {listed}\n'
        'Use a new --workdir, or pass --config.resume.allow_config_change=True '
        '(shapes must still match the checkpoint).')
  return diffs


@contextlib.contextmanager
def hold_lock(workdir, main_process=True, agree=None):
  """Holds `workdir/run.lock` for a run: a second run on the workdir is refused.

  An advisory lock (flock) the kernel drops when the process ends, however it
  ends: a lock file left by a killed run blocks nothing. The file says who
  holds it (pid, host, since when), for the message of the run refused. Only
  the main process of a multi-process run takes it; `agree(ok)` (every
  process calls it) returns whether the main process got it, so that all of
  them stop together. Paths that are not local files (gs://) are not locked.
  """
  path = os.path.join(workdir, LOCK_FILE)
  handle, refused = None, ''
  if main_process and '://' not in workdir:
    handle, refused = _take_lock(path, workdir)
  ok = agree(not refused) if agree is not None else not refused
  if not ok:
    if handle is not None:
      handle.close()
    raise WorkdirError(refused or f'{workdir} is in use by another run: the main process '
                       f'of this one found {path} held.')
  try:
    yield
  finally:
    if handle is not None:
      handle.close()  # Drops the flock; the file stays, naming the last holder.


def _take_lock(path, workdir):
  """(the locked open file, '') or (None, why the run is refused)."""
  try:
    handle = open(path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
  except OSError as e:
    warnings.warn(f'cannot open {path} ({e}); nothing stops a second run on {workdir}.')
    return None, ''
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or 'it has not written its pid yet'
    handle.close()
    return None, (f'{workdir} is in use by another run ({holder}; lock {path}): wait for '
                  'it to end or stop it, or use another --workdir.')
  except OSError as e:  # A filesystem without locks: run, and say nothing guards it.
    handle.close()
    warnings.warn(f'cannot lock {path} ({e}); nothing stops a second run on {workdir}.')
    return None, ''
  handle.seek(0)
  handle.truncate()
  since = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  handle.write(f'pid {os.getpid()} on host {socket.gethostname()} since {since}\n')
  handle.flush()
  return handle, ''


def installed_versions():
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def record_versions(workdir):
  """Writes versions.json; warns when resuming under other package versions."""
  path = os.path.join(workdir, VERSIONS_FILE)
  current = installed_versions()
  if os.path.exists(path):
    try:
      saved = read_json(path)
    except (OSError, ValueError) as e:
      saved = e
    if not isinstance(saved, dict):  # Only a record: replaced, not fatal.
      warnings.warn(f'{path} is unreadable ({saved}); writing the current versions.')
      saved = current
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed:
      listed = ', '.join(f'{k} {old} -> {new}' for k, (old, new) in changed.items())
      warnings.warn(f'resuming {workdir} under different package versions: {listed}; '
                    'results may not be bit-identical to an uninterrupted run.')
  write_json(path, current)
  return current


def _git(*args):
  """A git command's output in the checkout holding vae_jax; None outside one (an
  installed copy inside some other repository is not that repository's code)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.exists(os.path.join(root, '.git')):
    return None
  try:
    result = subprocess.run(['git', '-C', root, *args], capture_output=True, text=True,
                            timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout


def provenance(devices) -> dict:
  """Where and from what a launch ran: command line, code, host, devices."""
  commit = _git('rev-parse', 'HEAD')
  status = _git('status', '--porcelain', '--untracked-files=no') if commit else None
  kinds = sorted({d.device_kind for d in devices})
  return {
      'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'argv': list(sys.argv), 'cwd': os.getcwd(), 'host': socket.gethostname(),
      'git_commit': commit.strip() if commit else None,
      'git_dirty': bool(status.strip()) if status is not None else None,
      'devices': {'kind': kinds[0] if len(kinds) == 1 else kinds, 'count': len(devices)},
  }


def record_launch(workdir, devices):
  """Appends this launch's provenance to launches.jsonl (one line per start or resume)."""
  with open(os.path.join(workdir, LAUNCHES_FILE), 'a', encoding='utf-8') as f:
    f.write(json.dumps(provenance(devices), sort_keys=True) + '\n')
