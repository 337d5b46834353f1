"""vae_jax's user cache: decoded datasets and JAX's compiled programs, kept between runs.

  $VAE_JAX_CACHE_DIR, else $XDG_CACHE_HOME/vae_jax, else ~/.cache/vae_jax
    datasets/NAME/VERSION/SPLIT.npz   decoded TFDS splits (data.py; config data.cache)
    jax/                              JAX's persistent compilation cache

A restart then neither decodes its dataset record by record nor compiles its
step again. Both are checked and rebuilt when stale or damaged, never fatal.
Turn them off with data.cache=False and VAE_JAX_COMPILATION_CACHE=0; an
explicit JAX_COMPILATION_CACHE_DIR is JAX's own setting and wins.
"""

import os
import warnings

# Programs that compile faster than this are not worth a file (JAX's default is 1 s,
# which the MLP train step, at 1.2-1.6 s here, only just passes).
MIN_COMPILE_TIME_S = 0.0


def cache_root() -> str:
  """The user cache directory (never inside a TFDS data directory)."""
  root = os.environ.get('VAE_JAX_CACHE_DIR') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache'), 'vae_jax')
  return os.path.abspath(os.path.expanduser(root))


def use_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache under cache_root()/jax for this
  process (the entry points call it first); returns its directory, or None when
  it is off (VAE_JAX_COMPILATION_CACHE=0) or JAX_COMPILATION_CACHE_DIR decides."""
  if os.environ.get('VAE_JAX_COMPILATION_CACHE', '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return None
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return None
  import jax  # pylint: disable=g-import-not-at-top
  directory = os.path.join(cache_root(), 'jax')
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return None  # A read-only home: compile every time, as without the cache.
  jax.config.update('jax_compilation_cache_dir', directory)
  # A damaged entry is compiled again and rewritten by JAX: nothing to act on, so
  # not one warning per program on the console.
  warnings.filterwarnings('ignore', message='Error reading persistent compilation cache entry')
  if not os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'):
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_S)
  return directory
