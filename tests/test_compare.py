"""vae_jax.compare: the table of what differs and what the runs reached, and their curves."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from test_cli import ROOT
from test_train import tiny_config
from vae_jax import compare


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  """Two workdirs as training leaves them (config.json, metrics.jsonl, final_metrics.json),
  written here: compare only reads files."""
  root = tmp_path_factory.mktemp('compare')
  runs = []
  for i, beta in enumerate((1.0, 2.0)):
    workdir = root / f'beta{beta}'
    workdir.mkdir()
    (workdir / 'config.json').write_text(json.dumps(
        tiny_config(objective__beta=beta).to_dict(), default=list))
    records = [{'step': 10, 'split': 'train', 'time': 100.0, 'elbo': -200.0 - i, 'epoch': 10 / 90,
                'steps_per_sec': 2.0},
               {'step': 20, 'split': 'train', 'time': 9000.0, 'elbo': -150.0 - i, 'epoch': 20 / 90,
                'steps_per_sec': 5.0},
               {'step': 20, 'split': 'eval', 'time': 9001.0, 'elbo': -160.0 - i, 'epoch': 20 / 90}]
    (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    (workdir / 'final_metrics.json').write_text(json.dumps({'elbo': -160.0 - i, 'step': 20}))
    runs.append(str(workdir))
  return runs


def test_table_lists_the_fields_that_differ_and_what_each_run_reached(two_runs, tmp_path):
  # An evaluate_workdir result beside the first run.
  with open(os.path.join(two_runs[0], 'eval_test_k20.json'), 'w', encoding='utf-8') as f:
    json.dump({'log_px': -123.456, 'num_samples': 20, 'split': 'test', 'active_units': 3}, f)
  rows = [compare.summarise(w, 'elbo') for w in two_runs]
  assert compare.differing(rows) == ['objective.beta']
  lines = compare.table(rows, 'elbo').splitlines()
  assert lines[0] == ('| run | objective.beta | final elbo | log p(x) (K=20) | active units | '
                      'step | training time |')
  assert lines[2] == f'| {two_runs[0]} | 1.0 | -160.00 | -123.46 | 3 | 20 | 0m07s |'  # 10/2 + 10/5 s.
  assert lines[3] == f'| {two_runs[1]} | 2.0 | -161.00 | - | - | 20 | 0m07s |'


@pytest.mark.slow
def test_cli_prints_the_table_and_draws_the_curves(two_runs, tmp_path):
  out = tmp_path / 'curves.png'
  result = subprocess.run([sys.executable, '-m', 'vae_jax.compare', *two_runs, f'--output={out}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('| run | objective.beta | final elbo |')
  assert out.stat().st_size > 10_000
  with Image.open(out) as image:
    assert image.size == (1320, 495)
  for argv, message in (([str(tmp_path)], f'error: {tmp_path}/config.json not found'),
                        ([two_runs[0], '--metric=elbo2'], "error: --metric: no record of these "
                                                           "runs has 'elbo2'"),
                        ([], 'error: name at least one workdir')):
    bad = subprocess.run([sys.executable, '-m', 'vae_jax.compare', *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith(message), bad.stderr
    assert 'Traceback' not in bad.stderr
