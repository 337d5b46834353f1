"""Slow end-to-end checks on the real TFDS binarized_mnist (run with -m slow).

Skipped where ../shared/tensorflow_datasets is absent (a user's clone).
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared', 'tensorflow_datasets')
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'binarized_mnist')),
                       reason='needs ../shared/tensorflow_datasets/binarized_mnist'),
]


def test_binarized_mnist_runlocal_trains_and_evaluates(tmp_path):
  workdir = tmp_path / 'bmnist'
  env = dict(os.environ, TFDS_DATA_DIR=SHARED)
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.main', '--config=configs/binarized_mnist.py:runlocal',
       f'--workdir={workdir}', '--config.eval.num_importance_samples=100'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'final_metrics.json') as f:
    final = json.load(f)
  assert final['step'] == 200
  # 200 steps (batch 100, cosine decay) take the test ELBO from ~-545 at init to
  # about -183 (measured); -230 leaves room for other platforms' numerics.
  assert -230 < final['elbo'] < -80
  # The importance-sampled bound is never below the ELBO (up to MC noise).
  assert final['log_px'] > final['elbo'] - 0.5
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['split'] == 'train'] == [50, 100, 150, 200]
