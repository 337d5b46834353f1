"""The streaming input path: each step's batch read by grain, each process its own rows.

A grain `MapDataset` over the global step numbers maps step s to this process's rows
of that step's batch: `data.batch_indices(seed, s, B, N)` (the in-memory path's
order, a pure function of the seed and the epoch) sliced to the rows this
process's devices hold, read from a `sources.Source` (TFDS ArrayRecord, a folder,
an .npz) and decoded there. Reading and decoding run in grain's threads
(data.workers = 0) or in grain worker processes (data.workers > 0), a few calls
ahead of the step (data.prefetch), so the device does not wait on the files.

So a streamed run trains on exactly the batches of an in-memory run with the same
seed (the tests compare parameters bit for bit), each process reads only its own
examples (disjoint, their union is the epoch less its dropped remainder), and the
position in the stream is the step number. The grain iterator's state is saved in
every checkpoint's metadata (`state()`) and restored with it (`Stream(...,
saved=...)`); a resume with another number of processes or workers, whose grain
state does not apply, starts the stream at the checkpoint's step instead, which
gives the same batches, and says so.
"""

import dataclasses
import logging
import sys
from typing import Optional

import numpy as np

from vae_jax import data
from vae_jax import logs as vlog
from vae_jax import sources


@dataclasses.dataclass(frozen=True)
class StepBatch:
  """grain map: global step -> {'step', 'images' [S, R, H, W, C], 'labels' [S, R] or absent}
  for the S seeds' batches, R = stop - start of each batch's rows (this process's)."""
  source: sources.Source
  seeds: tuple
  batch_size: int
  num_examples: int
  start: int
  stop: int

  def __call__(self, step):
    step = int(step)
    images, labels = [], []
    for seed in self.seeds:
      rows = data.batch_indices(seed, step, self.batch_size, self.num_examples)
      block, block_labels = self.source.read(rows[self.start:self.stop])
      images.append(block)
      labels.append(block_labels)
    element = {'step': np.int64(step), 'images': np.stack(images)}
    if labels[0] is not None:
      element['labels'] = np.stack(labels).astype(np.int32)
    return element


def _grain():
  """grain, with absl's flags marked parsed when no absl app parsed them (grain reads its
  own flags; tests and scripts that are not absl apps would otherwise fail there)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain


class Stream:
  """The batches of steps first_step, first_step + 1, ... for this process.

  `take(num)` -> (images [S, num, R, H, W, C] uint8, labels [S, num, R] or None); the
  caller joins the seeds and places the rows on its devices. The grain pipeline maps
  steps base, base + 1, ..., num_steps - 1: base is 0 for a fresh run, and a resumed
  run rebuilds it at the saved base and sets grain's saved iterator state, or, where
  that state does not apply (`note` says why), builds it at the resumed step.
  """

  def __init__(self, source: sources.Source, *, seeds, batch_size: int, rows: tuple,
               num_steps: int, first_step: int, workers: int = 0, prefetch_steps: int = 8,
               process_count: int = 1, saved: Optional[dict] = None):
    self.rows = tuple(int(r) for r in rows)
    self.workers = int(workers)
    self.process_count = int(process_count)
    self._next_step = int(first_step)
    self.note = ''

    def build(base):
      self.base = base
      self._iterator = iter(self._build(source, seeds, batch_size, base, num_steps,
                                        prefetch_steps))

    if saved is None:
      build(self._next_step)
      return
    why_not = (self._why_not_restorable(saved) if isinstance(saved, dict)
               else 'it is not a record of a stream position')
    if not why_not:
      build(saved['base'])
      try:
        self._iterator.set_state(saved['grain'])
        return
      except Exception as e:  # pylint: disable=broad-except  # Another grain's format, an edit.
        self.close()
        why_not = f'its grain state does not restore: {vlog.brief(e)}'
    self.note = (f'the data stream starts at step {first_step} instead of restoring its '
                 f'saved position ({why_not}); the batches are a function of the step, so '
                 'they are the same')
    build(self._next_step)

  def _build(self, source, seeds, batch_size, base, num_steps, prefetch_steps):
    """The grain pipeline over steps base .. num_steps - 1."""
    grain = _grain()
    step_batch = StepBatch(source, tuple(int(s) for s in seeds), int(batch_size), len(source),
                           *self.rows)
    iterable = grain.MapDataset.range(base, num_steps).map(step_batch).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(1, int(prefetch_steps))))
    if self.workers:
      _quiet_resource_tracker()
      iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers,
          per_worker_buffer_size=max(1, int(prefetch_steps) // self.workers)))
    return iterable

  def _why_not_restorable(self, saved) -> str:
    if saved.get('next_step') != self._next_step:
      return f"it was saved at step {saved.get('next_step')}"
    if saved.get('process_count') != self.process_count:
      return (f"it was saved by {saved.get('process_count')} process(es), this run has "
              f'{self.process_count}')
    if saved.get('workers') != self.workers:
      return f"it was saved with data.workers={saved.get('workers')}, now {self.workers}"
    if 'grain' not in saved or not isinstance(saved.get('base'), int):
      return 'the checkpoint has none'
    return ''

  def take(self, num: int) -> tuple:
    """The next `num` steps' (images, labels); raises data.DatasetError if reading failed."""
    elements = []
    for _ in range(num):
      expected = self._next_step
      try:
        element = next(self._iterator)
      except StopIteration:
        raise data.DatasetError(f'data stream: no batch for step {expected} (the stream '
                                "ends at the run's last step)") from None
      except Exception as e:  # pylint: disable=broad-except  # A source's or a worker's.
        raise data.DatasetError(f'data stream: reading the batch of step {expected} failed: '
                                f'{vlog.brief(e)}') from None
      if int(element['step']) != expected:
        raise data.DatasetError(f'data stream: expected the batch of step {expected}, got '
                                f"step {int(element['step'])}")
      elements.append(element)
      self._next_step += 1
    images = np.stack([e['images'] for e in elements], axis=1)
    labels = (np.stack([e['labels'] for e in elements], axis=1)
              if 'labels' in elements[0] else None)
    return images, labels

  def state(self) -> dict:
    """JSON-serialisable position: the next step, and grain's own iterator state."""
    return {'next_step': self._next_step, 'base': self.base,
            'process_count': self.process_count, 'workers': self.workers,
            'grain': _jsonable(self._iterator.get_state())}

  def close(self) -> None:
    close = getattr(self._iterator, 'close', None)
    if close is not None:
      close()


def _quiet_resource_tracker():
  """Batches still in flight when the run ends are shared-memory blocks that Python's
  resource tracker unlinks at exit, warning 'leaked shared_memory objects' as it does:
  the tracker process takes its warning filters from sys.warnoptions when it starts."""
  option = 'ignore:resource_tracker:UserWarning'
  if option not in sys.warnoptions:
    sys.warnoptions.append(option)


def _jsonable(tree):
  if isinstance(tree, dict):
    return {str(k): _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, np.generic):
    return tree.item()
  if isinstance(tree, bytes):
    return tree.decode('latin-1')
  return tree


logging.getLogger('grain').setLevel(logging.WARNING)
