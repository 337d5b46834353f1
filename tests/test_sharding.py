"""Data parallelism on 8 fake CPU devices matches one device, and resumes on one.

Each run is a subprocess: the device count is fixed when jax starts.
"""

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
from vae_jax import train
workdir, num_steps = sys.argv[1], int(sys.argv[2])
c = tiny_config(train__num_steps=num_steps)
c.train.batch_size, c.eval.batch_size = 48, 96
exp = train.build_experiment(c)
trainer = train.Trainer(c, workdir)
state = train.init_state(exp)
indices = np.zeros((5, 48), np.int32)
from vae_jax import sharding
hlo = trainer.step_fn.lower(sharding.put_replicated(state, trainer.mesh), trainer.train_images,
                            sharding.put_batch(indices, trainer.mesh, 1), exp.keys['train']).compile().as_text()
trainer.ckpt.close(); trainer.writer.close()
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
