"""evaluate_workdir: a trained workdir in, a JSON of held-out numbers out."""

import io
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from vae_jax import evaluate_workdir
from vae_jax import logs as vlog
from vae_jax import train
from vae_jax import workdir as workdir_lib

from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(tiny_config(logging__tensorboard=False), workdir)
  return workdir


def test_writes_json_with_every_number(trained):
  start = time.perf_counter()
  results = evaluate_workdir.evaluate_workdir(trained, 'test', num_samples=20, progress=False)
  elapsed = time.perf_counter() - start
  path = os.path.join(trained, 'eval_test_k20.json')
  with open(path) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved['step'] == 40 and saved['split'] == 'test' and saved['num_images'] == 500
  assert saved['epoch'] == pytest.approx(40 / 90)
  assert saved['num_samples'] == 20
  assert len(saved['kl_per_dim']) == 4 and len(saved['posterior_mean_variance']) == 4
  # Active: Cov_x(E_q[z_d | x]) > 0.01, counted from the variances it reports beside.
  assert saved['active_units'] == sum(v > 0.01 for v in saved['posterior_mean_variance'])
  assert saved['active_units_per_layer'] == [saved['active_units']]
  assert saved['elbo'] == pytest.approx(saved['recon'] - saved['kl'])
  # The K-sample bound is tighter than the single-sample ELBO (Burda et al. 2015, thm. 1).
  assert saved['elbo'] < saved['log_px'] < 0
  assert saved['bits_per_dim'] == pytest.approx(-saved['log_px'] / (784 * np.log(2)))
  assert 0 < saved['wall_time_s'] <= elapsed  # The evaluation's own time, within the call's.


def test_other_split_and_image_limit(trained):
  results = evaluate_workdir.evaluate_workdir(trained, 'train', num_samples=5, num_images=30,
                                              progress=False)
  assert results['num_images'] == 30 and results['split'] == 'train'
  assert os.path.exists(os.path.join(trained, 'eval_train_k5_n30.json'))
  # --output writes elsewhere; more images than the split holds is refused, not capped.
  elsewhere = os.path.join(os.path.dirname(trained), 'elsewhere.json')
  evaluate_workdir.evaluate_workdir(trained, 'train', num_samples=2, num_images=4,
                                    progress=False, output=elsewhere)
  assert json.load(open(elsewhere))['num_images'] == 4
  with pytest.raises(workdir_lib.FlagError, match='--num_images: the test split has 500'):
    evaluate_workdir.evaluate_workdir(trained, 'test', num_samples=2, num_images=501,
                                      progress=False)


def test_cli_on_a_non_workdir_is_a_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vae_jax.evaluate_workdir', f'--workdir={tmp_path}',
       '--num_samples=5'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.startswith('error: ')


def test_a_status_line_names_each_stage_before_the_estimate_and_warnings_go_above_it(
    trained, tmp_path, capsys):
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler().python_handler
  stream = handler.stream
  evaluate_workdir.evaluate_workdir(trained, 'test', num_samples=4, num_images=4,
                                    output=str(tmp_path / 'e.json'))
  err = capsys.readouterr().err
  stages = ['evaluate_workdir: starting', 'evaluate_workdir: loading the data (1/3)',
            'evaluate_workdir: restoring the checkpoint (2/3)',
            'evaluate_workdir: reading the test split (3/3)', 'log p(x), K=4',
            'evaluate_workdir: the ELBO (1/3)', 'evaluate_workdir: active units (2/3)',
            'evaluate_workdir: KL per layer (3/3)']
  positions = [err.find(stage) for stage in stages]
  assert -1 not in positions and positions == sorted(positions), (positions, err)
  assert handler.stream is stream  # Given back.

  # A warning logged under a status line is written above it, on a line of its own.
  handler.stream = io.StringIO()
  try:
    with vlog.Stages('tool', 1) as status:
      status.start('working')
      # As absl's handler emits once flags are parsed (before, it writes to sys.stderr).
      logging.StreamHandler.emit(handler, logging.LogRecord(
          'absl', logging.WARNING, __file__, 1, 'something to say', None, None))
    assert handler.stream.getvalue().endswith('something to say\n')
    assert 'tool: working' not in handler.stream.getvalue()
  finally:
    handler.stream = stream
  assert 'tool: working (1/1)' in capsys.readouterr().err
