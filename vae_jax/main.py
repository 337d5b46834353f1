"""Trains a VAE: python -m vae_jax.main --config=configs/quickstart.py --workdir=DIR.

Any config field can be overridden, e.g. --config.model.latent_dim=50; a field
that does not exist is an error. Re-running on the same workdir resumes.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vae_jax import checkpoint
from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import train
from vae_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and images.')
flags.mark_flags_as_required(['config', 'workdir'])

# Failures the user can fix: one clear line, no traceback.
USER_ERRORS = (config_lib.ConfigError, workdir_lib.WorkdirError, data.DatasetError,
               checkpoint.CheckpointError, train.NonFiniteError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax logs every save at INFO; keep the console to our progress lines.
    logging.set_verbosity(logging.WARNING)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
