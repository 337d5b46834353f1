"""Held-out evaluation: importance-sampled log p(x), bits/dim, the ELBO, active units.

The protocol is Burda et al. 2015, "Importance Weighted Autoencoders" (sec. 5):
log p(x) estimated with K = 5,000 importance samples from q(z | x), and a latent
unit counted active when Cov_x(E_q[z_d | x]) > 0.01, layer by layer in a model
with several stochastic layers.

The split-level functions take numpy images [N, H, W, C] in [0, 1], run one
jitted function over fixed-size batches (the last one padded, so one shape
compiles) and reduce on the host in float64. The model is a static argument of
those jitted functions, so it must be hashable, as Linen modules built from
tuples, strings and numbers are; jitting once per model keeps the periodic
evaluations during training from recompiling.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vae_jax import objectives
from vae_jax import sharding

# Measured on the 2-core CPU with the 784-400-20 MLP VAE at K = 5,000: decoding
# 1,000-2,500 rows per chunk (images x samples) ran at 69-73 images/s (2.3 min for
# 10,000 images); 5,000 rows or more spilled out of the cache and ran at 22-58.
DEFAULT_IMPORTANCE_BATCH_SIZE = 2
DEFAULT_IMPORTANCE_CHUNK_SIZE = 500
# Draws per image of z_{l-1} for E_q[z_l | x] = E_q[mean of q(z_l | z_{l-1})] above
# the first layer of a hierarchical model (Monte Carlo; E_q[z_1 | x] is exact).
DEFAULT_POSTERIOR_SAMPLES = 100


def image_keys(key, start, batch_size):
  """The key of each image in a batch: fold_in(key, index of the image in the split).

  Keying by the image's index, not by its batch, makes an image's estimate the
  same whatever the batch size or padding.
  """
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, start + jnp.arange(batch_size))


def _standard_normal_draws(keys, first, num, dim):
  """eps [num, B, D]; sample j of image b comes from fold_in(keys[b], first + j).

  One key per (image, sample) makes the draws independent of how K is chunked,
  so changing chunk_size changes only the float rounding, never the estimate.
  """
  def draw(key, j):
    return jax.random.normal(jax.random.fold_in(key, j), (dim,))

  per_image = jax.vmap(draw, in_axes=(0, None))
  return jax.vmap(per_image, in_axes=(None, 0))(keys, first + jnp.arange(num))


def _finite_or_zero(x):
  return jnp.where(jnp.isfinite(x), x, 0.0)


def _logsumexp_update(state, log_w):
  """Folds log-weights [n, B] into a running (max [B], sum of exp(. - max) [B])."""
  running_max, running_sum = state
  new_max = jnp.maximum(running_max, jnp.max(log_w, axis=0))
  # While every weight so far is -inf, shift by 0 so that -inf - -inf = nan never appears.
  shift = _finite_or_zero(new_max)
  rescaled = running_sum * jnp.exp(running_max - shift)
  return new_max, rescaled + jnp.sum(jnp.exp(log_w - shift), axis=0)


def _importance_sampled_log_likelihood(model, params, x, keys, num_samples, chunk_size,
                                       labels=None):
  """log p(x) [B] from per-image keys [B]; see importance_sampled_log_likelihood."""
  chunk = min(chunk_size, num_samples)
  num_full, remainder = divmod(num_samples, chunk)
  batch = x.shape[0]

  def chunk_log_weights(first, num):
    eps = _standard_normal_draws(keys, first, num, model.noise_dim)
    return objectives.log_weights(objectives.terms(model, params, x, eps, labels))

  def next_chunk(i, state):  # A loop index, not a scanned [K / chunk] array: memory is flat in K.
    return _logsumexp_update(state, chunk_log_weights(i * chunk, chunk))

  state = (jnp.full((batch,), -jnp.inf), jnp.zeros((batch,)))
  state = jax.lax.fori_loop(0, num_full, next_chunk, state)
  if remainder:  # A smaller last chunk: no masked samples, no wasted decoder work.
    state = _logsumexp_update(state, chunk_log_weights(num_full * chunk, remainder))
  running_max, running_sum = state
  return jnp.log(running_sum) + _finite_or_zero(running_max) - math.log(num_samples)


def importance_sampled_log_likelihood(model, params, x, key, *, num_samples, chunk_size,
                                      labels=None):
  """log p(x) ~ logsumexp_i [log p(x | z_i) + log p(z_i) - log q(z_i | x)] - log K, [B].

  z_i ~ q(z | x), i = 1..K (Burda et al. 2015, eq. 14; a lower bound in
  expectation that tightens as K grows), from the model's terms
  (`objectives.log_weights`) whatever its prior, posterior or hierarchy. The K
  samples are drawn `chunk_size` at a time ([chunk_size * B] rows per decoder
  call) inside a loop with a running logsumexp, so memory does not grow with
  K. K need not be a multiple of chunk_size. Image b uses fold_in(key, b), as
  in `evaluate_log_likelihood`.
  """
  keys = image_keys(key, 0, x.shape[0])
  return _importance_sampled_log_likelihood(model, params, x, keys, num_samples, chunk_size,
                                            labels)


@functools.partial(jax.jit, static_argnames=('model', 'num_samples', 'chunk_size'))
def _log_likelihood_batch(model, params, x, labels, key, start, *, num_samples, chunk_size):
  keys = image_keys(key, start, x.shape[0])
  return _importance_sampled_log_likelihood(model, params, x, keys, num_samples, chunk_size,
                                            labels)


def _padded_batches(arrays, batch_size):
  """Yields (start, batches, num_real); each last batch repeats its last row up to batch_size."""
  for start in range(0, len(arrays[0]), batch_size):
    num_real = len(arrays[0][start:start + batch_size])
    batches = []
    for a in arrays:
      part = a[start:start + batch_size]
      pad = [(0, batch_size - num_real)] + [(0, 0)] * (part.ndim - 1)
      batches.append(np.pad(part, pad, mode='edge'))
    yield start, batches, num_real


def _map_batches(fn, images, batch_size, bar=None, *, params=None, labels=None):
  """fn(batch, labels, start, params) -> per-example arrays, over a split; padding dropped.

  `labels` (class indices [N] or None) travel with their images. With several
  devices, each batch is split over them (sharding.make_mesh: the `data` axis)
  and `params` replicated, so every device evaluates its share; the batch is
  rounded up to a multiple of the device count. Keys belong to images, not
  batches, so the numbers do not change with the device count beyond float
  rounding. One call stays in flight while the previous result is fetched, so
  the devices never wait for the host to pad and send the next batch.
  """
  images = np.asarray(images, np.float32)
  if not len(images):
    raise ValueError('no images to evaluate')
  arrays = [images] if labels is None else [images, np.asarray(labels, np.int32)]
  num_devices = sharding.device_count()
  batch_size = min(batch_size, len(images))
  if num_devices > 1:
    mesh = sharding.make_mesh()
    batch_size = -(-batch_size // num_devices) * num_devices
    params = sharding.replicate(params, mesh)
  results, pending = [], None
  for start, batches, num_real in _padded_batches(arrays, batch_size):
    if num_devices > 1:
      batches = [sharding.put_batch(b, mesh) for b in batches]
    out = fn(batches[0], batches[1] if labels is not None else None, start, params)
    if pending is not None:
      results.append(_fetch(*pending, bar))
    pending = (out, num_real)
  results.append(_fetch(*pending, bar))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *results)


def _fetch(out, num_real, bar):
  out = jax.tree.map(lambda a: np.asarray(a, np.float64)[:num_real], sharding.gather_to_host(out))
  if bar is not None:
    bar.update(num_real)
  return out


def evaluate_log_likelihood(model, params, images, key, *, num_samples=5000,
                            batch_size=DEFAULT_IMPORTANCE_BATCH_SIZE,
                            chunk_size=DEFAULT_IMPORTANCE_CHUNK_SIZE, progress=True,
                            labels=None) -> dict:
  """Mean importance-sampled log p(x) over a split, in nats and in bits per dimension.

  Burda et al. 2015, sec. 5 (K = 5,000). bits_per_dim = -log p(x) / (H W C ln 2).
  Image n is keyed by fold_in(key, n), so the result does not depend on
  batch_size or chunk_size beyond float rounding.
  """
  def run(batch, batch_labels, start, params):
    return _log_likelihood_batch(model, params, batch, batch_labels, key, start,
                                 num_samples=num_samples, chunk_size=chunk_size)

  with tqdm.tqdm(total=len(images), desc=f'log p(x), K={num_samples}', unit='img',
                 disable=not progress) as bar:
    log_px = _map_batches(run, images, batch_size, bar, params=params, labels=labels)
  mean_log_px = float(np.mean(log_px))
  return {
      'log_px': mean_log_px,
      'bits_per_dim': bits_per_dim(mean_log_px, np.shape(images)[1:]),
      'num_samples': num_samples,
      'num_images': len(log_px),
  }


def bits_per_dim(log_px, image_shape):
  """-log p(x) / (H * W * C * ln 2): nats per image to bits per pixel channel."""
  return -log_px / (math.prod(image_shape) * math.log(2.0))


@functools.partial(jax.jit, static_argnames='model')
def _elbo_terms_batch(model, params, x, labels, key, start):
  recon, kl = objectives.elbo_terms(model, params, x, jax.random.fold_in(key, start), labels)
  kl = jnp.sum(kl, axis=-1)
  return {'elbo': recon - kl, 'recon': recon, 'kl': kl}


def evaluate_elbo(model, params, images, key, *, batch_size=500, labels=None) -> dict:
  """Means over a split of the single-sample ELBO, log p(x | z) and KL(q || p), in nats.

  The terms of `objectives.elbo` with weight 1 and no free bits (Kingma & Welling
  2013), taken per example so that the padding of the last batch drops out.
  """
  terms = _map_batches(
      lambda batch, batch_labels, start, params: _elbo_terms_batch(
          model, params, batch, batch_labels, key, start),
      images, batch_size, params=params, labels=labels)
  return {name: float(np.mean(values)) for name, values in terms.items()}


@functools.partial(jax.jit, static_argnames=('model', 'num_samples'))
def _posterior_statistics(model, params, x, labels, key, start, *, num_samples):
  """Per layer l: 'mean_l', E_q[z_l | x] [B, D_l], and 'kl_l', KL per latent [B, n_l].

  Averages over `num_samples` draws from q of the model's terms (no decoding):
  the layer's closed-form mean where q gives it (exact for a one-layer diagonal
  Gaussian whatever the draws), else its samples; its analytic KL where the
  model gives one, else log q - log p (the rate: its entries sum to KL(q || p),
  one alone is not a KL; n_l = 1 where the layer's terms do not factorise).
  Image b's draws come from fold_in(key, start + b), as in the log p(x) estimate.
  """
  batch = x.shape[0]
  eps = _standard_normal_draws(image_keys(key, start, batch), 0, num_samples, model.noise_dim)
  t = objectives.terms(model, params, x, eps, labels, decode=False)
  stats = {}
  for i, layer in enumerate(t.layers):
    mean = jnp.broadcast_to(layer.mean, layer.z.shape).reshape(num_samples, batch, -1)
    stats[f'mean_{i}'] = jnp.mean(mean, axis=0)
    stats[f'kl_{i}'] = jnp.mean(objectives.layer_rate(layer), axis=0)
  return stats


# Draws per image where the statistics are not in closed form (a key is needed then);
# a one-layer diagonal Gaussian with an analytic KL gives the same numbers for any key.
_DEFAULT_STATISTICS_KEY = 0


def _per_layer(model, params, images, batch_size, key, num_samples, labels):
  """([E_q[z_l | x] over the split [N, D_l]], [KL per latent [N, n_l]]), bottom-up."""
  if key is None:
    key = jax.random.key(_DEFAULT_STATISTICS_KEY)
  stats = _map_batches(
      lambda batch, batch_labels, start, params: _posterior_statistics(
          model, params, batch, batch_labels, key, start, num_samples=num_samples),
      images, batch_size, params=params, labels=labels)
  num_layers = len(stats) // 2
  return ([stats[f'mean_{i}'] for i in range(num_layers)],
          [stats[f'kl_{i}'] for i in range(num_layers)])


def posterior_means(model, params, images, *, batch_size=500, key=None,
                    num_samples=DEFAULT_POSTERIOR_SAMPLES, labels=None) -> list:
  """E_q[z_l | x] over a split, [N, D_l] per layer, bottom-up: the closed-form mean
  where q gives one, else a Monte Carlo average over `num_samples` draws keyed by `key`."""
  means, _ = _per_layer(model, params, images, batch_size, key, num_samples, labels)
  return means


def active_units(model, params, images, *, threshold=0.01, batch_size=500, key=None,
                 num_samples=DEFAULT_POSTERIOR_SAMPLES, labels=None) -> dict:
  """Counts latents with Cov_x(E_q[z_d | x]) > threshold (Burda et al. 2015, sec. 5.2).

  Returns {'active_units': int (all layers), 'active_units_per_layer': [int],
  bottom-up, 'posterior_mean_variance': [D_1 + ... + D_L] list of floats}.
  Where E_q[z_l | x] has no closed form (a layer above the first, a flow) it is
  a Monte Carlo average over `num_samples` draws keyed by `key`.
  """
  means = posterior_means(model, params, images, batch_size=batch_size, key=key,
                          num_samples=num_samples, labels=labels)
  variances = [np.var(m, axis=0) for m in means]
  return {
      'active_units': int(sum(np.sum(v > threshold) for v in variances)),
      'active_units_per_layer': [int(np.sum(v > threshold)) for v in variances],
      'posterior_mean_variance': np.concatenate(variances).tolist(),
  }


def kl_per_layer(model, params, images, *, batch_size=500, key=None,
                 num_samples=DEFAULT_POSTERIOR_SAMPLES, labels=None) -> list:
  """Mean over a split of each layer's KL per latent, [n_l] nats per layer, bottom-up.

  Analytic where the model gives it (a one-layer Gaussian against N(0, I)),
  else the mean of log q - log p over `num_samples` draws per image; a layer
  whose terms do not factorise over latents (a mixture prior, a flow) has one
  entry, its whole KL. The entries of all layers sum to KL(q(z | x) || p(z)).
  """
  _, kls = _per_layer(model, params, images, batch_size, key, num_samples, labels)
  return [np.mean(kl, axis=0) for kl in kls]


def kl_per_dimension(model, params, images, **kwargs) -> np.ndarray:
  """`kl_per_layer` concatenated: [n_1 + ... + n_L] nats."""
  return np.concatenate(kl_per_layer(model, params, images, **kwargs))
