"""Evaluates a trained workdir on one split and writes the numbers as JSON beside it.

  TFDS_DATA_DIR=/path/to/tensorflow_datasets python -m vae_jax.evaluate_workdir \
      --workdir=DIR --split=test --num_samples=5000

writes DIR/eval_test_k5000.json: the importance-sampled log p(x) with K samples
(Burda et al. 2015, sec. 5) and its bits/dim, the single-sample ELBO and its
terms, active units (in all and per stochastic layer) and the KL of each
latent, the checkpoint step and epoch, and the wall time of the evaluation. A
status line names each stage from the start (loading the data, restoring the
checkpoint), and a tqdm bar follows the K-sample estimate.
"""

import dataclasses
import os
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from vae_jax import caches
from vae_jax import checkpoint
from vae_jax import data
from vae_jax import evaluate
from vae_jax import experiment
from vae_jax import logs as vlog
from vae_jax import workdir as workdir_lib


def _define_flags():
  """Defined only when run as a script: importing this module for its functions
  adds no flags that could clash with another entry point's."""
  flags.DEFINE_string('workdir', None, 'A trained vae_jax workdir.')
  flags.DEFINE_string('split', 'test', 'Split to evaluate (a TFDS split name).')
  flags.DEFINE_integer('num_samples', 5000, 'K, importance samples per image.')
  flags.DEFINE_integer('num_images', 0, 'Evaluate only the first N images (0: all).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('batch_size', evaluate.DEFAULT_IMPORTANCE_BATCH_SIZE,
                                     'Images per log p(x) call.')
  flags.DEFINE_integer('chunk_size', evaluate.DEFAULT_IMPORTANCE_CHUNK_SIZE,
                                     'Samples decoded per scan step of the log p(x) estimate.')
  flags.DEFINE_string('output', None, 'Write the JSON here (default: WORKDIR/eval_SPLIT_kK.json).')
  flags.mark_flag_as_required('workdir')


def split_images(config, dataset, split, dequantize=False):
  """(float32 [N, H, W, C] images, labels [N] or None) of `split`, as the run's evaluation saw them.

  Binarised (and dequantised, for a continuous likelihood) with the run's fixed draw.
  """
  if split == config.data.eval_split:
    stored, labels = dataset.eval, dataset.eval_labels
  elif split == config.data.train_split and dataset.streamed:  # Read from its source.
    try:
      stored, labels = data.read_source(dataset.train_source)
    except data.DatasetError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # A damaged TFDS shard.
      raise data.DatasetError(f'reading the {split} split of {config.data.name} failed: '
                              f'{vlog.brief(e)}') from e
  elif split == config.data.train_split:
    stored, labels = dataset.train, dataset.train_labels
  else:
    data_config = config.data.copy_and_resolve_references()
    data_config.eval_split = split
    loaded = data.load(data_config)
    stored, labels = loaded.eval, loaded.eval_labels
  view = dataclasses.replace(dataset, eval=stored, eval_labels=labels)
  return data.fixed_eval_images(view, config.seed, dequantize=dequantize), labels


def output_path(workdir, split, num_samples, num_images=0):
  suffix = f'_n{num_images}' if num_images else ''
  return os.path.join(workdir, f'eval_{split}_k{num_samples}{suffix}.json')


def evaluate_workdir(workdir, split='test', num_samples=5000, num_images=0, step=None,
                     batch_size=evaluate.DEFAULT_IMPORTANCE_BATCH_SIZE,
                     chunk_size=evaluate.DEFAULT_IMPORTANCE_CHUNK_SIZE, progress=True,
                     output=None) -> dict:
  """Evaluates the checkpoint at `step` (default: latest) on `split`; returns what it wrote
  (to `output`, default output_path(...) in the workdir). Every count and the output
  are checked before the workdir is read: a bad flag or an unwritable output costs
  nothing, not the minutes of the evaluation."""
  start = time.perf_counter()
  workdir_lib.check_at_least(1, num_samples=num_samples, batch_size=batch_size,
                             chunk_size=chunk_size)
  workdir_lib.check_at_least(0, num_images=num_images)
  # Not a workdir: said first. A VQ-VAE's q is one-hot: every importance sample would be the
  # same code grid, so its log p(x) is not estimated, only the bound through that grid.
  one_hot_q = workdir_lib.load_config(workdir).model.get('posterior') == 'vq'
  if one_hot_q:
    num_samples = 0
  path = workdir_lib.check_writable(
      output or output_path(workdir, split, num_samples, num_images),
      '' if output else ' (pass --output=FILE to write elsewhere)')
  with vlog.Stages('evaluate_workdir', 3, enabled=progress) as stages:
    exp, params, step = experiment.load_trained(workdir, step, stages)
    config, model, key = exp.config, exp.model, exp.keys['eval']
    stages.start(f'reading the {split} split')
    images, labels = split_images(config, exp.dataset, split, model.likelihood.dequantize)
  labels = experiment.labels_of(exp, labels)
  if num_images > len(images):
    raise workdir_lib.FlagError(
        f'--num_images: the {split} split has {len(images)} images, got {num_images}')
  if num_images:
    images = images[:num_images]
    labels = None if labels is None else labels[:num_images]
  batch = config.eval.batch_size
  results = {
      'workdir': os.path.abspath(workdir), 'split': split, 'step': step,
      'epoch': step / exp.steps_per_epoch, 'num_images': len(images),
  }
  if not one_hot_q:
    results.update(evaluate.evaluate_log_likelihood(
        model, params, images, key, num_samples=num_samples, batch_size=batch_size,
        chunk_size=chunk_size, progress=progress, labels=labels))
  with vlog.Stages('evaluate_workdir', 3, enabled=progress) as stages:
    stages.start('the ELBO')
    results.update(evaluate.evaluate_elbo(model, params, images, key, batch_size=batch,
                                          labels=labels))
    # Draws above z_1 of a hierarchical model: a key of their own, split off (the
    # images' log p(x) keys are fold_in(key, n)).
    posterior_key = jax.random.split(key)[1]
    stages.start('active units')
    results.update(evaluate.active_units(model, params, images, batch_size=batch,
                                         key=posterior_key, labels=labels))
    stages.start('KL per layer')
    kl = evaluate.kl_per_layer(model, params, images, batch_size=batch, key=posterior_key,
                               labels=labels)
  results['kl_per_dim'] = np.concatenate(kl).tolist()
  results['kl_per_layer'] = [float(np.sum(k)) for k in kl]
  results['wall_time_s'] = time.perf_counter() - start
  if one_hot_q:
    results['elbo_bits_per_dim'] = evaluate.bits_per_dim(results['elbo'], images.shape[1:])
  workdir_lib.write_json(path, results)
  if one_hot_q:
    vlog.info(f'{split} (step {step}, {len(images)} images): VQ-VAE bound log p(x | z_q) + '
              f'log p(codes) {results["elbo"]:.2f} nats ({results["elbo_bits_per_dim"]:.4f} '
              f'bits/dim; one-hot q: no importance-sampled log p(x)); wrote {path}')
    return results
  vlog.info(f'{split} (step {step}, {len(images)} images): log p(x) K={num_samples} '
            f'{results["log_px"]:.2f} nats ({results["bits_per_dim"]:.4f} bits/dim), '
            f'ELBO {results["elbo"]:.2f}, active units {results["active_units"]} '
            f'(per layer {results["active_units_per_layer"]}); wrote {path}')
  return results


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  caches.use_compilation_cache()
  try:
    evaluate_workdir(FLAGS.workdir, FLAGS.split, FLAGS.num_samples, FLAGS.num_images,
                     FLAGS.step, FLAGS.batch_size, FLAGS.chunk_size, output=FLAGS.output)
  except (workdir_lib.WorkdirError, workdir_lib.FlagError, checkpoint.CheckpointError,
          data.DatasetError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
