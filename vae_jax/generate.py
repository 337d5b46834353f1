"""Generates from a trained workdir without retraining.

  python -m vae_jax.generate --workdir=DIR --temperatures=0.5,0.8,1.0 \
      --reconstruct=0,1,2,3 --interpolate=0,1 --traverse=0

Writes PNG grids into DIR/generated/ (or --output_dir): prior samples per
temperature, chosen held-out images beside their reconstructions, a latent
interpolation between two held-out images, and latent traversals (one row per
latent dimension, the most informative dimensions, by KL, first; by the
variance of the posterior mean where the top layer's KL is not per latent). In a
model with several stochastic layers, interpolation and traversal move the top
layer (see sampling.py), and kl_per_layer.png shows the nats of each layer (a
collapsed layer is a bar at zero). A top-down hierarchy also gets
hierarchy.png: under a row of held-out images, one row per depth m with the top
m groups from q(z | x) and the rest drawn from the prior, and, with
--group_temperatures (one per group, bottom-up), samples_groups.png.
A conditional VAE draws one row of samples per class, and reconstructs,
interpolates and traverses with the images' own labels.
"""

import math
import os
import sys

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
from vae_jax import sampling
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
  flags.DEFINE_list('group_temperatures', [],
                    'A top-down hierarchy: one sampling temperature per group, bottom-up.')
  flags.DEFINE_integer('seed', 0, 'Seed of the prior samples.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.mark_flag_as_required('workdir')


def _save(out_dir, name, images, columns=None):
  path = os.path.join(out_dir, f'{name}.png')
  vlog.save_png(path, vlog.image_grid(np.asarray(images), columns=columns))
  vlog.info(f'wrote {path}')


def save_kl_per_layer(path, kl_per_layer):
  """A bar chart of nats per stochastic layer (bottom-up): where the KL goes, and which
  layers collapsed onto their prior."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(kl_per_layer) + 2), 3))
  ax.bar(np.arange(1, len(kl_per_layer) + 1), kl_per_layer, color='tab:blue')
  ax.set_xlabel('layer (1 = next to x)')
  ax.set_ylabel('KL (nats)')
  ax.set_xticks(np.arange(1, len(kl_per_layer) + 1))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  vlog.info(f'wrote {path}')


def _hierarchy_pictures(out_dir, model, params, x, key, group_temperatures, num_samples):
  depths = sorted({int(round(m)) for m in np.linspace(0, model.num_groups, 9)})
  rows = [x] + [sampling.top_group_reconstructions(model, params, x, key, m) for m in depths]
  _save(out_dir, 'hierarchy', np.concatenate(rows), columns=len(x))
  vlog.info('hierarchy.png: held-out images, then the top m groups from q for m = '
            + ', '.join(map(str, depths)))
  if group_temperatures:
    _save(out_dir, 'samples_groups', sampling.prior_samples(
        model, params, key, num_samples, np.asarray(group_temperatures, np.float32)))


def check_flags(temperatures, num_samples, interpolate, traverse_dims, group_temperatures=()):
  """FlagError naming the first flag out of range (before the workdir is read)."""
  for t in temperatures:
    if not (math.isfinite(t) and t > 0):
      raise workdir_lib.FlagError(f'--temperatures: each must be a finite number above 0, '
                                  f'got {t}')
  for t in group_temperatures:
    if not (math.isfinite(t) and t >= 0):
      raise workdir_lib.FlagError(f'--group_temperatures: each must be a finite number, 0 '
                                  f'(the prior mean) or more, got {t}')
  workdir_lib.check_at_least(1, num_samples=num_samples, traverse_dims=traverse_dims)
  if len(interpolate) != 2:
    raise workdir_lib.FlagError(f'--interpolate: two held-out image indices, got '
                                f'{len(interpolate)}')


def check_indices(count, reconstruct, interpolate, traverse):
  """FlagError naming the first index outside the `count` held-out images."""
  if not reconstruct:
    raise workdir_lib.FlagError('--reconstruct: at least one held-out image index')
  for name, indices in (('reconstruct', reconstruct), ('interpolate', interpolate),
                        ('traverse', [traverse])):
    for i in indices:
      if not 0 <= i < count:
        raise workdir_lib.FlagError(f'--{name}: the held-out split has {count} images '
                                    f'(0 to {count - 1}), got {i}')


def generate(workdir, out_dir, temperatures, num_samples, reconstruct, interpolate,
             traverse, traverse_dims, seed=0, step=None, group_temperatures=()):
  check_flags(temperatures, num_samples, interpolate, traverse_dims, group_temperatures)
  exp, params, step = experiment.load_trained(workdir, step)
  model = exp.model
  dequantize = model.likelihood.dequantize
  eval_images = data.fixed_eval_images(exp.dataset, exp.config.seed, dequantize=dequantize)
  check_indices(len(eval_images), reconstruct, interpolate, traverse)
  if group_temperatures and not hasattr(model, 'reconstruct_top'):
    raise workdir_lib.FlagError('--group_temperatures: only a top-down hierarchy '
                                '(model.hierarchy=top_down) has groups')
  if group_temperatures and len(group_temperatures) != model.num_groups:
    raise workdir_lib.FlagError(f'--group_temperatures: the model has {model.num_groups} '
                                f'groups, got {len(group_temperatures)} temperatures')
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise workdir_lib.FlagError(f'--output_dir: cannot create {out_dir}: {e}') from e
  eval_labels = experiment.labels_of(exp, exp.dataset.eval_labels)
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
  kl_layers = evaluate.kl_per_layer(model, params, eval_images[:1000], **top)
  if len(kl_layers) > 1:
    save_kl_per_layer(os.path.join(out_dir, 'kl_per_layer.png'),
                      [float(np.sum(k)) for k in kl_layers])
  if hasattr(model, 'reconstruct_top'):
    _hierarchy_pictures(out_dir, model, params, x[:8], key, group_temperatures, num_samples)
  kl = kl_layers[-1]
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
  caches.use_compilation_cache()
  out_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, 'generated')
  lists = {}
  for name, kind, what in (('temperatures', float, 'numbers'),
                           ('group_temperatures', float, 'numbers'),
                           ('reconstruct', int, 'integers'), ('interpolate', int, 'integers')):
    try:
      lists[name] = [kind(v) for v in FLAGS[name].value]
    except ValueError:
      print(f'error: --{name}: expected comma-separated {what}, got '
            f'{",".join(FLAGS[name].value)}', file=sys.stderr, flush=True)
      sys.exit(1)
  try:
    generate(FLAGS.workdir, out_dir, lists['temperatures'], FLAGS.num_samples,
             lists['reconstruct'], lists['interpolate'], FLAGS.traverse, FLAGS.traverse_dims,
             FLAGS.seed, FLAGS.step, lists['group_temperatures'])
  except (workdir_lib.WorkdirError, workdir_lib.FlagError, checkpoint.CheckpointError,
          data.DatasetError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
