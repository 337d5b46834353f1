"""The streaming input path (grain): same batches as in memory, resumable, its errors.

Data the tests write themselves: an .npz of digits (embedded MNIST's, so a model has
something to learn) and TFDS mock data; nothing here needs a prepared dataset.
"""

import dataclasses
import json
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import sources
from vae_jax import stream as stream_lib
from vae_jax import train

from test_train import assert_trees_equal, restored_state, tiny_config


@pytest.fixture(scope='module')
def digits_npz(tmp_path_factory):
  """An .npz with embedded MNIST's 4,500 / 500 digits as its 'train' / 'test' arrays."""
  ds = data.load(tiny_config().data)
  path = tmp_path_factory.mktemp('npz') / 'digits.npz'
  np.savez(path, train=np.asarray(ds.train)[..., 0], test=np.asarray(ds.eval))
  return str(path)


def npz_config(path, input_mode, **overrides):
  c = tiny_config(**overrides)
  c.data.name = 'npz'
  c.data.path = path
  c.data.input = input_mode
  return c


def final_params(workdir, config):
  _, state, _ = restored_state(str(workdir), config)
  return state['params']


def test_stream_and_memory_train_the_same_params(tmp_path, digits_npz):
  # 40 steps of batch 50 over 4,500 digits: the order is data.batch_indices' in both.
  params = {}
  for mode in ('memory', 'stream'):
    config = npz_config(digits_npz, mode)
    assert data.input_mode(config.data) == mode
    train.train_and_evaluate(config, str(tmp_path / mode))
    params[mode] = final_params(tmp_path / mode, config)
  assert_trees_equal(params['memory'], params['stream'])


def test_stream_state_is_saved_in_every_checkpoint(tmp_path, digits_npz):
  config = npz_config(digits_npz, 'stream')
  train.train_and_evaluate(config, str(tmp_path))
  for step in (20, 40):
    _, _, metadata = restored_state(str(tmp_path), config, step=step)
    saved = metadata[train.STREAM_METADATA]
    assert saved['next_step'] == step and saved['process_count'] == 1
    assert saved['grain'] == {'next_index': step}  # grain's own state, from base 0.


def test_two_seeds_stream_each_its_own_order(tmp_path, digits_npz):
  memory, streamed = (npz_config(digits_npz, mode, train__num_seeds=2, train__num_steps=20)
                      for mode in ('memory', 'stream'))
  train.train_and_evaluate(memory, str(tmp_path / 'memory'))
  train.train_and_evaluate(streamed, str(tmp_path / 'stream'))
  for seed in (memory.seed, memory.seed + 1):
    workdirs = [tmp_path / mode / f'seed_{seed}' for mode in ('memory', 'stream')]
    assert all(w.exists() for w in workdirs), os.listdir(tmp_path / 'memory')
    one = npz_config(digits_npz, 'memory', train__num_steps=20)
    one.seed = seed
    assert_trees_equal(*(final_params(w, one) for w in workdirs))


def test_auto_streams_above_the_memory_limit(digits_npz):
  config = npz_config(digits_npz, 'auto')
  assert data.input_mode(config.data) == 'memory'  # 4,500 x 784 bytes: 3.5 MB.
  config.data.memory_limit_gb = 3e-3  # 3.2 MB.
  assert data.input_mode(config.data) == 'stream'
  ds = data.load(config.data)
  assert ds.streamed and ds.train is None and ds.num_train == 4500
  assert ds.image_shape == (28, 28, 1) and ds.eval.shape == (500, 28, 28, 1)


def test_stream_reads_each_process_rows_disjoint_and_covering_the_epoch(digits_npz):
  source = data.load(npz_config(digits_npz, 'stream').data).train_source
  batch, steps = 50, 4500 // 50
  seen = []
  for rows in ((0, 25), (25, 50)):  # Two processes' halves of every batch.
    s = stream_lib.Stream(source, seeds=(0,), batch_size=batch, rows=rows, num_steps=steps,
                          first_step=0)
    images, _ = s.take(steps)
    s.close()
    assert images.shape == (1, steps, 25, 28, 28, 1)
    seen.append(np.stack([data.batch_indices(0, t, batch, 4500)[rows[0]:rows[1]]
                          for t in range(steps)]))
    full = source.read(seen[-1].reshape(-1))[0].reshape(images.shape[1:])
    np.testing.assert_array_equal(images[0], full)
  both = np.concatenate([s.reshape(-1) for s in seen])
  assert len(np.unique(both)) == len(both) == 4500  # Disjoint; together the epoch.


@pytest.mark.parametrize('workers', [0, 1])
def test_stream_resumes_from_its_saved_state(digits_npz, workers):
  source = data.load(npz_config(digits_npz, 'stream').data).train_source
  kwargs = dict(seeds=(3,), batch_size=50, rows=(0, 50), num_steps=30, workers=workers)
  whole = stream_lib.Stream(source, first_step=0, **kwargs)
  expected, _ = whole.take(12)
  whole.close()
  first = stream_lib.Stream(source, first_step=0, **kwargs)
  first.take(5)
  saved = json.loads(json.dumps(first.state()))  # As a checkpoint's metadata holds it.
  first.close()
  resumed = stream_lib.Stream(source, first_step=5, saved=saved, **kwargs)
  assert resumed.note == ''  # grain's state was restored, not replaced.
  rest, _ = resumed.take(7)
  resumed.close()
  np.testing.assert_array_equal(rest, expected[:, 5:])
  moved = stream_lib.Stream(source, first_step=5, saved=dict(saved, process_count=2), **kwargs)
  assert 'saved by 2 process(es)' in moved.note
  np.testing.assert_array_equal(moved.take(7)[0], expected[:, 5:])
  moved.close()


def test_a_source_error_in_a_worker_ends_the_stream_with_it(tmp_path):
  folder = tmp_path / 'images' / 'train'
  folder.mkdir(parents=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in range(8):
    Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(folder / f'{i}.png')
  c = config_lib.default_config().data
  c.name, c.path, c.binarization = 'folder', str(tmp_path / 'images'), 'none'
  source = data._user_source(c, 'train')  # pylint: disable=protected-access
  (folder / '5.png').write_bytes((folder / '5.png').read_bytes()[:40])  # Truncated later.
  s = stream_lib.Stream(source, seeds=(0,), batch_size=8, rows=(0, 8), num_steps=3,
                        first_step=0, workers=1)
  start = time.time()
  with pytest.raises(data.DatasetError, match=r'step 0 failed: .*5\.png'):
    s.take(1)
  s.close()
  assert time.time() - start < 60


@pytest.mark.parametrize('name,shape,labelled', [
    ('svhn', (32, 32, 3), True),
    ('celeb_a', (64, 64, 3), False),
    ('omniglot', (28, 28, 1), False),
])
def test_tfds_datasets_stream_through_mock_data(tmp_path, name, shape, labelled):
  c = tiny_config(train__batch_size=4, train__num_steps=6, train__steps_per_call=3,
                  train__eval_every_steps=6, train__checkpoint_every_steps=6,
                  train__log_every_steps=3)
  c.data.name, c.data.input, c.data.data_dir, c.data.download = name, 'stream', str(tmp_path), False
  c.data.binarization = 'dynamic' if name == 'omniglot' else 'none'
  c.model.likelihood = 'bernoulli' if name == 'omniglot' else 'gaussian'
  c.eval.batch_size = 8
  data.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
      ds = data.load(c.data)
      assert ds.streamed and ds.image_shape == shape and ds.num_train == 16
      assert (ds.num_classes == 10) == labelled
      train.train_and_evaluate(c, str(tmp_path / 'run'))
  finally:
    data.clear_cache()
  lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
  assert any(json.loads(line).get('step') == 6 for line in lines)


def test_a_saved_state_that_does_not_restore_starts_at_the_step_with_a_note(digits_npz):
  source = data.load(npz_config(digits_npz, 'stream').data).train_source
  kwargs = dict(seeds=(3,), batch_size=50, rows=(0, 50), num_steps=30)
  whole = stream_lib.Stream(source, first_step=0, **kwargs)
  expected, _ = whole.take(8)
  whole.close()
  saved = {'next_step': 5, 'base': 0, 'process_count': 1, 'workers': 0, 'grain': {'x': 1}}
  for bad in (saved, 'not a dict'):
    s = stream_lib.Stream(source, first_step=5, saved=bad, **kwargs)
    assert 'starts at step 5' in s.note
    np.testing.assert_array_equal(s.take(3)[0], expected[:, 5:])
    s.close()


@dataclasses.dataclass
class _DyingSource(sources.NpzSource):
  """An .npz source whose reads kill the process they run in, unless it is `parent`."""
  parent: int = 0

  def _read(self, indices):
    if os.getpid() != self.parent:
      os._exit(3)  # pylint: disable=protected-access  # A worker that dies without a word.
    return super()._read(indices)


def test_a_worker_that_dies_ends_the_stream_with_its_exit_code(digits_npz):
  opened = sources.NpzSource.open(digits_npz, 'train')
  source = _DyingSource(path=opened.path, key=opened.key, shape=opened.shape,
                        length=opened.length, parent=os.getpid())
  s = stream_lib.Stream(source, seeds=(0,), batch_size=50, rows=(0, 50), num_steps=5,
                        first_step=0, workers=1)
  start = time.time()
  with pytest.raises(data.DatasetError, match='step 0 failed: .*exit code 3'):
    s.take(1)
  s.close()
  assert time.time() - start < 60
