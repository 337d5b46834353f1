"""vae_jax.compare: the table of what differs and what the runs reached, and their curves."""

import importlib.util
import json
import os
import shutil
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


def test_aggregate_reads_ordinary_workdirs_and_evaluation_json(two_runs, tmp_path):
  from vae_jax import sweep  # pylint: disable=g-import-not-at-top
  two_runs = [shutil.copytree(w, tmp_path / os.path.basename(w)) for w in two_runs]
  two_runs = [str(w) for w in two_runs]
  # Two evaluations of the second run: the one of all images wins over a newer subset.
  for name, record in (('eval_test_k100.json', {'log_px': -150.5, 'num_samples': 100,
                                                 'num_images': 500, 'split': 'test',
                                                 'active_units': 7}),
                       ('eval_test_k5000_n10.json', {'log_px': -140.0, 'num_samples': 5000,
                                                      'num_images': 10, 'split': 'test'})):
    with open(os.path.join(two_runs[1], name), 'w', encoding='utf-8') as f:
      json.dump(record, f)
  unfinished = tmp_path / 'unfinished'
  unfinished.mkdir()
  (unfinished / 'config.json').write_text(json.dumps(tiny_config().to_dict(), default=list))
  rows = sweep.collect_workdirs(list(reversed(two_runs)) + [str(unfinished)])
  assert [r['point'] for r in rows] == two_runs  # Sorted by beta; unfinished left out.
  assert [r['objective.beta'] for r in rows] == [1.0, 2.0]
  assert [r['final_elbo'] for r in rows] == [-160.0, -161.0]
  assert rows[0]['best_elbo'] == -160.0 and rows[0]['best_step'] == 20
  assert (rows[1]['eval_log_px'], rows[1]['eval_num_samples'], rows[1]['eval_active_units']) == (
      -150.5, 100, 7)
  groups = sweep.group_over_seeds(rows, ['final_elbo', 'eval_log_px'])
  assert [g['objective.beta'] for g in groups] == ['1.0', '2.0']
  assert groups[1]['eval_log_px_mean'] == -150.5


@pytest.mark.slow
def test_aggregate_cli_on_workdirs(two_runs, tmp_path):
  out = tmp_path / 'results'
  result = subprocess.run([sys.executable, 'scripts/aggregate.py', f'--out_dir={out}', *two_runs],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  header = (out / 'results.csv').read_text().splitlines()[0].split(',')
  assert header[:2] == ['point', 'objective.beta'] and 'final_elbo' in header, header
  assert (out / 'learning_curves.png').stat().st_size > 5_000
  for argv, message in (([str(tmp_path / 'nowhere'), f'--out_dir={out}'], 'no such directory'),
                        ([two_runs[0]], '--out_dir'),
                        ([], 'give --sweep_dir=DIR or workdirs')):
    bad = subprocess.run([sys.executable, 'scripts/aggregate.py', *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and message in bad.stderr and 'Traceback' not in bad.stderr, bad.stderr


def test_iwae_study_plot_takes_its_title_and_labels_from_the_runs(tmp_path):
  spec = importlib.util.spec_from_file_location(
      'iwae_plot', os.path.join(ROOT, 'experiments', 'iwae_burda', 'plot.py'))
  plot = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plot)
  here = os.path.join(ROOT, 'experiments', 'iwae_burda')
  one, rows = plot.read_run('one', os.path.join(here, 'iwae1_vae_e200'))
  two, _ = plot.read_run('two', os.path.join(here, 'iwae2_vae_e200_warmup'))
  title, labels = plot.describe([one, two])
  assert title == 'binarized_mnist (static), tanh, batch 20'
  assert labels == ['layers=784-200-200-50, kl_warmup_steps=0',
                    'layers=784-200-200-100-100-100-50, kl_warmup_steps=125000']
  assert plot.describe([one, one])[0] == 'binarized_mnist (static), 784-200-200-50, tanh, batch 20'
  low, high = plot.limits(rows)
  late = [r['elbo'] for r in rows if r['epoch'] >= 10]
  assert low < min(late) and high > max(late) and low > min(r['elbo'] for r in rows)
  # Step 2,500 at batch 20 over 50,000 images is epoch 1.
  assert rows[0]['step'] == 2500 and rows[0]['epoch'] == 1.0
