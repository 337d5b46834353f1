"""Training objectives: the ELBO (with beta, KL warm-up and free bits) and the IWAE bound.

Every function here is pure and traceable, so it can run inside the jitted,
`lax.scan`ned train step. Metrics are means over the batch, in nats per example.
The model follows the VAE contract of models.py: `encode(x) -> (mean, log_var)`
of q(z_1 | x), `decode(z_1) -> out` read by `distributions.log_likelihood(
model.likelihood, x, out)`. A one-layer model has a standard normal prior. A
hierarchical one (Burda et al. 2015, sec. 5) also has `upper_latent_dims`,
`encode_upper(z_l, l - 1)` for q(z_{l+1} | z_l) and `prior_upper(z_{l+1}, l - 1)`
for p(z_l | z_{l+1}), and p(z_L) = N(0, I); its log importance weights come from
`hierarchical_terms`, the one function behind its ELBO, its IWAE bound and its
importance-sampled log p(x).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import distributions

OBJECTIVES = ('elbo', 'iwae')


def encode(model, params, x):
  """(mean, log_var) of the diagonal Gaussian q(z | x), each [B, D]."""
  return model.apply({'params': params}, x, method='encode')


def decode(model, params, z):
  """The decoder's output for latents z [B, D], read by `distributions.log_likelihood`."""
  return model.apply({'params': params}, z, method='decode')


def upper_latent_dims(model):
  """Sizes of the stochastic layers above z_1, bottom-up; () for a one-layer model."""
  return tuple(getattr(model, 'upper_latent_dims', ()))


def noise_dim(model, latent_dim):
  """Standard normal draws per sample, D_1 + ... + D_L, from latent_dim = D_1."""
  return latent_dim + sum(upper_latent_dims(model))


def sample_rows(a, num_samples):
  """[B, D] or [num_samples, B, D] -> [num_samples * B, D]: one row per (sample, image)."""
  return jnp.broadcast_to(a, (num_samples,) + a.shape[-2:]).reshape((-1, a.shape[-1]))


def posterior_chain(model, params, mean, log_var, eps):
  """Draws z_1, ..., z_L ~ q(z | x) through eps [N, D_1 + ... + D_L].

  mean and log_var [N, D_1] are q(z_1 | x)'s; eps is split into the layers'
  draws, bottom-up. Returns (zs, means, rate): the samples [N, D_l] of each
  layer, the mean of each layer's q at the sample below it (E q(z_1 | x) for
  layer 1), and log q(z | x) - log p(z) per latent [N, sum D], log q written
  through eps as in `importance_log_weights`.
  """
  dims = (mean.shape[-1],) + upper_latent_dims(model)
  eps_layers = jnp.split(eps, np.cumsum(dims)[:-1], axis=-1)
  zs, means, log_q = [], [], []
  for layer, e in enumerate(eps_layers):
    if layer:
      mean, log_var = model.apply({'params': params}, zs[-1], layer - 1, method='encode_upper')
    log_var = distributions.clip_log_var(log_var)
    means.append(mean)
    zs.append(mean + jnp.exp(0.5 * log_var) * e)
    log_q.append(distributions.standard_normal_log_prob(e) - 0.5 * log_var)
  return zs, means, jnp.concatenate(log_q, axis=-1) - prior_log_prob(model, params, zs)


def prior_log_prob(model, params, zs):
  """log p(z_l | z_{l+1}) per latent, and log N(z_L; 0, I) for the top, [N, sum D]."""
  log_p = []
  for layer in range(len(zs) - 1):
    mean, log_var = model.apply({'params': params}, zs[layer + 1], layer, method='prior_upper')
    log_p.append(distributions.gaussian_log_prob(zs[layer], mean, log_var))
  log_p.append(distributions.standard_normal_log_prob(zs[-1]))
  return jnp.concatenate(log_p, axis=-1)


def hierarchical_terms(model, params, x, mean, log_var, eps):
  """(log p(x | z_1) [k, B], log q(z | x) - log p(z) per latent [k, B, sum D]).

  For a hierarchical model, z = (z_1, ..., z_L) drawn from q through eps
  [k, B, D_1 + ... + D_L]; mean, log_var [B, D_1] are q(z_1 | x)'s. The log
  importance weight is the first term minus the sum of the second (Burda et al.
  2015, eq. 8 with q(z | x) = q(z_1 | x) prod q(z_{l+1} | z_l)). The k * B
  samples go through each network as one batch.
  """
  k, batch = eps.shape[:2]
  zs, _, rate = posterior_chain(model, params, sample_rows(mean, k), sample_rows(log_var, k),
                                sample_rows(eps, k))
  out = decode(model, params, zs[0])
  out = out.reshape((k, batch) + out.shape[1:])
  return log_px_given_z(model, x, out), rate.reshape(k, batch, -1)


def log_px_given_z(model, x, out):
  """log p(x | z) [...], from images x [..., H, W, C] and decoder output out [..., H, W, C * c].

  The value of `distributions.log_likelihood`, with each image laid out as one
  row [..., 1, 1, c * H * W * C] first (the c parameter planes one after the
  other, so the likelihood's split of the last axis still finds them). XLA:CPU
  vectorises an elementwise loop along the minor axis only, and MNIST's minor
  axis has length 1: flat rows made the K=5,000 evaluation 2.2x faster
  (Bernoulli) to 4x faster (Gaussian) on a 2-core CPU.
  """
  c = distributions.decoder_channels(model.likelihood)
  *lead, height, width, channels = out.shape
  out = out.reshape(*lead, height * width, c, channels // c)
  out = jnp.swapaxes(out, -3, -2).reshape(*lead, 1, 1, -1)
  x = x.reshape(*x.shape[:-3], 1, 1, -1)
  return distributions.log_likelihood(model.likelihood, x, out)


def kl_weight(step, beta, warmup_steps):
  """beta * min(1, step / warmup_steps): linear KL warm-up; 0 warm-up steps means beta.

  Bowman et al. 2016, "Generating Sentences from a Continuous Space"; Sønderby et
  al. 2016, "Ladder Variational Autoencoders". `step` may be traced.
  """
  if warmup_steps == 0:
    return jnp.asarray(beta, jnp.float32)
  fraction = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
  return beta * fraction


def elbo_terms(model, params, x, key):
  """Per-example terms of the ELBO: (log p(x | z) [B], KL(q || p) per latent [B, D]).

  One reparameterised sample z ~ q(z | x) per datapoint and the analytic
  Gaussian KL (Kingma & Welling 2013, "Auto-Encoding Variational Bayes", eq. 10).
  A hierarchical model has no closed-form KL (p(z_1) is p(z_1 | z_2) averaged
  over z_2), so its KL term is the single-sample estimate log q(z | x) - log p(z)
  per latent, z the same sample as the reconstruction's, [B, D_1 + ... + D_L]:
  its sum is KL(q(z | x) || p(z)) in expectation, a single latent's entry is not
  a KL and may be negative.
  """
  mean, log_var = encode(model, params, x)
  if upper_latent_dims(model):
    shape = (1, mean.shape[0], noise_dim(model, mean.shape[-1]))
    eps = jax.random.normal(key, shape, mean.dtype)
    recon, rate = hierarchical_terms(model, params, x, mean, log_var, eps)
    return recon[0], rate[0]
  z = distributions.gaussian_sample(key, mean, log_var)
  recon = log_px_given_z(model, x, decode(model, params, z))
  return recon, distributions.gaussian_kl_to_standard_normal(mean, log_var)


def free_bits_kl(kl, free_bits):
  """sum_d max(free_bits, mean over the batch of KL_d), from per-example KL [B, D].

  Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
  Flow", eq. 15: a latent whose KL is under the floor gets no gradient pushing
  it further towards the prior, which keeps units from collapsing early.
  """
  return jnp.sum(jnp.maximum(free_bits, jnp.mean(kl, axis=0)))


def elbo(model, params, x, key, *, kl_weight=1.0, free_bits=0.0):
  """-mean(log p(x | z) - kl_weight * KL) and metrics; KL floored per latent if free_bits > 0.

  Kingma & Welling 2013. The metrics report the true ELBO (weight 1, no free
  bits) whatever the loss uses: 'elbo', 'recon', 'kl' and 'loss'.
  """
  recon, kl = elbo_terms(model, params, x, key)
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


def importance_log_weights(model, params, x, mean, log_var, eps):
  """(log p(x, z) - log q(z | x), log p(x | z_1)), each [k, B], for z drawn through eps.

  mean and log_var [B, D_1] are q(z_1 | x)'s, computed once by the caller; eps
  is [k, B, noise_dim(model, D_1)]. One layer: z = mean + std * eps. The k
  samples are decoded as one [k * B, D] batch so the work is one large matmul
  per layer. log q is written through eps (change of variables: log q(z) =
  log N(eps) - sum log std), which is exact even when std is tiny next to the
  mean and z - mean rounds to zero in float32. A hierarchical model's weights
  come from `hierarchical_terms`.
  """
  if upper_latent_dims(model):
    log_likelihood, rate = hierarchical_terms(model, params, x, mean, log_var, eps)
    return log_likelihood - jnp.sum(rate, axis=-1), log_likelihood
  log_var = distributions.clip_log_var(log_var)
  z = mean + jnp.exp(0.5 * log_var) * eps
  k, batch, dim = eps.shape
  out = decode(model, params, z.reshape(k * batch, dim))
  out = out.reshape((k, batch) + out.shape[1:])
  log_likelihood = log_px_given_z(model, x, out)
  log_pz = jnp.sum(distributions.standard_normal_log_prob(z), axis=-1)
  log_qz = jnp.sum(distributions.standard_normal_log_prob(eps) - 0.5 * log_var, axis=-1)
  return log_likelihood + log_pz - log_qz, log_likelihood


def iwae_bound(model, params, x, key, *, num_samples):
  """-mean of log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x), and metrics.

  Burda et al. 2015, "Importance Weighted Autoencoders", eq. 8. Metrics:
  'iwae_bound'; 'elbo', the mean of the k single-sample ELBO estimates (the
  bound at k = 1); 'recon', mean log p(x | z_i); 'kl', the analytic KL(q || p)
  for reference (for a hierarchical model its estimate from the k samples, the
  mean of log q(z_i | x) - log p(z_i)); 'loss'.
  """
  mean, log_var = encode(model, params, x)
  shape = (num_samples,) + mean.shape[:-1] + (noise_dim(model, mean.shape[-1]),)
  eps = jax.random.normal(key, shape, mean.dtype)
  log_w, log_likelihood = importance_log_weights(model, params, x, mean, log_var, eps)
  bound = jax.nn.logsumexp(log_w, axis=0) - math.log(num_samples)
  loss = -jnp.mean(bound)
  if upper_latent_dims(model):
    kl = jnp.mean(log_likelihood - log_w, axis=0)
  else:
    kl = jnp.sum(distributions.gaussian_kl_to_standard_normal(mean, log_var), axis=-1)
  metrics = {
      'iwae_bound': jnp.mean(bound),
      'elbo': jnp.mean(log_w),
      'recon': jnp.mean(log_likelihood),
      'kl': jnp.mean(kl),
      'loss': loss,
  }
  return loss, metrics


def make_loss_fn(model, objective, *, beta, warmup_steps, free_bits, num_samples):
  """The config's objective as loss_fn(params, x, key, step) -> (loss, metrics).

  'elbo' uses one sample, beta with linear warm-up and free bits, and reports the
  weight in use as metric 'kl_weight'. 'iwae' uses `num_samples` samples and has
  no KL term to weight, so beta, warm-up and free bits must be left at their
  neutral values (1, 0, 0) rather than be silently ignored.
  """
  if objective == 'elbo':
    if num_samples != 1:
      raise ValueError(f"objective.num_samples={num_samples}: the 'elbo' objective uses one "
                       "sample per datapoint; use objective.name='iwae' for k samples")

    def elbo_loss(params, x, key, step):
      weight = kl_weight(step, beta, warmup_steps)
      loss, metrics = elbo(model, params, x, key, kl_weight=weight, free_bits=free_bits)
      return loss, dict(metrics, kl_weight=weight)

    return elbo_loss
  if objective == 'iwae':
    if beta != 1.0 or warmup_steps != 0 or free_bits != 0.0:
      raise ValueError(
          "objective.beta, objective.kl_warmup_steps and objective.free_bits apply to "
          f"'elbo' only; 'iwae' needs 1, 0, 0 (got {beta}, {warmup_steps}, {free_bits})")

    def iwae_loss(params, x, key, step):
      del step  # The IWAE bound has no schedule.
      return iwae_bound(model, params, x, key, num_samples=num_samples)

    return iwae_loss
  raise ValueError(f'unknown objective {objective!r}; expected one of {OBJECTIVES}')
