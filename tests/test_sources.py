"""Preprocessing as the papers define it, n-bit data, and a user's own folder / .npz."""

import logging

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vae_jax import config as config_lib
from vae_jax import data
from vae_jax import sources


def user_config(name, path, binarization='none', **overrides):
  c = config_lib.default_config().data
  c.name, c.path, c.binarization = name, str(path), binarization
  for field, value in overrides.items():
    c[field] = value
  return c


# --- Preprocessing --------------------------------------------------------------

def test_celeb_a_is_nvae_s_148_crop_resized_to_64():
  image = np.zeros((218, 178, 3), np.uint8)
  left, top, right, bottom = sources.CELEB_A_BOX
  assert (right - left, bottom - top) == (148, 148)
  image[top:bottom, left:right] = (200, 100, 50)  # Inside the crop: one colour.
  out = sources.celeb_a_64(image)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.broadcast_to([200, 100, 50], (64, 64, 3)))
  image[top + 74:bottom, left:right] = 0  # The lower half of the crop: the lower half out.
  out = sources.celeb_a_64(image)
  assert (out[:31] == (200, 100, 50)).all() and (out[33:] == 0).all()


def test_omniglot_is_28x28_grey_with_bright_strokes_covering_their_pixels():
  page = np.full((105, 105, 3), 255, np.uint8)  # White paper.
  out = sources.omniglot_28(page)
  assert out.shape == (28, 28, 1) and out.dtype == np.uint8 and out.max() == 0
  page[:, :, :] = 0  # All ink.
  assert (sources.omniglot_28(page) == 255).all()
  page[:] = 255
  page[:, :15] = 0  # A stroke covering 15 / 3.75 = 4 output columns.
  out = sources.omniglot_28(page)[..., 0]
  assert (out[:, :4] == 255).all() and (out[:, 4:] == 0).all()


def test_box_resize_keeps_an_image_of_the_size_and_resizes_others():
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(sources.box_resize(image, 32), image)
  assert sources.box_resize(image, 16).shape == (16, 16, 3)
  np.testing.assert_array_equal(sources.box_resize(np.full((41, 8, 3), 7, np.uint8), 32), 7)


@pytest.mark.parametrize('name,shape,binarization,labelled', [
    ('celeb_a', (64, 64, 3), 'none', False),
    ('imagenet32', (32, 32, 3), 'none', False),
    ('imagenet64', (64, 64, 3), 'none', False),
    ('svhn', (32, 32, 3), 'none', True),
    ('omniglot', (28, 28, 1), 'dynamic', False),
])
def test_each_tfds_dataset_in_memory_through_mock_data(tmp_path, name, shape, binarization,
                                                       labelled):
  c = config_lib.default_config().data
  c.name, c.binarization, c.data_dir, c.download = name, binarization, str(tmp_path), False
  c.train_split = c.eval_split = 'train'
  c.train_split = 'train'
  assert data.input_mode(c) == ('stream' if name == 'imagenet64' else 'memory')  # 'auto'.
  c.input = 'memory'  # imagenet64 has 15.7 GB of training images; the mock has 6.
  data.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
      ds = data.load(c)
  finally:
    data.clear_cache()
  assert not ds.streamed and ds.image_shape == shape == data.IMAGE_SHAPES[name]
  assert ds.train.shape == (6,) + shape and ds.train.dtype == np.uint8
  assert ds.train.max() > 1 and ds.levels == (2 if binarization == 'dynamic' else 256)
  assert (ds.train_labels is not None) == labelled and (ds.num_classes == 10) == labelled


def test_a_dataset_that_is_not_prepared_names_the_tfds_command(tmp_path):
  c = config_lib.default_config().data
  c.name, c.binarization, c.data_dir, c.download = 'imagenet32', 'none', str(tmp_path), False
  with pytest.raises(data.DatasetError) as error:
    data.load(c)
  message = str(error.value)
  assert 'is not prepared' in message
  assert f'tfds build downsampled_imagenet/32x32 --data_dir={tmp_path}' in message


# --- n-bit data -------------------------------------------------------------------

def test_five_bit_quantisation_keeps_the_top_bits_and_scales_by_its_levels():
  values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  five = data.finish_images(values, 'npz', 'none', bits=5)
  np.testing.assert_array_equal(five, values >> 3)
  assert five.max() == 31 and data.levels('none', 5) == 32
  x = np.asarray(data.to_float(five, 'none', bits=5))
  assert x.min() == 0.0 and x.max() == 1.0
  np.testing.assert_allclose(x, (values >> 3) / 31.0, rtol=1e-6)
  noisy = np.asarray(data.to_float(five, 'none', jax.random.key(0), dequantize=True, bits=5))
  np.testing.assert_array_equal(np.floor(noisy * 32), five)  # Each value fills its bin.


def test_eight_bits_is_what_it_always_was():
  values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  np.testing.assert_array_equal(np.asarray(data.to_float(values, 'none')),
                                np.asarray(data.to_float(values, 'none', bits=8)))
  np.testing.assert_array_equal(data.finish_images(values, 'npz', 'none'), values)


@pytest.mark.parametrize('overrides,field', [
    (dict(name='npz', binarization='none', bits=5, likelihood='logistic_mixture'), 'data.bits'),
    (dict(name='mnist', binarization='dynamic', bits=5, likelihood='bernoulli'), 'data.bits'),
    (dict(name='mnist', binarization='none', bits=0, likelihood='gaussian'), 'data.bits'),
    (dict(name='cifar10', binarization='none', path='/x.npz', likelihood='gaussian'),
     'data.path'),
    (dict(name='folder', binarization='none', likelihood='gaussian'), 'data.path'),
    (dict(name='embedded_mnist', binarization='dynamic', input='stream',
          likelihood='bernoulli'), 'data.input'),
    (dict(name='mnist', binarization='dynamic', input='disk', likelihood='bernoulli'),
     'data.input'),
    (dict(name='mnist', binarization='dynamic', workers=-1, likelihood='bernoulli'),
     'data.workers'),
    (dict(name='mnist', binarization='dynamic', skip_unreadable=True, likelihood='bernoulli'),
     'data.skip_unreadable'),
])
def test_input_fields_are_checked_naming_the_field(tmp_path, overrides, field):
  c = config_lib.default_config()
  npz = tmp_path / 'd.npz'
  np.savez(npz, train=np.zeros((10, 8, 8), np.uint8), test=np.zeros((10, 8, 8), np.uint8))
  c.model.likelihood = overrides.pop('likelihood')
  for key, value in overrides.items():
    c.data[key] = value
  if c.data.name == 'npz':
    c.data.path = str(npz)
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}'):
    config_lib.validate(c)


# --- A folder of images -------------------------------------------------------------

def write_images(folder, images, suffix='.png'):
  folder.mkdir(parents=True, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f'{i:03d}{suffix}')


def test_a_folder_loads_in_memory_and_streams_the_same_images(tmp_path):
  rng = np.random.default_rng(0)
  train, test = (rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8) for n in (7, 3))
  write_images(tmp_path / 'train', train)
  write_images(tmp_path / 'test', test)
  c = user_config('folder', tmp_path)
  assert data.image_shape(c) == (12, 10, 3) and data.split_size(c, 'train') == 7
  ds = data.load(c)
  np.testing.assert_array_equal(ds.train, train)
  np.testing.assert_array_equal(ds.eval, test)
  assert ds.train_labels is None and ds.levels == 256
  streamed = data.load(user_config('folder', tmp_path, input='stream'))
  np.testing.assert_array_equal(streamed.train_source.read([6, 0, 3])[0], train[[6, 0, 3]])


def test_a_grey_folder_has_one_channel_and_static_binarisation_thresholds_it(tmp_path):
  grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))[None].repeat(2, 0)
  write_images(tmp_path / 'train', grey)
  write_images(tmp_path / 'test', grey)
  ds = data.load(user_config('folder', tmp_path, binarization='static'))
  assert ds.train.shape == (2, 16, 16, 1)
  np.testing.assert_array_equal(ds.train[..., 0], (grey > 127).astype(np.uint8))


def test_a_folder_with_images_of_mixed_sizes_names_the_file(tmp_path):
  write_images(tmp_path / 'train', [np.zeros((8, 8), np.uint8)] * 3)
  Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / 'train' / '003.png')
  with pytest.raises(data.DatasetError, match=r'config.data.path: .*003\.png: 8x9 pixels.*'
                                              r'000\.png'):
    data.load(user_config('folder', tmp_path))


def test_an_unreadable_image_stops_with_its_name_or_is_skipped_and_counted(tmp_path, caplog):
  write_images(tmp_path / 'train', [np.full((8, 8), 9, np.uint8)] * 4)
  write_images(tmp_path / 'test', [np.full((8, 8), 9, np.uint8)] * 2)
  (tmp_path / 'train' / '002.png').write_bytes(b'not an image')
  with pytest.raises(data.DatasetError, match=r'002\.png: not a readable image.*'
                                              'skip_unreadable=True'):
    data.load(user_config('folder', tmp_path))
  with caplog.at_level(logging.WARNING):
    ds = data.load(user_config('folder', tmp_path, skip_unreadable=True))
  assert ds.num_train == 3 and 'left out 1 unreadable image file(s) of 4' in caplog.text


def test_a_missing_split_folder_or_an_empty_one_is_named(tmp_path):
  with pytest.raises(data.DatasetError, match=f'{tmp_path / "train"}: no such folder'):
    data.load(user_config('folder', tmp_path))
  (tmp_path / 'train').mkdir()
  (tmp_path / 'train' / 'notes.txt').write_text('x')
  with pytest.raises(data.DatasetError, match='no image files'):
    data.load(user_config('folder', tmp_path))


# --- An .npz of arrays ---------------------------------------------------------------

def test_an_npz_of_uint8_arrays_loads_grey_and_colour(tmp_path):
  rng = np.random.default_rng(1)
  for shape, channels in (((5, 6, 7), 1), ((5, 6, 7, 3), 3)):
    arrays = {split: rng.integers(0, 256, shape, dtype=np.uint8) for split in ('train', 'test')}
    np.savez(tmp_path / 'd.npz', **arrays)
    c = user_config('npz', tmp_path / 'd.npz')
    assert data.image_shape(c) == (6, 7, channels) and data.split_size(c, 'test') == 5
    ds = data.load(c)
    np.testing.assert_array_equal(ds.train, arrays['train'].reshape(5, 6, 7, channels))


@pytest.mark.parametrize('array,message', [
    (np.zeros((4, 8, 8), np.float32), "array 'train' is float32, expected uint8"),
    (np.zeros((4, 8), np.uint8), r"array 'train' has shape \(4, 8\)"),
    (np.zeros((4, 8, 8, 2), np.uint8), r"array 'train' has shape \(4, 8, 8, 2\)"),
    (np.zeros((0, 8, 8), np.uint8), "array 'train' has no images"),
])
def test_an_npz_with_the_wrong_dtype_or_rank_names_file_and_array(tmp_path, array, message):
  np.savez(tmp_path / 'd.npz', train=array, test=np.zeros((4, 8, 8), np.uint8))
  with pytest.raises(data.DatasetError, match=f'config.data.path: .*d.npz: {message}'):
    data.load(user_config('npz', tmp_path / 'd.npz'))


def test_an_npz_without_the_split_lists_what_it_has(tmp_path):
  np.savez(tmp_path / 'd.npz', images=np.zeros((4, 8, 8), np.uint8))
  with pytest.raises(data.DatasetError, match=r"has no array 'train' \(it has images\)"):
    data.load(user_config('npz', tmp_path / 'd.npz'))
  with pytest.raises(data.DatasetError, match='no such file'):
    data.load(user_config('npz', tmp_path / 'missing.npz'))
  (tmp_path / 'bad.npz').write_bytes(b'garbage')
  with pytest.raises(data.DatasetError, match='not a readable .npz'):
    data.load(user_config('npz', tmp_path / 'bad.npz'))


def test_bits_apply_to_the_embedded_digits_too():
  c = config_lib.default_config().data
  c.binarization, c.bits = 'none', 5
  ds = data.load(c)
  assert ds.train.max() == 31 and ds.levels == 32
  assert float(np.asarray(data.fixed_eval_images(ds, 0)).max()) == 1.0


def test_sixteen_bit_images_are_refused_with_their_name(tmp_path):
  write_images(tmp_path / 'train', [np.zeros((8, 8), np.uint8)])
  Image.fromarray(np.full((8, 8), 60000, np.uint16)).save(tmp_path / 'train' / '001.png')
  with pytest.raises(data.DatasetError, match=r"001\.png: PIL mode 'I;16'.*8-bit"):
    data.load(user_config('folder', tmp_path))


def test_an_uncompressed_npz_is_memory_mapped_and_a_compressed_one_read(tmp_path):
  images = np.random.default_rng(2).integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
  np.savez(tmp_path / 'stored.npz', train=images)
  np.savez_compressed(tmp_path / 'compressed.npz', train=images)
  for name, mapped in (('stored', True), ('compressed', False)):
    source = sources.NpzSource.open(str(tmp_path / f'{name}.npz'), 'train')
    assert isinstance(source._array(), np.memmap) == mapped  # pylint: disable=protected-access
    np.testing.assert_array_equal(source.read([5, 0, 2])[0], images[[5, 0, 2]])
