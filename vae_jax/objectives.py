"""Training objectives: the ELBO (with beta, KL warm-up and free bits) and the IWAE bound.

Every function here is pure and traceable, so it can run inside the jitted,
`lax.scan`ned train step. Metrics are means over the batch, in nats per example.
They read only the model's terms (models/vae.py): log p(x | z) [k, B] and, per
stochastic layer, (z, log q, log p, analytic KL or None). Nothing here asks
which prior, posterior, likelihood or hierarchy the model has.
"""

import math

import jax
import jax.numpy as jnp

OBJECTIVES = ('elbo', 'iwae')


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


def make_loss_fn(model, objective, *, beta, warmup_steps, free_bits, num_samples):
  """The config's objective as loss_fn(params, x, key, step, labels=None) -> (loss, metrics).

  'elbo' uses one sample, beta with linear warm-up and free bits, and reports the
  weight in use as metric 'kl_weight'. 'iwae' uses `num_samples` samples and has
  no KL term to weight, so beta, warm-up and free bits must be left at their
  neutral values (1, 0, 0) rather than be silently ignored.
  """
  if objective == 'elbo':
    if num_samples != 1:
      raise ValueError(f"objective.num_samples={num_samples}: the 'elbo' objective uses one "
                       "sample per datapoint; use objective.name='iwae' for k samples")

    def elbo_loss(params, x, key, step, labels=None):
      weight = kl_weight(step, beta, warmup_steps)
      loss, metrics = elbo(model, params, x, key, kl_weight=weight, free_bits=free_bits,
                           labels=labels)
      return loss, dict(metrics, kl_weight=weight)

    return elbo_loss
  if objective == 'iwae':
    if beta != 1.0 or warmup_steps != 0 or free_bits != 0.0:
      raise ValueError(
          "objective.beta, objective.kl_warmup_steps and objective.free_bits apply to "
          f"'elbo' only; 'iwae' needs 1, 0, 0 (got {beta}, {warmup_steps}, {free_bits})")

    def iwae_loss(params, x, key, step, labels=None):
      del step  # The IWAE bound has no schedule.
      return iwae_bound(model, params, x, key, num_samples=num_samples, labels=labels)

    return iwae_loss
  raise ValueError(f'unknown objective {objective!r}; expected one of {OBJECTIVES}')
