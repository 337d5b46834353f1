"""The benchmark end to end on a tiny config and tiny budgets: every field there, sane."""

import json
import math
import os

import pytest

from scripts import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    f'--config={os.path.join(ROOT, "configs", "quickstart.py")}',
    '--config.model.hidden=(32,)',
    '--config.model.latent_dim=4',
    '--config.train.batch_size=50',
    '--config.eval.importance_batch_size=2',
    '--config.eval.importance_chunk_size=10',
    '--config.logging.tensorboard=False',
    '--repeats=2',
    '--seconds=0.5',
    '--ll_num_samples=20',
    '--ll_num_images=8',
    '--matmul_sizes=64',
]


def positive_finite(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool) and (
      math.isfinite(value) and value > 0)


def test_benchmark_writes_every_field(tmp_path):
  output = str(tmp_path / 'out' / 'results.json')
  benchmark.main(['benchmark'] + TINY + [f'--output={output}', '--compare_seeds=2'])
  with open(output, encoding='utf-8') as f:
    results = json.load(f)

  train = results['train']
  for name in ('overhead_ratio', 'loop_vs_library_step_ratio', 'step_ratio',
               'roofline_images_per_sec',
               'loop_fraction_of_roofline', 'library_step_fraction_of_roofline',
               'bare_fraction_of_roofline', 'loop_fraction_of_layer_shapes_roofline'):
    assert positive_finite(train[name]), name
  for part in ('loop', 'library_step', 'bare'):
    assert positive_finite(train[part]['images_per_sec']), part
    assert positive_finite(train[part]['cores_used']), part
    assert len(train[part]['repeats_images_per_sec']) >= 2, part
    assert all(positive_finite(r) for r in train[part]['repeats_images_per_sec']), part
  for name in ('mean_images_per_sec', 'first_interval_overhead_s'):
    assert positive_finite(train['loop'][name]), name
  assert train['loop']['num_steps'] % train['loop']['log_every_steps'] == 0
  assert len(train['loop']['runs']) == benchmark.LOOP_TURNS

  for name in ('train_step_s', 'train_step_trace_lower_s', 'train_step_xla_compile_s',
               'elbo_eval_s', 'log_likelihood_s', 'bare_step_s'):
    assert positive_finite(results['compile_s'][name]), name

  startup = results['startup']
  assert positive_finite(startup['cold_s']) and positive_finite(startup['warm_s'])
  assert startup['warm_s'] < startup['cold_s']  # The compiled programs were read back.

  ck = results['checkpoint']
  for kind in ('verified', 'unverified'):
    for name in ('save_call_s', 'save_committed_s', 'restore_s'):
      assert positive_finite(ck[kind][name]), (kind, name)
      assert positive_finite(ck['ratios'][name]), name
  assert positive_finite(ck['state_mib'])

  ll = results['log_likelihood']
  assert ll['num_samples'] == 20 and ll['num_images'] > 0
  for name in ('images_per_sec', 'minutes_for_10000_images', 'fraction_of_peak', 'cores_used'):
    assert positive_finite(ll[name]), name
  assert math.isfinite(ll['mean_log_px']) and ll['mean_log_px'] < 0
  assert positive_finite(results['elbo_eval']['images_per_sec'])

  matmul = results['matmul']
  assert positive_finite(matmul['peak_gflops'])
  assert [s['m'] for s in matmul['shapes'] if s['role'] == 'square'] == [64]
  assert matmul['peak_gflops'] == max(s['gflops'] for s in matmul['shapes'])
  assert positive_finite(matmul['layer_shapes_images_per_sec'])

  flops = results['flops']
  # 784-32-4 MLP VAE: encoder 784*32 + 32*8, decoder 4*32 + 32*784, 2 FLOPs per multiply-add.
  assert flops['forward_per_image'] == 2 * (784 * 32 + 32 * 8 + 4 * 32 + 32 * 784)
  assert flops['train_step_per_image'] == 3 * flops['forward_per_image']
  # XLA counts the elementwise work too, and skips the input gradient of the first layer.
  assert 0.5 < flops['xla_cost_analysis_train_step_per_image'] / flops['train_step_per_image'] < 2

  seeds = results['seeds']
  assert seeds['num_seeds'] == 2
  for name in ('separate_images_per_sec', 'vmapped_images_per_sec', 'speedup',
               'separate_setup_and_first_call_s', 'vmapped_setup_and_first_call_s'):
    assert positive_finite(seeds[name]), name
  assert seeds['speedup'] == seeds['vmapped_images_per_sec'] / seeds['separate_images_per_sec']

  memory = results['memory']
  assert positive_finite(memory['peak_maxrss_mib'])
  assert memory['peak_maxrss_mib'] >= memory['maxrss_mib_after_data']
  assert positive_finite(results['data_load_s'])
  assert len(results['machine']['loadavg_end']) == 3
  assert results['config']['model']['hidden'] == [32]


def test_help_lists_the_flags_and_exits_zero(capsys):
  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(['benchmark', '--help'])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith('python -m scripts.benchmark --config=configs/benchmark.py')
  for flag in ('--repeats', '--seconds', '--startup', '--compare_seeds'):
    assert flag in out, flag

