"""Compile time and peak memory of a top-down hierarchy's train step against its depth.

  python -m scripts.hierarchy_cost --groups=2,8,20 --output=benchmarks/hierarchy_cost.json

For each number of groups L and each way of building them (identical groups
as one nn.scan or unrolled; with or without nn.remat), compiles one train
step (the ELBO's gradient and an Adam update) of a top-down hierarchy of L
identical groups on 28x28 binary images, and reports the compile time (the
median of --repeats fresh compilations) and XLA's memory analysis of the
compiled step: the temporaries it allocates (peak working memory beside
params, optimiser state and batch) and its total (arguments + outputs +
temporaries); then the step's speed (images/s, the median of --repeats timed
stretches of --seconds each, after two warm-up calls). Dense groups by default;
--spatial uses 7x7 groups of bottleneck ResNet blocks instead. Prints a markdown
table.
"""

import json
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import optax

from vae_jax import objectives
from vae_jax.models import hierarchy
from vae_jax.models import likelihoods
from vae_jax import models

_GROUPS = flags.DEFINE_list('groups', ['2', '8', '20'], 'Numbers of groups.')
_LATENT = flags.DEFINE_integer('latent', 16, 'Latents per dense group (channels if spatial).')
_WIDTH = flags.DEFINE_integer('width', 256, 'State width (channels if spatial).')
_HIDDEN = flags.DEFINE_integer('hidden', 128, 'Inner width of the blocks.')
_BATCH = flags.DEFINE_integer('batch', 100, 'Batch size.')
_SPATIAL = flags.DEFINE_bool('spatial', False, 'Spatial groups at 7x7 instead of dense ones.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Compilations per row (the median is reported).')
_SECONDS = flags.DEFINE_float('seconds', 2.0, 'Length of each timed stretch of steps.')
_OUTPUT = flags.DEFINE_string('output', '', 'Write the rows as JSON here.')


def step_cost(num_groups, scan, remat):
  """(compile seconds, temp bytes, total bytes, images/s) of one train step."""
  likelihood = likelihoods.make_likelihood('bernoulli', channels=1, levels=2, num_mix=1)
  shape = (7, 7, _LATENT.value) if _SPATIAL.value else (_LATENT.value,)
  model = hierarchy.TopDownVAE(likelihood, (28, 28, 1), (shape,) * num_groups, _WIDTH.value,
                               _HIDDEN.value, scan=scan, remat=remat)
  params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), (28, 28, 1)))
  tx = optax.adam(1e-3)
  opt_state = jax.eval_shape(tx.init, params)
  x = jax.ShapeDtypeStruct((_BATCH.value, 28, 28, 1), jnp.float32)

  def train_step(params, opt_state, x, key):
    grads = jax.grad(lambda p: objectives.elbo(model, p, x, key)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  key = jax.eval_shape(lambda: jax.random.key(0))
  times = []
  for _ in range(_REPEATS.value):
    jax.clear_caches()
    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x,
                                                               key).compile()
    times.append(time.perf_counter() - start)
  memory = compiled.memory_analysis()
  temp = memory.temp_size_in_bytes
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           - memory.alias_size_in_bytes + temp)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  opt_state = tx.init(params)
  images = jax.random.bernoulli(jax.random.key(1), 0.3, x.shape).astype(jnp.float32)
  keys = jax.random.split(jax.random.key(2), 1000)
  for i in range(2):  # Warm-up.
    params, opt_state = compiled(params, opt_state, images, keys[i])
  rates, i = [], 2
  for _ in range(_REPEATS.value):
    jax.block_until_ready(params)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < _SECONDS.value:
      params, opt_state = compiled(params, opt_state, images, keys[i % len(keys)])
      i, steps = i + 1, steps + 1
      if steps % 5 == 0:
        jax.block_until_ready(params)
    jax.block_until_ready(params)
    rates.append(steps * _BATCH.value / (time.perf_counter() - start))
  return statistics.median(times), temp, total, statistics.median(rates)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # jax's backend probing logs at INFO.
  rows = []
  for scan, remat in ((True, False), (True, True), (False, False)):
    for groups in (int(g) for g in _GROUPS.value):
      seconds, temp, total, rate = step_cost(groups, scan, remat)
      rows.append(dict(groups=groups, scan=scan, remat=remat, compile_s=seconds,
                       temp_mib=temp / 2 ** 20, total_mib=total / 2 ** 20,
                       images_per_sec=rate))
  kind = f'spatial 7x7x{_LATENT.value}' if _SPATIAL.value else f'dense {_LATENT.value}'
  print(f'{kind} groups, width {_WIDTH.value}, hidden {_HIDDEN.value}, batch {_BATCH.value}, '
        f'{jax.default_backend()}, jax {jax.__version__}')
  print('| groups | built as | compile (s) | temporaries (MiB) | total (MiB) | step images/s |')
  print('| --- | --- | --- | --- | --- | --- |')
  for r in rows:
    how = ('nn.scan' if r['scan'] else 'unrolled') + (' + remat' if r['remat'] else '')
    print(f"| {r['groups']} | {how} | {r['compile_s']:.2f} | {r['temp_mib']:.1f} | "
          f"{r['total_mib']:.1f} | {r['images_per_sec']:,.0f} |")
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump(dict(kind=kind, backend=jax.default_backend(), jax=jax.__version__, rows=rows),
                f, indent=1)


if __name__ == '__main__':
  app.run(main)
