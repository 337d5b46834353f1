"""Training objectives: the ELBO (beta, KL warm-up, free bits), the IWAE bound, the
disentangling objectives (beta-TCVAE, FactorVAE, DIP-VAE I and II), and the VQ-VAE's
two stages (vq_vae, then code_prior for the prior over its codes).

Every function here is pure and traceable, so it can run inside the jitted,
`lax.scan`ned train step. Metrics are means over the batch, in nats per example.
They read only the model's terms (models/vae.py): log p(x | z) [k, B] and, per
stochastic layer, (z, log q, log p, analytic KL or None). Nothing here asks
which prior, posterior, likelihood or hierarchy the model has; the
disentangling objectives read one layer's Gaussian (mean, log_var), which
config validation makes sure the model has.

FactorVAE trains a discriminator beside the VAE. Its parameters sit in the
parameter tree under 'discriminator' (`extra_params`; the VAE's modules never
read them) with their own optimiser (`extra_optimizers`), and its loss is added
to the VAE's with each side's inputs behind `stop_gradient`, so one gradient
holds the VAE's gradient of the VAE loss and the discriminator's gradient of
its own loss, and one train step updates both, as Kim & Mnih's Algorithm 1.

The VQ-VAE's EMA codebook (van den Oord et al. 2017, app. A.1) is not trained
by gradients but set each step to new moving averages of the batch's
assignments. It travels the same road: `vq_vae` adds 0.5 |theta - sg(target)|^2
for each codebook leaf, whose gradient is theta - target, and the codebook's
own optimiser, plain SGD with rate 1 (`extra_optimizers`), moves theta to the
target (to rounding). So the update is part of the one jitted step, checkpointed
and resumed with everything else. The gradient norm in the logs includes it.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import distributions

DISENTANGLING = ('beta_tcvae', 'factor_vae', 'dip_vae_i', 'dip_vae_ii')
VQ = ('vq_vae', 'code_prior')
OBJECTIVES = ('elbo', 'iwae') + DISENTANGLING + VQ
TC_ESTIMATORS = ('mws', 'mss')
DISCRIMINATOR = 'discriminator'  # FactorVAE's top-level key in the parameter tree.

# The fields of `config.objective` an objective has no use for, with the value each
# must keep: set away from it, it would be silently ignored, so it is refused.
_ONE_SAMPLE = "uses one sample per datapoint; use objective.name='iwae' for k > 1"
_NO_KL_WEIGHT = 'has no {field}: a one-hot q has a constant KL under the uniform prior'
UNUSED = {
    'elbo': {'num_samples': (1, _ONE_SAMPLE)},
    'iwae': {field: (neutral, 'has no {field}: the bound weighs no KL term')
             for field, neutral in (('beta', 1.0), ('kl_warmup_steps', 0), ('free_bits', 0.0))},
    **{name: {'num_samples': (1, 'uses one sample per datapoint'),
              'free_bits': (0.0, 'has no free bits')} for name in DISENTANGLING},
    **{name: {field: (neutral, _NO_KL_WEIGHT) for field, neutral in (
        ('beta', 1.0), ('kl_warmup_steps', 0), ('free_bits', 0.0), ('num_samples', 1))}
       for name in VQ},
}
# The fields only some objectives read, and which.
USERS = {
    'tc_weight': ('beta_tcvae', 'factor_vae'),
    'tc_estimator': ('beta_tcvae',),
    'dip_lambda_od': ('dip_vae_i', 'dip_vae_ii'),
    'dip_lambda_d': ('dip_vae_i', 'dip_vae_ii'),
    'discriminator_hidden': ('factor_vae',),
    'discriminator_learning_rate': ('factor_vae',),
    'discriminator_b1': ('factor_vae',),
    'discriminator_b2': ('factor_vae',),
    'commitment': ('vq_vae',),
}


class ObjectiveConfigError(ValueError):
  """An objective field that cannot work or would be ignored; the message names it."""


def _check(ok, field, message):
  if not ok:
    raise ObjectiveConfigError(f'config.objective.{field}: {message}')


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_unused(name, values):
  """Refuses a field `name` has no use for (UNUSED) that `values` (a mapping from field
  names, e.g. config.objective) sets away from its neutral value."""
  for field, (neutral, why) in UNUSED.get(name, {}).items():
    _check(values[field] == neutral, field,
           f'{name!r} {why.format(field=field)}; it must stay {neutral!r}, got {values[field]!r}')


def validate_config(objective_config, defaults):
  """Refuses, naming the field, an objective field that cannot work, one the objective has
  no use for set away from its neutral value, or one that only other objectives read set
  away from its value in `defaults` (config.default_config().objective)."""
  o = objective_config
  _check(o.get('name') in OBJECTIVES, 'name', f'{o.get("name")!r} is not one of {OBJECTIVES}')
  for field, low, strict in (('beta', 0, False), ('free_bits', 0, False),
                             ('tc_weight', 0, False), ('dip_lambda_od', 0, False),
                             ('dip_lambda_d', 0, False), ('commitment', 0, False),
                             ('discriminator_learning_rate', 0, True)):
    value = o.get(field)
    _check(_is_number(value) and math.isfinite(value) and (value > low if strict else
                                                           value >= low),
           field, f'must be {">" if strict else ">="} {low}, got {value!r}')
  for field, low in (('kl_warmup_steps', 0), ('num_samples', 1)):
    value = o.get(field)
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= low, field,
           f'must be an int >= {low}, got {value!r}')
  for field in ('discriminator_b1', 'discriminator_b2'):
    value = o.get(field)
    _check(_is_number(value) and 0 <= value < 1, field, f'must be in [0, 1), got {value!r}')
  hidden = tuple(o.get('discriminator_hidden') or ())
  _check(len(hidden) > 0 and all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                 for w in hidden), 'discriminator_hidden',
         f'needs one or more positive widths, got {hidden!r}')
  _check(o.get('tc_estimator') in TC_ESTIMATORS, 'tc_estimator',
         f'{o.get("tc_estimator")!r} is not one of {TC_ESTIMATORS}')
  check_unused(o.name, o)
  for field, users in USERS.items():
    value, default = o[field], defaults[field]
    same = value == default or (isinstance(value, (tuple, list)) and tuple(value) == default)
    _check(o.name in users or same, field, f'applies to {" and ".join(users)} only, not '
           f'{o.name!r}; leave it at {default!r}')
_DISCRIMINATOR_INIT_STREAM = 0xD15C  # fold_in tag of its init key (the VAE's is untouched).


def draw_noise(model, key, num_samples, batch_size):
  """Standard normal eps [num_samples, batch_size, model.noise_dim] for the reparameterisation."""
  return jax.random.normal(key, (num_samples, batch_size, model.noise_dim))


def terms(model, params, x, eps, labels=None, decode=True):
  """The model's Terms for images x [B, ...] and noise eps [k, B, noise_dim]."""
  return model.apply({'params': params}, x, eps, labels, decode)


def layer_rate(layer):
  """KL(q || p) of one layer per latent [k, B, n]: analytic where given, else log q - log p.

  n is the layer's latent count when its terms factorise over latents, else 1
  (one single-sample estimate for the whole layer). Entries of a sampled rate
  are not KLs and may be negative; their sum over the layer estimates its KL.
  """
  k, batch = layer.z.shape[:2]
  if layer.kl is not None:
    rate = jnp.broadcast_to(layer.kl, layer.z.shape)
  else:
    rate = layer.log_q - layer.log_p
  return rate.reshape(k, batch, -1)


def rates(model_terms):
  """Every layer's `layer_rate`, bottom-up along the last axis: [k, B, sum n_l]."""
  return jnp.concatenate([layer_rate(layer) for layer in model_terms.layers], axis=-1)


def log_weights(model_terms):
  """log p(x, z) - log q(z | x) [k, B]: the importance weights (Burda et al. 2015, eq. 8)."""
  log_p = sum(jnp.sum(l.log_p.reshape(l.z.shape[:2] + (-1,)), -1) for l in model_terms.layers)
  log_q = sum(jnp.sum(l.log_q.reshape(l.z.shape[:2] + (-1,)), -1) for l in model_terms.layers)
  return model_terms.log_px_z + log_p - log_q


def kl_weight(step, beta, warmup_steps):
  """beta * min(1, step / warmup_steps): linear KL warm-up; 0 warm-up steps means beta.

  Bowman et al. 2016, "Generating Sentences from a Continuous Space"; Sønderby et
  al. 2016, "Ladder Variational Autoencoders". `step` may be traced.
  """
  if warmup_steps == 0:
    return jnp.asarray(beta, jnp.float32)
  fraction = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
  return beta * fraction


def elbo_terms(model, params, x, key, labels=None):
  """Per-example terms of the ELBO: (log p(x | z) [B], KL(q || p) per latent [B, n]).

  One reparameterised sample z ~ q(z | x) per datapoint; the KL term analytic
  where the model gives it (Kingma & Welling 2013, eq. 10) and the sampled
  log q - log p on the same z otherwise (`layer_rate`), its entries summing to
  the KL in expectation.
  """
  t = terms(model, params, x, draw_noise(model, key, 1, x.shape[0]), labels)
  return t.log_px_z[0], rates(t)[0]


def free_bits_kl(kl, free_bits):
  """sum_d max(free_bits, mean over the batch of KL_d), from per-example KL [B, n].

  Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
  Flow", eq. 15: a latent (or, where the KL does not factorise, a layer) whose KL
  is under the floor gets no gradient pushing it further towards the prior,
  which keeps units from collapsing early.
  """
  return jnp.sum(jnp.maximum(free_bits, jnp.mean(kl, axis=0)))


def elbo(model, params, x, key, *, kl_weight=1.0, free_bits=0.0, labels=None):
  """-mean(log p(x | z) - kl_weight * KL) and metrics; KL floored per latent if free_bits > 0.

  Kingma & Welling 2013. The metrics report the true ELBO (weight 1, no free
  bits) whatever the loss uses: 'elbo', 'recon', 'kl' and 'loss'.
  """
  recon, kl = elbo_terms(model, params, x, key, labels)
  kl_sum = jnp.sum(kl, axis=-1)
  # Without the floor the mean of per-example sums is the same number; the branch
  # keeps jnp.maximum's tie gradient (one half) away from latents with KL exactly 0.
  kl_term = free_bits_kl(kl, free_bits) if free_bits > 0 else jnp.mean(kl_sum)
  loss = -jnp.mean(recon) + kl_weight * kl_term
  metrics = {
      'elbo': jnp.mean(recon - kl_sum),
      'recon': jnp.mean(recon),
      'kl': jnp.mean(kl_sum),
      'loss': loss,
  }
  return loss, metrics


def iwae_bound(model, params, x, key, *, num_samples, labels=None):
  """-mean of log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x), and metrics.

  Burda et al. 2015, "Importance Weighted Autoencoders", eq. 8. The k samples
  of every image go through the decoder as one [k * B] batch. Metrics:
  'iwae_bound'; 'elbo', the mean of the k single-sample ELBO estimates (the
  bound at k = 1); 'recon', mean log p(x | z_i); 'kl', KL(q || p) analytic
  where the model gives it, else its estimate from the k samples; 'loss'.
  """
  t = terms(model, params, x, draw_noise(model, key, num_samples, x.shape[0]), labels)
  log_w = log_weights(t)
  bound = jax.nn.logsumexp(log_w, axis=0) - math.log(num_samples)
  loss = -jnp.mean(bound)
  metrics = {
      'iwae_bound': jnp.mean(bound),
      'elbo': jnp.mean(log_w),
      'recon': jnp.mean(t.log_px_z),
      'kl': jnp.mean(jnp.sum(rates(t), axis=-1)),
      'loss': loss,
  }
  return loss, metrics


def _gaussian_terms(model, params, x, key, labels):
  """(terms, z, mean, log_var) of one sample per image, each [B, D], from a one-layer
  model with a diagonal Gaussian q (what config validation allows these objectives)."""
  t = terms(model, params, x, draw_noise(model, key, 1, x.shape[0]), labels)
  layer = t.layers[0]
  mean, log_var = (jnp.broadcast_to(a, layer.z.shape)[0] for a in (layer.mean, layer.log_var))
  return t, layer.z[0], mean, log_var


def log_batch_weights(batch_size, dataset_size, estimator):
  """log w [B, B], row i the weights of q(z_i) ~ sum_j w_ij q(z_i | x_j) over the batch.

  Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", sec. 3 and
  app. C. 'mss' (minibatch stratified sampling): z_i's own image weighs 1/N, one
  other (N - M) / (N M) and the rest 1/M, M = B - 1, an unbiased estimate of
  q(z_i) = (1/N) sum_n q(z_i | x_n) (the own image taken from the diagonal,
  which the paper's code misplaces, rtqichen/beta-tcvae#1). 'mws' (minibatch
  weighted sampling): 1/B each. Every row sums to 1, so a batch of identical
  posteriors has q(z) = q(z | x) and no total correlation. Chen et al.'s MWS
  divides by N B instead of B; that shifts log q(z) by -log N and the reported
  TC by (D - 1) log N, and leaves every gradient as it is.
  """
  if estimator == 'mws':
    return jnp.full((batch_size, batch_size), -math.log(batch_size))
  if estimator != 'mss':
    raise ValueError(f'objective.tc_estimator: {estimator!r} is not one of {TC_ESTIMATORS}')
  n, m = dataset_size, batch_size - 1
  if m < 1 or n <= m:
    raise ValueError(f"objective.tc_estimator='mss' needs 2 <= batch size < dataset size, "
                     f'got {batch_size} and {dataset_size}')
  w = np.full((batch_size, batch_size), 1.0 / m)
  rows = np.arange(batch_size)
  w[rows, rows] = 1.0 / n
  w[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
  return jnp.asarray(np.log(w), jnp.float32)


def decomposed_kl(z, mean, log_var, log_pz, log_w):
  """Chen et al.'s decomposition of log q(z | x) - log p(z), each [B], for z [B, D]:

    index-code MI       log q(z_i | x_i) - log q(z_i)
    total correlation   log q(z_i) - sum_d log q(z_id)
    dimension-wise KL   sum_d log q(z_id) - log p(z_i)

  q(z) and each marginal q(z_d) estimated from the batch with weights log_w
  (`log_batch_weights`); log_pz [B] the prior's density, which must factorise
  over latents for the last term to be a sum of per-latent KLs. The three add
  up to log q(z_i | x_i) - log p(z_i) exactly, whatever the estimate.
  """
  pairs = distributions.gaussian_log_prob(z[:, None, :], mean[None], log_var[None])  # [B, B, D]
  log_qz_x = jnp.sum(jnp.diagonal(pairs, axis1=0, axis2=1), axis=0)
  log_qz = jax.nn.logsumexp(log_w + jnp.sum(pairs, axis=-1), axis=1)
  log_qz_product = jnp.sum(jax.nn.logsumexp(log_w[:, :, None] + pairs, axis=1), axis=-1)
  return log_qz_x - log_qz, log_qz - log_qz_product, log_qz_product - log_pz


def beta_tcvae(model, params, x, key, *, kl_weight=1.0, tc_weight=1.0, dataset_size,
               estimator='mws', labels=None):
  """Chen et al. 2018: -E log p(x | z) + kl_weight * (MI + dimension-wise KL) + tc_weight * TC.

  The paper's alpha = gamma = kl_weight (beta-TCVAE's defaults: 1) and its beta
  = tc_weight; tc_weight = kl_weight is the beta-VAE with a sampled KL. Metrics:
  'elbo' (analytic KL), 'recon', 'kl', 'mi', 'tc', 'dimwise_kl', 'loss'.
  """
  t, z, mean, log_var = _gaussian_terms(model, params, x, key, labels)
  layer = t.layers[0]
  log_pz = jnp.sum(layer.log_p.reshape(layer.z.shape[:2] + (-1,))[0], axis=-1)
  mi, tc, dimwise_kl = decomposed_kl(
      z, mean, log_var, log_pz, log_batch_weights(x.shape[0], dataset_size, estimator))
  recon, kl = t.log_px_z[0], jnp.sum(rates(t)[0], axis=-1)
  loss = (-jnp.mean(recon) + kl_weight * (jnp.mean(mi) + jnp.mean(dimwise_kl))
          + tc_weight * jnp.mean(tc))
  metrics = {'elbo': jnp.mean(recon - kl), 'recon': jnp.mean(recon), 'kl': jnp.mean(kl),
             'mi': jnp.mean(mi), 'tc': jnp.mean(tc), 'dimwise_kl': jnp.mean(dimwise_kl),
             'loss': loss}
  return loss, metrics


def dip_regularizer(mean, log_var, *, lambda_od, lambda_d, kind):
  """Kumar et al. 2018, eq. 6 / 8: lambda_od sum_{i != j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2.

  C is the covariance of the posterior means over the batch (DIP-VAE I), or of
  q(z) itself, that plus the mean of the posterior variances (DIP-VAE II).
  """
  centred = mean - jnp.mean(mean, axis=0)
  cov = centred.T @ centred / mean.shape[0]
  if kind == 'ii':
    cov = cov + jnp.diag(jnp.mean(jnp.exp(log_var), axis=0))
  diagonal = jnp.diagonal(cov)
  off_diagonal = cov - jnp.diag(diagonal)
  return lambda_od * jnp.sum(jnp.square(off_diagonal)) + lambda_d * jnp.sum(jnp.square(diagonal - 1))


def dip_vae(model, params, x, key, *, kl_weight=1.0, lambda_od, lambda_d, kind, labels=None):
  """Kumar et al. 2018: the negative ELBO (KL weighted) plus `dip_regularizer`.
  Metrics: 'elbo', 'recon', 'kl', 'dip_regularizer', 'loss'."""
  t, _, mean, log_var = _gaussian_terms(model, params, x, key, labels)
  recon, kl = t.log_px_z[0], jnp.sum(rates(t)[0], axis=-1)
  regularizer = dip_regularizer(mean, log_var, lambda_od=lambda_od, lambda_d=lambda_d, kind=kind)
  loss = -jnp.mean(recon) + kl_weight * jnp.mean(kl) + regularizer
  metrics = {'elbo': jnp.mean(recon - kl), 'recon': jnp.mean(recon), 'kl': jnp.mean(kl),
             'dip_regularizer': regularizer, 'loss': loss}
  return loss, metrics


class Discriminator(nn.Module):
  """FactorVAE's discriminator: z [B, D] -> logits [B, 2] of (from q(z), from prod_d q(z_d)).
  Kim & Mnih 2018, app.: 6 layers of 1,000 units with leaky ReLU (slope 0.2)."""

  hidden: tuple

  @nn.compact
  def __call__(self, z):
    h = z
    for width in self.hidden:
      h = nn.leaky_relu(nn.Dense(width)(h), 0.2)
    return nn.Dense(2)(h)


def permute_dims(key, z):
  """Each latent of z [B, D] shuffled over the batch on its own: samples of prod_d q(z_d)."""
  keys = jax.random.split(key, z.shape[-1])
  return jax.vmap(lambda k, column: jax.random.permutation(k, column), in_axes=(0, 1),
                  out_axes=1)(keys, z)


def factor_vae(model, params, x, key, *, kl_weight=1.0, tc_weight, discriminator, labels=None):
  """Kim & Mnih 2018: -ELBO (KL weighted) + tc_weight * TC, TC = E_q(z) log D(z) / (1 - D(z))
  from the discriminator, which learns to tell z ~ q(z) from its latents permuted
  across the batch (disentanglement_lib's choice: the same batch, not a second one).
  Returns the sum of the VAE's and the discriminator's losses, each blind to the
  other's parameters. Metrics: 'elbo', 'recon', 'kl', 'tc', 'loss' (the VAE's),
  'discriminator_loss', 'discriminator_accuracy'.
  """
  z_key, permute_key = jax.random.split(key)
  t, z, _, _ = _gaussian_terms(model, params, x, z_key, labels)
  recon, kl = t.log_px_z[0], jnp.sum(rates(t)[0], axis=-1)
  d_params = params[DISCRIMINATOR]
  logits = discriminator.apply({'params': jax.lax.stop_gradient(d_params)}, z)
  tc = jnp.mean(logits[:, 0] - logits[:, 1])
  vae_loss = -jnp.mean(recon) + kl_weight * jnp.mean(kl) + tc_weight * tc
  fixed = jax.lax.stop_gradient(z)
  both = discriminator.apply({'params': d_params},
                             jnp.concatenate([fixed, permute_dims(permute_key, fixed)]))
  targets = jnp.concatenate([jnp.zeros(len(z), jnp.int32), jnp.ones(len(z), jnp.int32)])
  d_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(both, targets))
  metrics = {'elbo': jnp.mean(recon - kl), 'recon': jnp.mean(recon), 'kl': jnp.mean(kl),
             'tc': tc, 'loss': vae_loss, 'discriminator_loss': d_loss,
             'discriminator_accuracy': jnp.mean(jnp.argmax(both, -1) == targets)}
  return vae_loss + d_loss, metrics


CODEBOOK = 'codebook'  # The VQ-VAE's codebook: its top-level key in the parameter tree.
# The VQ-VAE's networks, frozen while its prior learns (code_prior).
FROZEN_IN_STAGE_TWO = ('encoder', 'decoder', CODEBOOK)
_SMOOTHING = 1e-5  # Laplace smoothing of the codebook counts (Sonnet's VectorQuantizerEMA).


def code_usage(codes, size):
  """(perplexity, fraction of the K codes used) of the codes in a batch [...]: the
  perplexity exp(H) of their frequencies is K when all are used equally, 1 for one."""
  frequencies = jnp.mean(jax.nn.one_hot(codes.reshape(-1), size), axis=0)
  entropy = -jnp.sum(frequencies * jnp.log(jnp.where(frequencies > 0, frequencies, 1.0)))
  return jnp.exp(entropy), jnp.mean(frequencies > 0)


def codebook_targets(codebook, z_e, codes, key, *, decay, restart):
  """The EMA codebook's next values (van den Oord et al. 2017, app. A.1) and the restart count.

  counts <- decay counts + (1 - decay) n, sums <- decay sums + (1 - decay) sum of the z_e
  assigned, embedding = sums / Laplace-smoothed counts. With restart > 0, a code whose
  count falls below it is moved to one of the batch's encoder outputs drawn at random
  (count 1; Dhariwal et al. 2020's restarts), so no code stays dead.
  """
  size, dim = codebook['embedding'].shape
  flat = z_e.reshape(-1, dim)
  one_hot = jax.nn.one_hot(codes.reshape(-1), size, dtype=flat.dtype)
  counts = decay * codebook['counts'] + (1.0 - decay) * jnp.sum(one_hot, axis=0)
  sums = decay * codebook['sums'] + (1.0 - decay) * one_hot.T @ flat
  restarts = jnp.zeros((), jnp.float32)
  if restart > 0:
    dead = counts < restart
    fresh = flat[jax.random.randint(key, (size,), 0, flat.shape[0])]
    sums = jnp.where(dead[:, None], fresh, sums)
    counts = jnp.where(dead, 1.0, counts)
    restarts = jnp.sum(dead.astype(jnp.float32))
  total = jnp.sum(counts)
  smoothed = (counts + _SMOOTHING) / (total + size * _SMOOTHING) * total
  return {'embedding': sums / smoothed[:, None], 'counts': counts, 'sums': sums}, restarts


def vq_vae(model, params, x, key, *, commitment):
  """van den Oord et al. 2017, eq. 3: -log p(x | z_q) + commitment |z_e - sg(z_q)|^2, plus
  |sg(z_e) - z_q|^2 when the codebook learns by that loss (model.codebook_update 'loss'),
  or the EMA codebook's step (module doc) when it keeps moving averages. Squared
  distances are summed over the code grid, as log p(x | z) over the pixels.

  Metrics: 'elbo' (log p(x | z_q) + log p(codes): with the uniform prior, the
  reconstruction less h w log K), 'recon', 'kl' (-log p(codes)), 'commitment' (the
  squared distance), 'perplexity' and 'codes_used' of the batch's codes, 'restarts'
  (EMA codes moved this step), 'loss' (without the EMA step's term).
  """
  t, z_e, codes = model.apply({'params': params}, x, method='vq_terms')
  recon, log_p = t.log_px_z[0], t.layers[0].log_p[0]
  book = params[CODEBOOK]
  z_q = jnp.take(book['embedding'], codes, axis=0)
  per_image = lambda a: jnp.sum(jnp.square(a), axis=tuple(range(1, a.ndim)))
  distance = per_image(z_e - jax.lax.stop_gradient(z_q))
  loss = -jnp.mean(recon) + commitment * jnp.mean(distance)
  perplexity, used = code_usage(codes, book['embedding'].shape[0])
  metrics = {'elbo': jnp.mean(recon + log_p), 'recon': jnp.mean(recon), 'kl': -jnp.mean(log_p),
             'commitment': jnp.mean(distance), 'perplexity': perplexity, 'codes_used': used}
  codebook = model.codebook
  if not codebook.ema:
    loss = loss + jnp.mean(per_image(jax.lax.stop_gradient(z_e) - z_q))
    metrics['loss'] = loss
    return loss, metrics
  targets, metrics['restarts'] = codebook_targets(
      book, jax.lax.stop_gradient(z_e), codes, key, decay=codebook.decay,
      restart=codebook.restart)
  step = sum(0.5 * jnp.sum(jnp.square(book[name] - jax.lax.stop_gradient(target)))
             for name, target in targets.items())
  metrics['loss'] = loss
  return loss + step, metrics


def code_prior(model, params, x, key):
  """The VQ-VAE's second stage: -log p(codes) of the prior over each image's code grid,
  the encoder and codebook frozen. Metrics: 'code_nll' (nats per image), 'loss'."""
  del key  # The codes of an image are a function of the image.
  t = terms(model, params, x, jnp.zeros((1, x.shape[0], 0)), decode=False)
  nll = -jnp.mean(t.layers[0].log_p[0])
  return nll, {'code_nll': nll, 'loss': nll}


def extra_params(objective_config, model, key) -> dict:
  """Parameters the objective trains beside the model's (top-level keys of the tree): FactorVAE's
  discriminator, from its own stream of `key`, so the model's initial parameters stay as
  they are; {} for every other objective."""
  if objective_config.name != 'factor_vae':
    return {}
  discriminator = Discriminator(tuple(objective_config.discriminator_hidden))
  d_key = jax.random.fold_in(key, _DISCRIMINATOR_INIT_STREAM)
  return {DISCRIMINATOR: discriminator.init(d_key, jnp.zeros((1, model.noise_dim)))['params']}


def extra_optimizers(objective_config, model=None) -> dict:
  """{top-level key: its optax optimiser} for the parameters that do not follow the config's:
  FactorVAE's discriminator with Adam at the paper's settings (lr 1e-4, b1 0.5, b2 0.9
  by default); a VQ-VAE's EMA codebook with SGD at rate 1 (module doc); and in the
  VQ-VAE's second stage its encoder, codebook and decoder, frozen."""
  if objective_config.name == 'vq_vae' and getattr(model, 'codebook', None) is not None:
    return {CODEBOOK: optax.sgd(1.0)} if model.codebook.ema else {}
  if objective_config.name == 'code_prior':
    return {name: optax.set_to_zero() for name in FROZEN_IN_STAGE_TWO}
  if objective_config.name != 'factor_vae':
    return {}
  return {DISCRIMINATOR: optax.adam(objective_config.discriminator_learning_rate,
                                    b1=objective_config.discriminator_b1,
                                    b2=objective_config.discriminator_b2)}


def loss_fn_of_config(model, objective_config, dataset_size):
  """`make_loss_fn` with the config's objective fields; dataset_size N for the 'mss' estimate."""
  o = objective_config
  options = {}
  if o.name == 'vq_vae':
    options = dict(commitment=o.commitment)
  elif o.name in DISENTANGLING:
    options = dict(tc_weight=o.tc_weight, tc_estimator=o.tc_estimator,
                   dataset_size=dataset_size, dip_lambda_od=o.dip_lambda_od,
                   dip_lambda_d=o.dip_lambda_d,
                   discriminator_hidden=tuple(o.discriminator_hidden))
  return make_loss_fn(model, o.name, beta=o.beta, warmup_steps=o.kl_warmup_steps,
                      free_bits=o.free_bits, num_samples=o.num_samples, **options)


def make_loss_fn(model, objective, *, beta, warmup_steps, free_bits, num_samples,
                 tc_weight=1.0, tc_estimator='mws', dataset_size=0, dip_lambda_od=10.0,
                 dip_lambda_d=100.0, discriminator_hidden=(1000,) * 6, commitment=0.25):
  """The config's objective as loss_fn(params, x, key, step, labels=None) -> (loss, metrics).

  'elbo' uses one sample, beta with linear warm-up and free bits, and reports the
  weight in use as metric 'kl_weight'. 'iwae' uses `num_samples` samples and has
  no KL term to weight, so beta, warm-up and free bits must be left at their
  neutral values (1, 0, 0) rather than be silently ignored. The disentangling
  objectives (DISENTANGLING) use one sample, beta with warm-up as the weight of
  their KL terms, and their own fields; they have no free bits. The VQ-VAE's
  (VQ) have no KL weight: a one-hot q has a constant KL under the uniform prior,
  and the second stage trains the prior alone.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f'unknown objective {objective!r}; expected one of {OBJECTIVES}')
  check_unused(objective, {'beta': beta, 'kl_warmup_steps': warmup_steps,
                           'free_bits': free_bits, 'num_samples': num_samples})
  if objective in VQ:
    kind = (functools.partial(vq_vae, commitment=commitment) if objective == 'vq_vae'
            else code_prior)

    def vq_loss(params, x, key, step, labels=None):
      del step, labels  # No schedule; a VQ-VAE is unconditional.
      return kind(model, params, x, key)

    return vq_loss
  if objective in DISENTANGLING:
    if objective == 'beta_tcvae':
      if tc_estimator not in TC_ESTIMATORS:
        raise ValueError(f'objective.tc_estimator: {tc_estimator!r} is not one of '
                         f'{TC_ESTIMATORS}')
      kind = functools.partial(beta_tcvae, tc_weight=tc_weight, dataset_size=dataset_size,
                               estimator=tc_estimator)
    elif objective == 'factor_vae':
      kind = functools.partial(factor_vae, tc_weight=tc_weight,
                               discriminator=Discriminator(tuple(discriminator_hidden)))
    else:
      kind = functools.partial(dip_vae, lambda_od=dip_lambda_od, lambda_d=dip_lambda_d,
                               kind=objective.rsplit('_', 1)[1])

    def disentangling_loss(params, x, key, step, labels=None):
      weight = kl_weight(step, beta, warmup_steps)
      loss, metrics = kind(model, params, x, key, kl_weight=weight, labels=labels)
      return loss, dict(metrics, kl_weight=weight)

    return disentangling_loss
  if objective == 'elbo':
    def elbo_loss(params, x, key, step, labels=None):
      weight = kl_weight(step, beta, warmup_steps)
      loss, metrics = elbo(model, params, x, key, kl_weight=weight, free_bits=free_bits,
                           labels=labels)
      return loss, dict(metrics, kl_weight=weight)

    return elbo_loss
  def iwae_loss(params, x, key, step, labels=None):
    del step  # The IWAE bound has no schedule.
    return iwae_bound(model, params, x, key, num_samples=num_samples, labels=labels)

  return iwae_loss
