"""Where numbers and pictures go: JSON lines, TensorBoard events, PNG grids, trackers.

Only process 0 writes; the writer is a no-op elsewhere. TensorBoard events are
written with tensorboardX, which needs no TensorFlow; W&B and MLflow, when
`logging.trackers` names them, through vae_jax.trackers.
"""

import contextlib
import json
import math
import os
import time

import numpy as np
from PIL import Image

METRICS_FILE = 'metrics.jsonl'
# Sizes and positions, not measurements: kept in metrics.jsonl, not drawn as TensorBoard curves.
COUNTS = ('num_samples', 'num_images', 'epoch')
SIZES = ('num_samples', 'num_images')  # Not sent to trackers either (the epoch is).
PNG_SCALE = 2  # Grids are enlarged this many times (nearest) for viewing, on disk and in TensorBoard.


class MetricWriter:
  """Appends {'step': s, 'split': ..., **metrics} lines and TensorBoard scalars."""

  def __init__(self, workdir, *, enabled=True, tensorboard=True, trackers=(), project='vae_jax',
               run_name=None, config=None):
    """`trackers`: names of vae_jax.trackers ('wandb', 'mlflow') that get every metric,
    picture and the final summary too, as run `run_name` of `project`, with the
    flattened `config` as its parameters."""
    self._enabled = enabled
    self._jsonl = None
    self._tb = None
    self._trackers = None
    if not enabled:
      return
    if trackers:
      from vae_jax import trackers as trackers_lib  # pylint: disable=g-import-not-at-top
      self._trackers = trackers_lib.Trackers(
          trackers, workdir, project=project, config=config or {},
          run_name=run_name or os.path.basename(os.path.normpath(workdir)))
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a', encoding='utf-8')
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step, split, metrics):
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in metrics.items():
        if np.ndim(value) == 0 and name not in COUNTS:
          self._tb.add_scalar(f'{split}/{name}', float(value), int(step))
    if self._trackers is not None:  # The epoch too: a tracker can plot against it.
      self._trackers.log(step, split, {k: float(v) for k, v in metrics.items()
                                       if np.ndim(v) == 0 and k not in SIZES})

  def write_image(self, step, name, grid):
    """A uint8 [H, W, C] grid, at the resolution of its PNG."""
    if self._tb is not None:
      self._tb.add_image(name, enlarge(grid), int(step), dataformats='HWC')
    if self._trackers is not None:
      self._trackers.image(step, name, enlarge(grid))

  def write_hparams(self, hparams, metrics, step):
    """The run's config fields and final metrics, for TensorBoard's HParams dashboard."""
    if self._tb is not None:
      shown = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
               for k, v in hparams.items()}
      final = {f'hparam/{k}': float(v) for k, v in metrics.items()
               if np.ndim(v) == 0 and k not in COUNTS}
      # Into the run's own events file (SummaryWriter.add_hparams would open a
      # second writer, and a second file, for them).
      from tensorboardX.summary import hparams as hparams_summaries  # pylint: disable=g-import-not-at-top
      for summary in hparams_summaries(shown, final):
        self._tb.file_writer.add_summary(summary)
      for name, value in final.items():
        self._tb.add_scalar(name, value, int(step))
    if self._trackers is not None:
      self._trackers.final(hparams, {k: float(v) for k, v in metrics.items()
                                     if np.ndim(v) == 0 and k not in COUNTS}, step)

  def close(self):
    if self._trackers is not None:
      self._trackers.close()
      self._trackers = None
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def read_metrics(workdir, split=None):
  """The records of a workdir's metrics file (optionally of one split), by step.

  One record per (split, step), the last written: a run resumed after a crash
  logs the steps it redoes again.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = {}
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # A line cut short by a crash or a full disk.
        continue
      if split is None or record['split'] == split:
        # Steps redone after a resume: the later record wins.
        records.pop((record['split'], record['step']), None)
        records[(record['split'], record['step'])] = record
  return sorted(records.values(), key=lambda r: r['step'])


def image_grid(images, columns=None, pad=2):
  """[N, H, W, C] floats in [0, 1] -> one uint8 [H', W', C] grid image."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = image
  return (grid * 255.0 + 0.5).astype(np.uint8)


def enlarge(grid, scale=PNG_SCALE):
  """A uint8 [H, W, C] grid enlarged `scale` times, each pixel a scale x scale block."""
  return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


@contextlib.contextmanager
def atomic_file(path, mode='w'):
  """A file object whose contents appear at `path` only when the block ends without an
  error (a temporary file of this process, then a rename): a crash, or another process
  writing the same path, never leaves half a file."""
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_png(path, grid, scale=PNG_SCALE):
  """Writes a uint8 grid as PNG, enlarged `scale` times (nearest) for viewing."""
  grid = enlarge(grid, scale)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  with atomic_file(path, 'wb') as f:
    image.save(f, format='PNG')


def write_json(path, obj):
  """Writes JSON atomically (`atomic_file`)."""
  with atomic_file(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=list)
    f.write('\n')


def first_line(error: BaseException) -> str:
  """The first line of an error's message (TensorStore, TFDS and absl errors append
  pages after it); '' when it has none."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else ''


def brief(error: BaseException) -> str:
  """'Type: first line of the message': the reason without a traceback wall."""
  name = type(error).__name__
  return f'{name}: {first_line(error)}' if first_line(error) else name


def format_duration(seconds):
  """'1h05m' or '3m07s'; '?' when unknown (no speed measured yet)."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def progress_line(step, num_steps, metrics, steps_per_sec, batch_size, steps_per_epoch=0,
                  means_of=0):
  """One readable console line: step (and epoch), loss terms, speed and ETA; with
  `means_of` > 1 replicas, it says the terms are their means."""
  first = [k for k in ('loss', 'elbo', 'recon', 'kl') if k in metrics]
  shown = first + sorted(k for k in metrics if k not in first and k != 'kl_weight')
  terms = ' | '.join(f'{k} {float(metrics[k]):.2f}' for k in shown)
  eta = (num_steps - step) / steps_per_sec if steps_per_sec > 0 else float('nan')
  epoch = f' (epoch {step / steps_per_epoch:.1f})' if steps_per_epoch else ''
  if means_of > 1:
    terms = f'mean of {means_of} seeds: {terms}'
  return (f'step {step}/{num_steps}{epoch} | {terms} | {steps_per_sec:.1f} steps/s '
          f'({steps_per_sec * batch_size:,.0f} img/s) | ETA {format_duration(eta)}')


def info(message):
  """One console line, flushed at once (so tail -f and CI logs see it)."""
  print(message, flush=True)


class Stages:
  """A status line over a tool's named stages, shown from its first moment and
  ticking every second: 'evaluate_workdir: loading the data (2/3) 0m12s'.

  For the seconds before a tool's own progress bar (reading data, restoring a
  checkpoint, compiling), which otherwise pass in silence.
  """

  def __init__(self, tool, num_stages, enabled=True):
    import threading  # pylint: disable=g-import-not-at-top
    import tqdm  # pylint: disable=g-import-not-at-top
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    self._tool, self._total, self._done = tool, num_stages, 0
    self._bar = tqdm.tqdm(total=num_stages, disable=not enabled, leave=False,
                          desc=f'{tool}: starting', bar_format='{desc} {elapsed}')
    self._stop = threading.Event()
    # Warnings logged meanwhile go above the line, not into it.
    self._handler = absl_logging.get_absl_handler().python_handler
    self._stream = self._handler.stream
    if enabled:
      self._handler.stream = _AboveBars(tqdm.tqdm, self._stream)
      threading.Thread(target=self._tick, daemon=True).start()

  def _tick(self):
    while not self._stop.wait(1.0):
      self._bar.refresh()

  def start(self, stage):
    self._done += 1
    self._bar.set_description_str(f'{self._tool}: {stage} ({self._done}/{self._total})')

  def close(self):
    self._stop.set()
    self._bar.close()
    self._handler.stream = self._stream

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _AboveBars:
  """A stream for log handlers that writes through tqdm.write, above any live bar."""

  def __init__(self, tqdm_class, stream):
    self._tqdm, self._stream = tqdm_class, stream

  def write(self, text):
    if text.strip():
      self._tqdm.write(text.rstrip('\n'), file=self._stream)

  def flush(self):
    self._stream.flush()

