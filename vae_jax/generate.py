"""Generates from a trained workdir without retraining.

  python -m vae_jax.generate --workdir=DIR --temperatures=0.5,0.8,1.0 \
      --reconstruct=0,1,2,3 --interpolate=0,1 --traverse=0

Writes PNG grids into DIR/generated/ (or --output_dir): prior samples per
temperature, chosen held-out images beside their reconstructions, a latent
interpolation between two held-out images, and latent traversals (one row per
latent dimension, the most informative dimensions, by KL, first; by the
variance of the posterior mean where the top layer's KL is not per latent). In a
model with several stochastic layers, interpolation and traversal move the top
layer (see sampling.py). A conditional VAE draws one row of samples per class,
and reconstructs, interpolates and traverses with the images' own labels.
"""

import os
import sys

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from vae_jax import checkpoint
from vae_jax import data
from vae_jax import evaluate
from vae_jax import logging as vlog
from vae_jax import sampling
from vae_jax import train
from vae_jax import workdir as workdir_lib


def _define_flags():
  """Defined only when run as a script: importing this module for its functions
  adds no flags that could clash with another entry point's."""
  flags.DEFINE_string('workdir', None, 'A trained vae_jax workdir.')
  flags.DEFINE_string('output_dir', None, 'Where to write PNGs (default WORKDIR/generated).')
  flags.DEFINE_list('temperatures', ['0.5', '0.8', '1.0'], 'Prior sampling temperatures.')
  flags.DEFINE_integer('num_samples', 64, 'Prior samples per temperature.')
  flags.DEFINE_list('reconstruct', [str(i) for i in range(16)], 'Held-out image indices.')
  flags.DEFINE_list('interpolate', ['0', '1'], 'Two held-out image indices.')
  flags.DEFINE_integer('traverse', 0, 'Held-out image whose latents are traversed.')
  flags.DEFINE_integer('traverse_dims', 10, 'How many latent dims to traverse.')
  flags.DEFINE_integer('seed', 0, 'Seed of the prior samples.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.mark_flag_as_required('workdir')


def load_trained(workdir, step=None):
  """(experiment, params, step) of a workdir, from its config.json and a checkpoint."""
  config = workdir_lib.load_config(workdir)
  if config.train.num_seeds > 1:
    seeds = train.replica_seeds(config)
    raise workdir_lib.WorkdirError(
        f'{workdir} trained {len(seeds)} seeds at once; each is a workdir of its own: '
        + ', '.join(train.replica_workdir(workdir, s) for s in seeds))
  checkpoints = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(checkpoints):  # Checkpointer would create it.
    raise workdir_lib.WorkdirError(f'{workdir} has no checkpoints/ directory')
  exp = train.build_experiment(config)
  target = train.init_state(exp).to_dict()
  ckpt = checkpoint.Checkpointer(checkpoints, async_save=False)
  try:
    restored_step, state, _ = ckpt.restore(target, step=step)
  finally:
    ckpt.close()
  return exp, state['params'], restored_step


def _save(out_dir, name, images, columns=None):
  path = os.path.join(out_dir, f'{name}.png')
  vlog.save_png(path, vlog.image_grid(np.asarray(images), columns=columns))
  vlog.info(f'wrote {path}')


def generate(workdir, out_dir, temperatures, num_samples, reconstruct, interpolate,
             traverse, traverse_dims, seed=0, step=None):
  exp, params, step = load_trained(workdir, step)
  os.makedirs(out_dir, exist_ok=True)
  model = exp.model
  dequantize = model.likelihood.dequantize
  eval_images = data.fixed_eval_images(exp.dataset, exp.config.seed, dequantize=dequantize)
  eval_labels = train.labels_of(exp, exp.dataset.eval_labels)
  key = jax.random.key(seed)
  labels, columns = None, None
  if model.num_classes:  # One row per class.
    columns = max(1, num_samples // model.num_classes)
    labels = np.repeat(np.arange(model.num_classes), columns)
    num_samples = len(labels)
  for t in temperatures:
    _save(out_dir, f'samples_t{t:g}',
          sampling.prior_samples(model, params, key, num_samples, t, labels), columns=columns)
  chosen = np.asarray(reconstruct, int)
  x = eval_images[chosen]
  _save(out_dir, 'reconstructions', sampling.side_by_side(
      x, sampling.reconstructions(model, params, x, labels=_take(eval_labels, chosen))),
        columns=16)
  pair = np.asarray(interpolate[:2], int)
  a, b = eval_images[pair]
  _save(out_dir, 'interpolation',
        sampling.interpolate(model, params, a, b, 12, labels=_take(eval_labels, pair)),
        columns=12)
  top = dict(batch_size=500, key=jax.random.fold_in(key, 1),
             labels=_take(eval_labels, np.arange(min(1000, len(eval_images)))))
  kl = evaluate.kl_per_layer(model, params, eval_images[:1000], **top)[-1]
  score, unit = kl, 'KL (nats)'
  dim = model.latent_dims[-1]
  if kl.shape[0] != dim:  # The top layer's KL is not per latent: rank by activity.
    score = np.asarray(evaluate.active_units(model, params, eval_images[:1000], **top)[
        'posterior_mean_variance'][-dim:])
    unit = 'Var_x E_q[z | x]'
  dims = np.argsort(-score)[:traverse_dims]
  values = np.linspace(-3.0, 3.0, 11)
  label = None if eval_labels is None else int(eval_labels[traverse])
  _save(out_dir, 'traversal',
        sampling.traversal(model, params, eval_images[traverse], dims, values, label), columns=11)
  vlog.info(f'generated from step {step}; latent dims by {unit}: '
            + ', '.join(f'{d}:{score[d]:.2f}' for d in dims))


def _take(labels, indices):
  return None if labels is None else labels[indices]


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  out_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, 'generated')
  try:
    generate(FLAGS.workdir, out_dir, [float(t) for t in FLAGS.temperatures],
             FLAGS.num_samples, [int(i) for i in FLAGS.reconstruct],
             [int(i) for i in FLAGS.interpolate], FLAGS.traverse, FLAGS.traverse_dims,
             FLAGS.seed, FLAGS.step)
  except (workdir_lib.WorkdirError, checkpoint.CheckpointError, data.DatasetError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
