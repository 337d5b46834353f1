"""Where examples come from, by index: TFDS splits, a folder of image files, an `.npz`.

A source is what both input paths read (data.py's in-memory loader and stream.py's
grain pipeline): `len(source)` examples, and `source.read(indices)` -> (uint8 images
[n, H, W, C], int32 labels [n] / factors [n, F], or None), each image already in its
final form (the dataset's preprocessing below, then data.finish's binarisation and
quantisation). Reading the same indices gives the same bytes on either path, which
is what makes a streamed run's batches equal to an in-memory run's.

Sources open their files lazily and drop the open handles when pickled, so grain
can send them to its worker processes, where they open their own.

Preprocessing as the papers define it (`decode`):
  celeb_a       NVAE's (and Larsen et al.'s) crop: the box (15, 40, 163, 188), a
                148x148 square of the 178x218 aligned face, then a bilinear resize
                to 64x64 (torchvision's Resize on a PIL image).
  imagenet32/64 Chrabaszcz et al.'s downsampled ImageNet as TFDS stores it (already
                32x32 / 64x64; anything else is box-resized to that size).
  omniglot      28x28 grey, strokes bright on black as in Burda et al.'s IWAE data:
                the first channel inverted, then box-resized from 105x105, so the
                pixel is the stroke's coverage (dynamically binarised by default).
  svhn          TFDS's svhn_cropped, 32x32 digits as stored.
"""

import dataclasses
import logging
import os
import zipfile
from typing import Optional

import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
CELEB_A_BOX = (15, 40, 178 - 15, 218 - 30)  # (left, top, right, bottom): 148x148.


class SourceError(Exception):
  """Data that cannot be read; the message names the file (and the example)."""


# --- Preprocessing of one TFDS record's image -----------------------------------

def _pil(array: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  array = np.asarray(array, np.uint8)
  return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _to_hwc(image) -> np.ndarray:
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def celeb_a_64(image: np.ndarray) -> np.ndarray:
  """NVAE's CelebA 64: crop the 148x148 box CELEB_A_BOX, bilinear resize to 64x64."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return _to_hwc(_pil(image).crop(CELEB_A_BOX).resize((64, 64), Image.BILINEAR))


def box_resize(image: np.ndarray, size: int) -> np.ndarray:
  """A square `size` x `size` version (area averaging); unchanged when it is already."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.uint8)
  if image.shape[:2] == (size, size):
    return _to_hwc(image)
  return _to_hwc(_pil(image).resize((size, size), Image.BOX))


def omniglot_28(image: np.ndarray) -> np.ndarray:
  """105x105 black-on-white -> 28x28 grey, strokes bright: their coverage of each pixel."""
  grey = 255 - np.asarray(image, np.uint8)[..., :1]
  return box_resize(grey, 28)


# Our dataset name -> (TFDS name, preprocessing of one image or None, and its name: the
# decoded-split cache (data.py) keeps entries of one preprocessing apart from another's,
# so change the name with the function).
TFDS_DATASETS = {
    'binarized_mnist': ('binarized_mnist', None, ''),
    'mnist': ('mnist', None, ''),
    'fashion_mnist': ('fashion_mnist', None, ''),
    'cifar10': ('cifar10', None, ''),
    'dsprites': ('dsprites', None, ''),
    'shapes3d': ('shapes3d', None, ''),
    'svhn': ('svhn_cropped', None, ''),
    'celeb_a': ('celeb_a', celeb_a_64, 'crop (15, 40, 163, 188), bilinear 64x64'),
    'imagenet32': ('downsampled_imagenet/32x32', lambda image: box_resize(image, 32),
                   'box 32x32'),
    'imagenet64': ('downsampled_imagenet/64x64', lambda image: box_resize(image, 64),
                   'box 64x64'),
    'omniglot': ('omniglot', omniglot_28, 'first channel inverted, box 28x28'),
}


def tfds_name(name: str) -> str:
  return TFDS_DATASETS[name][0]


def preprocessing(name: str) -> str:
  """The name of dataset `name`'s preprocessing ('' for none)."""
  return TFDS_DATASETS[name][2] if name in TFDS_DATASETS else ''


def decode(name: str, image) -> np.ndarray:
  """One record's image -> uint8 [H, W, C] in the dataset's final size."""
  preprocess = TFDS_DATASETS[name][1] if name in TFDS_DATASETS else None
  return preprocess(image) if preprocess is not None else _to_hwc(image)


# --- Sources ----------------------------------------------------------------------

@dataclasses.dataclass
class Source:
  """Examples by index. `finish(images) -> images` (data.finish with the run's
  binarisation and bits) is applied to every block read."""
  finish: Optional[object] = dataclasses.field(default=None, repr=False)

  def __len__(self) -> int:
    raise NotImplementedError

  def _read(self, indices) -> tuple:
    raise NotImplementedError

  def read(self, indices) -> tuple:
    images, labels = self._read([int(i) for i in indices])
    if self.finish is not None:
      images = self.finish(images)
    return images, labels

  def __getstate__(self):
    # Open files and readers stay in the process that opened them.
    return {k: v for k, v in self.__dict__.items() if not k.startswith('_open')}


@dataclasses.dataclass
class TfdsSource(Source):
  """A prepared TFDS split read through `as_data_source` (ArrayRecord)."""
  name: str = ''
  data_dir: str = ''
  split: str = ''
  label_keys: tuple = ()
  length: int = 0

  def _source(self):
    if getattr(self, '_open_source', None) is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._open_source = tfds.builder(tfds_name(self.name), data_dir=self.data_dir
                                       ).as_data_source(split=self.split)
    return self._open_source

  def __len__(self):
    return self.length

  def _read(self, indices):
    source = self._source()
    try:  # One bulk read of the block: 2.5x faster than record by record.
      records = source.__getitems__(list(indices))
    except TypeError:  # tfds.testing.mock_data's __getitems__ is not bound to its source.
      records = [source[i] for i in indices]
    images = np.stack([decode(self.name, r['image']) for r in records])
    if not self.label_keys:
      return images, None
    labels = np.asarray([[r[k] for k in self.label_keys] for r in records], np.int32)
    return images, (labels[:, 0] if self.label_keys == ('label',) else labels)


_GREY_MODES = ('1', 'L', 'LA')
_COLOUR_MODES = ('P', 'PA', 'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV')


def _channels(path: str, mode: str) -> int:
  """1 for 8-bit grey files, 3 for colour ones; 16-bit and float files are refused (PIL
  would clip them to 8 bits, not scale them)."""
  if mode in _GREY_MODES:
    return 1
  if mode in _COLOUR_MODES:
    return 3
  raise SourceError(f'{path}: PIL mode {mode!r} (16-bit or floating-point pixels) is not read; '
                    'convert the images to 8-bit grey or RGB')


@dataclasses.dataclass
class FolderSource(Source):
  """Image files under `root` (sorted, subfolders included), all of one size.

  8-bit grey images (PIL modes 1, L, LA) give one channel, colour ones (RGB, RGBA,
  palette, ...) three, alpha dropped; the first file decides, and every file is
  converted to that. 16-bit and float files are refused with their name. Headers are read
  when the source is opened: a file whose header cannot be read, or whose size
  differs from the first one's, stops the run with its name, unless
  `skip_unreadable` (then unreadable files are left out and counted; a size that
  differs still stops it).
  """
  root: str = ''
  skip_unreadable: bool = False
  files: tuple = ()
  shape: tuple = ()
  skipped: int = 0

  @classmethod
  def open(cls, root: str, skip_unreadable: bool = False, finish=None) -> 'FolderSource':
    from PIL import Image  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(root):
      raise SourceError(f'{root}: no such folder')
    paths = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
      raise SourceError(f'{root}: no image files ({", ".join(IMAGE_EXTENSIONS)}) in it')
    kept, shape, skipped = [], None, 0
    for path in paths:
      try:
        with Image.open(path) as image:
          size, mode = image.size, image.mode
      except Exception as e:  # pylint: disable=broad-except  # PIL's many ways to fail.
        if skip_unreadable:
          skipped += 1
          continue
        raise SourceError(f'{path}: not a readable image ({type(e).__name__}: {e}); remove it, '
                          'or set data.skip_unreadable=True to leave such files out') from None
      channels = _channels(path, mode)
      if shape is None:
        shape, first = (size[1], size[0], channels), path
      elif (size[1], size[0]) != shape[:2]:
        raise SourceError(f'{path}: {size[0]}x{size[1]} pixels, but {first} (the first file) is '
                          f'{shape[1]}x{shape[0]}; every image of a folder must have one size')
      kept.append(path)
    if not kept:
      raise SourceError(f'{root}: none of its {len(paths)} image files can be read')
    if skipped:
      logging.warning('%s: left out %d unreadable image file(s) of %d (data.skip_unreadable).',
                      root, skipped, len(paths))
    return cls(finish=finish, root=root, skip_unreadable=skip_unreadable, files=tuple(kept),
               shape=shape, skipped=skipped)

  def __len__(self):
    return len(self.files)

  def _read(self, indices):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    mode = 'L' if self.shape[-1] == 1 else 'RGB'
    out = np.empty((len(indices),) + tuple(self.shape), np.uint8)
    for row, i in enumerate(indices):
      path = self.files[i]
      try:
        with Image.open(path) as image:
          array = np.asarray(image.convert(mode), np.uint8)
      except Exception as e:  # pylint: disable=broad-except
        raise SourceError(f'{path}: cannot be decoded ({type(e).__name__}: {e})') from None
      if array.shape[:2] != tuple(self.shape[:2]):
        raise SourceError(f'{path}: {array.shape[1]}x{array.shape[0]} pixels, expected '
                          f'{self.shape[1]}x{self.shape[0]}')
      out[row] = array.reshape(self.shape)
    return out, None


def npz_header(path: str, key: str) -> tuple:
  """(shape, dtype) of array `key` of the .npz at `path`, read from its header only."""
  if not os.path.isfile(path):
    raise SourceError(f'{path}: no such file')
  try:
    with zipfile.ZipFile(path) as archive:
      names = [n[:-len('.npy')] for n in archive.namelist() if n.endswith('.npy')]
      if key not in names:
        raise SourceError(f'{path}: has no array {key!r} (it has {", ".join(sorted(names)) or "none"})'
                          '; name the splits with data.train_split / data.eval_split')
      with archive.open(key + '.npy') as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise SourceError(f'{path}: not a readable .npz ({type(e).__name__}: {e})') from None
  return tuple(shape), np.dtype(dtype)


def _memmap_npz_member(path: str, key: str):
  """A read-only np.memmap of member KEY.npy of the .npz at `path` when it is stored
  without compression, else None."""
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo(key + '.npy')
    if info.compress_type != zipfile.ZIP_STORED:
      return None
    with open(path, 'rb') as f:
      f.seek(info.header_offset)
      local = f.read(30)  # The local file header: its name and extra field lengths at 26.
      name_length = int.from_bytes(local[26:28], 'little')
      extra_length = int.from_bytes(local[28:30], 'little')
      start = info.header_offset + 30 + name_length + extra_length
      f.seek(start)
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, fortran_order, dtype = read_header(f)
      offset = f.tell()
  if fortran_order:
    return None
  return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape)


def check_npz_array(path: str, key: str, shape: tuple, dtype) -> tuple:
  """The [H, W, C] of a valid images array, else SourceError naming file and array."""
  if dtype != np.uint8:
    raise SourceError(f'{path}: array {key!r} is {dtype}, expected uint8 pixel values 0..255')
  if len(shape) == 3:
    shape = shape + (1,)
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise SourceError(f'{path}: array {key!r} has shape {shape}, expected [N, H, W] or '
                      '[N, H, W, C] with C = 1 or 3')
  if shape[0] == 0:
    raise SourceError(f'{path}: array {key!r} has no images')
  return shape[1:]


@dataclasses.dataclass
class NpzSource(Source):
  """Array `key` of an .npz file: uint8 [N, H, W] or [N, H, W, C], C in {1, 3}."""
  path: str = ''
  key: str = ''
  shape: tuple = ()
  length: int = 0

  @classmethod
  def open(cls, path: str, key: str, finish=None) -> 'NpzSource':
    shape, dtype = npz_header(path, key)
    image_shape = check_npz_array(path, key, shape, dtype)
    return cls(finish=finish, path=path, key=key, shape=image_shape, length=shape[0])

  def _array(self):
    """The array, memory-mapped when the member is stored uncompressed (np.savez), so a
    streamed run (and each grain worker) reads only the rows it asks for; an
    np.savez_compressed member is read whole, once per process."""
    if getattr(self, '_open_array', None) is None:
      array = _memmap_npz_member(self.path, self.key)
      if array is None:
        with np.load(self.path, allow_pickle=False) as arrays:
          array = arrays[self.key]
      self._open_array = array.reshape((self.length,) + tuple(self.shape))
    return self._open_array

  def __len__(self):
    return self.length

  def _read(self, indices):
    return self._array()[np.asarray(indices, np.int64)], None
