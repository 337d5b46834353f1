"""The user cache: where it is, JAX's compilation cache turned on (or off) by the entry points."""

import json
import os
import subprocess
import sys

import jax
import pytest

from test_cli import ROOT, TINY
from vae_jax import caches


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv('VAE_JAX_CACHE_DIR', str(tmp_path / 'mine'))
  assert caches.cache_root() == str(tmp_path / 'mine')
  monkeypatch.delenv('VAE_JAX_CACHE_DIR')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert caches.cache_root() == str(tmp_path / 'xdg' / 'vae_jax')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert caches.cache_root() == str(tmp_path / 'home' / '.cache' / 'vae_jax')


def test_compilation_cache_on_by_default_off_on_request_and_jax_setting_wins(monkeypatch,
                                                                              tmp_path):
  saved = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
  monkeypatch.setenv('VAE_JAX_CACHE_DIR', str(tmp_path))
  monkeypatch.delenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', raising=False)
  try:
    monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'theirs'))
    assert caches.use_compilation_cache() is None
    monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR')
    monkeypatch.setenv('VAE_JAX_COMPILATION_CACHE', '0')
    assert caches.use_compilation_cache() is None
    monkeypatch.delenv('VAE_JAX_COMPILATION_CACHE')
    assert caches.use_compilation_cache() == str(tmp_path / 'jax')
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'jax')
    assert jax.config.jax_persistent_cache_min_compile_time_secs == caches.MIN_COMPILE_TIME_S
  finally:
    jax.config.update('jax_compilation_cache_dir', saved[0])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', saved[1])


@pytest.mark.slow
def test_a_restart_reuses_compiled_programs_and_survives_damaged_entries(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_PERSISTENT_CACHE')}
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  env['VAE_JAX_CACHE_DIR'] = str(tmp_path / 'cache')

  def run(name):
    result = subprocess.run(
        [sys.executable, '-m', 'vae_jax.main', '--config=configs/quickstart.py',
         f'--workdir={tmp_path / name}', '--config.train.num_steps=20'] + TINY,
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr and 'rror' not in result.stderr, result.stderr
    return json.loads((tmp_path / name / 'final_metrics.json').read_text())

  first = run('first')
  entries = [tmp_path / 'cache' / 'jax' / n for n in os.listdir(tmp_path / 'cache' / 'jax')]
  entries = [e for e in entries if e.is_file()]
  assert len(entries) > 10  # The step, the evaluations, and the eager init's small programs.
  for entry in entries:  # Every entry damaged: each is compiled again, nothing fails.
    raw = bytearray(entry.read_bytes())
    for i in range(0, len(raw), 97):
      raw[i] ^= 0x5A
    entry.write_bytes(bytes(raw))
  assert run('second')['elbo'] == first['elbo']
