"""Data parallelism on 8 fake CPU devices matches one device, and resumes on one.

Each run is a subprocess: the device count is fixed when jax starts.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = r'''
import sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from test_train import tiny_config, restored_state
from vae_jax import experiment
from vae_jax import train
workdir, num_steps = sys.argv[1], int(sys.argv[2])
c = tiny_config(train__num_steps=num_steps)
c.train.batch_size, c.eval.batch_size = 48, 96
exp = experiment.build_experiment(c)
trainer = train.Trainer(c, workdir)
state = experiment.init_state(exp)
indices = np.zeros((5, 48), np.int32)
from vae_jax import sharding
hlo = trainer.step_fn.lower(sharding.put_replicated(state, trainer.mesh), trainer.train_images,
                            sharding.put_batch(indices, trainer.mesh, 1), exp.keys['train']).compile().as_text()
trainer.close()
train.train_and_evaluate(c, workdir)
_, st, _ = restored_state(workdir, c)
np.savez(workdir + '/params.npz', *[np.asarray(x) for x in jax.tree.leaves(st['params'])])
print('DEVICES', jax.device_count(), 'ALLREDUCE', 'all-reduce' in hlo)
'''


def run(workdir, num_steps, devices):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run(
      [sys.executable, '-c', SCRIPT.format(tests=os.path.join(ROOT, 'tests')), str(workdir),
       str(num_steps)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def params(workdir):
  with np.load(os.path.join(workdir, 'params.npz')) as f:
    return [f[k] for k in f.files]


@pytest.mark.slow
def test_eight_devices_match_one_and_resume_on_one(tmp_path):
  one, eight = tmp_path / 'one', tmp_path / 'eight'
  assert 'DEVICES 1 ALLREDUCE False' in run(one, 20, 1)
  # Batches are split over the 8 devices and gradients all-reduced.
  assert 'DEVICES 8 ALLREDUCE True' in run(eight, 20, 8)
  for a, b in zip(params(one), params(eight)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # A checkpoint written on 8 devices resumes on 1 and carries on.
  run(eight, 30, 1)
  run(one, 30, 1)
  for a, b in zip(params(one), params(eight)):
    np.testing.assert_allclose(a, b, atol=1e-5)


EVAL_SCRIPT = r'''
import json, sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from test_train import tiny_config
from vae_jax import evaluate, experiment
exp = experiment.build_experiment(tiny_config())
params = experiment.init_state(exp).params
images = np.asarray(exp.dataset.eval[:21], np.float32) / 255.0  # 21: padding on 8 devices.
key = exp.keys['eval']
seen = set()
real = evaluate._log_likelihood_batch
def spy(model, params, x, *args, **kwargs):
  out = real(model, params, x, *args, **kwargs)
  seen.add(len(out.sharding.device_set))
  return out
evaluate._log_likelihood_batch = spy
ll = evaluate.evaluate_log_likelihood(exp.model, params, images, key, num_samples=50,
                                      batch_size=2, chunk_size=20, progress=False)
elbo = evaluate.evaluate_elbo(exp.model, params, images, key, batch_size=8)
units = evaluate.active_units(exp.model, params, images, batch_size=8)
print('RESULT', json.dumps(dict(devices=jax.device_count(), used=sorted(seen), log_px=ll['log_px'],
                                num_images=ll['num_images'], elbo=elbo['elbo'],
                                units=units['active_units'])))
'''


def evaluate_on(devices):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run(
      [sys.executable, '-c', EVAL_SCRIPT.format(tests=os.path.join(ROOT, 'tests'))],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


@pytest.mark.slow
def test_evaluation_is_sharded_over_eight_devices_and_matches_one():
  one, eight = evaluate_on(1), evaluate_on(8)
  assert one['used'] == [1] and eight['used'] == [8]  # Every device evaluates its share.
  assert one['num_images'] == eight['num_images'] == 21
  np.testing.assert_allclose(eight['log_px'], one['log_px'], rtol=1e-5)
  np.testing.assert_allclose(eight['elbo'], one['elbo'], rtol=1e-5)
  assert eight['units'] == one['units']
