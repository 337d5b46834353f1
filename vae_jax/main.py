"""Trains a VAE: python -m vae_jax.main --config=configs/quickstart.py --workdir=DIR.

Any config field can be overridden, e.g. --config.model.latent_dim=50; a field
that does not exist is an error. Re-running on the same workdir resumes.

A run of several processes (a TPU pod slice, several GPU hosts) runs this same
command in every process; SLURM, Open MPI and Cloud TPU VMs are detected, other
launchers pass --coordinator_address, --num_processes and --process_id (see the
README's Devices section).
"""

import os
import signal
import sys
import traceback


def _interrupted(signum, frame):
  """Ctrl-C outside the training loop (imports, data, compilation, final evaluation)."""
  del signum, frame
  print('interrupted: Ctrl-C before training started or after it ended; committed '
        'checkpoints are kept.', file=sys.stderr, flush=True)
  os._exit(130)  # 128 + SIGINT, as a shell reports it.


if __name__ == '__main__':  # Before the imports below: they take seconds.
  signal.signal(signal.SIGINT, _interrupted)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from vae_jax import caches
from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import logs as vlog
from vae_jax import sharding
from vae_jax import trackers
from vae_jax import train
from vae_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and images.')
flags.mark_flags_as_required(['config', 'workdir'])
sharding.define_flags()

# Failures the user can fix: one clear line, no traceback.
USER_ERRORS = (config_lib.ConfigError, workdir_lib.WorkdirError, data.DatasetError,
               checkpoint.CheckpointError, train.NonFiniteError, sharding.DistributedError,
               trackers.TrackerError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax logs every save at INFO; keep the console to our progress lines.
    logging.set_verbosity(logging.WARNING)
  caches.use_compilation_cache()  # Before anything compiles.
  try:
    # Before anything touches a device: the runtime decides which devices exist.
    if sharding.initialize_from_flags():
      vlog.info(f'Multi-process run: {sharding.describe()}.')
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt as e:  # Ctrl-C in the loop: what was committed is kept.
    print(f'interrupted: {e or "Ctrl-C"}; committed checkpoints are kept.',
          file=sys.stderr, flush=True)
    logging.flush()
    sys.stdout.flush()
    os._exit(130)  # 128 + SIGINT, as a shell reports it; orbax's threads are not awaited.
  except USER_ERRORS as e:
    message = str(e)
    if not isinstance(_CONFIG.value, ml_collections.ConfigDict):  # Name the file at fault.
      message = f'--config: {config_flags.get_config_filename(flags.FLAGS["config"])}: {e}'
    print(f'error: {message}', file=sys.stderr, flush=True)
    if isinstance(e, checkpoint.CheckpointError):
      # A failed save leaves orbax's writer threads and asyncio tasks holding
      # errors nobody retrieves; interpreter teardown would print a page of
      # them after the line above. Everything of ours is closed and flushed.
      logging.flush()
      sys.stdout.flush()
      os._exit(1)
    sys.exit(1)


def _no_such_field(error):
  """(name, hint) of ml_collections' error for a missing field, else None."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]  # AttributeError(KeyError("'name'\nDid you mean ...")).
  if not isinstance(error, KeyError) or not error.args:
    return None
  name, _, hint = str(error.args[0]).partition('\n')
  return name.strip("'"), hint


def _config_file_error(error):
  """The last line of a config file's own error (ml_collections quotes its traceback)."""
  text = str(error)
  if 'Error whilst parsing config file' not in text:
    return None
  last = [line.strip() for line in text.splitlines() if line.strip()][-1]
  kind, sep, message = last.partition(': ')
  return message if sep and kind.endswith(('ConfigError', 'ValueError')) else last


def shipped_config(value):
  """--config=NAME[:options] or configs/NAME.py[:options] -> the shipped config's path,
  when no such file exists where the command runs; anything else unchanged."""
  path, sep, options = value.partition(':')
  if os.path.exists(path):
    return value
  name = os.path.basename(path)
  name = name[:-3] if name.endswith('.py') else name
  if path not in (name, f'{name}.py', f'configs/{name}.py'):
    return value  # Another folder: its own missing file, reported as such.
  # Beside the package: the checkout's configs/, or the installed `configs` package.
  shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  candidate = os.path.join(shipped, f'{name}.py')
  return candidate + sep + options if os.path.exists(candidate) else value


def _resolve_configs(argv):
  return [f'--config={shipped_config(a.split("=", 1)[1])}' if a.startswith('--config=') else a
          for a in argv]


def _parse_flags(argv):
  """absl's flag parsing; a bad flag, config option or misspelt field is one line."""
  argv = _resolve_configs(argv)
  try:
    rest = flags.FLAGS(argv)
    # ml_collections defers a config file it cannot open to the first use.
    unreadable = getattr(flags.FLAGS['config'].value, '_error', None)
    if unreadable is not None:
      print(f'error: --config: {str(unreadable).strip().splitlines()[-1].strip()}',
            file=sys.stderr, flush=True)
      sys.exit(1)
    return rest
  except flags.Error as e:
    message = _config_file_error(e)
    if message is None:
      message = vlog.first_line(e)
    elif not any(arg in message for arg in (a.partition(':')[0].split('=')[-1]
                                            for a in argv[1:] if a.startswith('--config='))):
      message = f'--config: {message}'
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    missing = _no_such_field(e)
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    # The override whose path holds the missing name (not one that merely starts
    # like it: --config.train.num_steps beside a misspelt --config.train.num_step).
    culprit = [a for a in overrides
               if missing and missing[0] in a.split('=')[0].split('.')[1:]]
    if culprit:
      print(f'error: {culprit[0]}: config has no field {missing[0]!r}. {missing[1]}'.strip(),
            file=sys.stderr, flush=True)
      sys.exit(1)
    _exit_if_config_code_failed(e, argv)
    raise
  except Exception as e:  # pylint: disable=broad-except
    _exit_if_config_code_failed(e, argv)
    raise


def _exit_if_config_code_failed(error, argv):
  """A config file's own code failed: its file, line and error in one line."""
  paths = [a.split('=', 1)[1].partition(':')[0] for a in argv[1:] if a.startswith('--config=')]
  if not paths:
    return
  path = os.path.abspath(paths[-1])
  if isinstance(error, SyntaxError) and error.filename:
    where = f'{error.filename}:{error.lineno}'
  else:
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == path]
    if not frames:
      return
    where = f'{frames[-1].filename}:{frames[-1].lineno}'
  message = error.msg if isinstance(error, SyntaxError) else str(error)
  print(f'error: {where}: {type(error).__name__}: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
