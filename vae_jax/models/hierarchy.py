"""Top-down hierarchical VAEs: a bottom-up pass over x, then L stochastic groups from the top.

The family of the Ladder VAE (Sønderby et al. 2016), the bidirectional
IAF-VAE (Kingma et al. 2016), NVAE (Vahdat & Kautz 2020) and VDVAE (Child
2021). A deterministic bottom-up pass turns x into features a_l for each
group. The top-down pass carries a state s, a learned constant at the top;
group l (from L down to 1) reads it:

  p(z_l | z_>l) = N(mu_p(s), sigma_p(s)^2)          the prior, from the state
  q(z_l | x, z_>l)                                  the posterior, from s and a_l:
    'residual'  (NVAE)  N(mu_p + dmu(s, a_l), (sigma_p * dsigma(s, a_l))^2)
    'precision' (LVAE)  the precision-weighted product of N(mu_hat(a_l), sigma_hat(a_l)^2)
                        and the prior
  s <- resblock(s + h(s) + proj(z_l))                  the state then carries z_l down

and the likelihood reads the last state, so the decoder sees every group.
Groups are dense (MLP blocks on a vector state: the LVAE setting on MNIST)
or spatial (bottleneck residual conv blocks on a feature map at several
resolutions, nearest-neighbour unpooling between them: VDVAE, NVAE).

Consecutive groups of the same shape are one `nn.scan` over stacked
parameters, so a stage of 20 identical groups compiles like one; with `remat`
each group's activations are recomputed in the backward pass, so memory grows
slower than depth. The model keeps the contract of `models.vae.VAE`: called on
(x, eps [k, B, noise_dim]) it returns `Terms` with one `Layer` per group,
bottom-up, each with an analytic KL; `decode(z_top)` and `sample` draw the
groups below from their priors, at one temperature or one per group.
"""

import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import distributions
from vae_jax.models import priors
from vae_jax.models.vae import Layer, Terms

MERGES = ('residual', 'precision')
SCALES = ('softplus', 'exp')
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1.
# What a group's z comes from, per group of a generic pass (see TopDownVAE._top_down).
POSTERIOR, PRIOR, GIVEN = 0, 1, 2


def log_std(raw, scale):
  """A network's raw output -> log sigma: softplus(raw + c) (sigma = 1 at raw = 0) or raw itself.

  Both are bounded through distributions.clip_log_var, so no group's variance
  can reach 0 or overflow.
  """
  if scale == 'softplus':
    x = raw + _SOFTPLUS_ONE
    # log softplus(x) -> x as x -> -inf; the clamp keeps log(0) out of either branch's gradient.
    value = jnp.where(x < -15.0, x, jnp.log(jax.nn.softplus(jnp.maximum(x, -15.0))))
  else:
    value = raw
  return 0.5 * distributions.clip_log_var(2.0 * value)


def precision_merge(mean_a, log_std_a, mean_b, log_std_b):
  """The Gaussian proportional to N(mean_a, std_a^2) N(mean_b, std_b^2): (mean, log std).

  The Ladder VAE's posterior (Sønderby et al. 2016, eq. 17-18): the bottom-up
  estimate and the top-down prior weighted by their precisions.
  """
  precision_a, precision_b = jnp.exp(-2.0 * log_std_a), jnp.exp(-2.0 * log_std_b)
  precision = precision_a + precision_b
  mean = (mean_a * precision_a + mean_b * precision_b) / precision
  return mean, -0.5 * jnp.log(precision)


class DenseNet(nn.Module):
  """v [N, F] -> [N, out]: act, Dense(hidden), act, Dense(hidden), act, Dense(out)."""

  hidden: int
  out: int
  activation: Callable
  final_scale: float = 1.0  # 0: the last layer starts at zero.

  @nn.compact
  def __call__(self, v):
    h = nn.Dense(self.hidden)(self.activation(v))
    h = nn.Dense(self.hidden)(self.activation(h))
    init = (nn.initializers.zeros if self.final_scale == 0 else
            nn.initializers.variance_scaling(self.final_scale, 'fan_in', 'truncated_normal'))
    return nn.Dense(self.out, kernel_init=init)(self.activation(h))


class ConvNet(nn.Module):
  """VDVAE's bottleneck: act, 1x1 to hidden, act, 3x3, act, 3x3, act, 1x1 to out.

  At resolutions of 2 or less the 3x3 convolutions are 1x1 (as in VDVAE): a
  3x3 kernel there reads mostly padding.
  """

  hidden: int
  out: int
  activation: Callable
  final_scale: float = 1.0

  @nn.compact
  def __call__(self, v):
    k = (3, 3) if v.shape[-2] > 2 else (1, 1)
    h = nn.Conv(self.hidden, (1, 1))(self.activation(v))
    h = nn.Conv(self.hidden, k)(self.activation(h))
    h = nn.Conv(self.hidden, k)(self.activation(h))
    init = (nn.initializers.zeros if self.final_scale == 0 else
            nn.initializers.variance_scaling(self.final_scale, 'fan_in', 'truncated_normal'))
    return nn.Conv(self.out, (1, 1), kernel_init=init)(self.activation(h))


def _net(spatial):
  return ConvNet if spatial else DenseNet


class ResBlock(nn.Module):
  """s + net(s), the residual branch's last layer scaled down by the depth (as VDVAE)."""

  spatial: bool
  hidden: int
  activation: Callable
  final_scale: float

  @nn.compact
  def __call__(self, s, _=None):
    return s + _net(self.spatial)(self.hidden, s.shape[-1], self.activation, self.final_scale)(s)


class _EncoderStage(nn.Module):
  """One bottom-up block as a scan body: (s, unused) -> (s', s')."""

  spatial: bool
  hidden: int
  activation: Callable
  final_scale: float

  @nn.compact
  def __call__(self, s, unused_xs, unused_a=None):
    s = ResBlock(self.spatial, self.hidden, self.activation, self.final_scale)(s)
    return s, s


class Group(nn.Module):
  """One stochastic group of the top-down pass, as a scan body over (state, per-group inputs).

  inputs: (eps, temperature, source, z_given): standard normal noise shaped
  like z, the prior's temperature, where z comes from (POSTERIOR, PRIOR or
  GIVEN) and the given z (None when no group is given); a: the bottom-up
  features (None when the pass has no x). With features it returns the next
  state and (z, log_q, log_p, kl, q_mean), each shaped like z; without, the
  state and None.
  """

  latent_channels: int
  spatial: bool
  hidden: int
  activation: Callable
  merge: str
  scale: str
  final_scale: float

  @nn.compact
  def __call__(self, s, inputs, a):
    eps, temperature, source, z_given = inputs
    width, c = s.shape[-1], self.latent_channels
    net = _net(self.spatial)
    prior_out = net(self.hidden, 2 * c + width, self.activation, 0.0, name='prior')(s)
    p_mean, p_raw, h = jnp.split(prior_out, [c, 2 * c], axis=-1)
    p_log_std = log_std(p_raw, self.scale)
    outputs = None
    if a is not None:
      if self.merge == 'residual':
        q_out = net(self.hidden, 2 * c, self.activation, 1.0, name='posterior')(
            jnp.concatenate([s, a], axis=-1))
        d_mean, d_raw = jnp.split(q_out, 2, axis=-1)
        q_mean, q_log_std = p_mean + d_mean, p_log_std + log_std(d_raw, self.scale)
      else:
        q_out = net(self.hidden, 2 * c, self.activation, 1.0, name='posterior')(a)
        hat_mean, hat_raw = jnp.split(q_out, 2, axis=-1)
        q_mean, q_log_std = precision_merge(hat_mean, log_std(hat_raw, self.scale),
                                            p_mean, p_log_std)
      q_log_std = 0.5 * distributions.clip_log_var(2.0 * q_log_std)
      z_q = q_mean + jnp.exp(q_log_std) * eps
      log_q = distributions.standard_normal_log_prob(eps) - q_log_std
      kl = priors.gaussian_kl(q_mean, 2.0 * q_log_std, p_mean, 2.0 * p_log_std)
    z = p_mean + temperature * jnp.exp(p_log_std) * eps
    if z_given is not None:
      z = jnp.where(source == GIVEN, z_given, z)
    if a is not None:
      z = jnp.where(source == POSTERIOR, z_q, z)
      log_p = distributions.gaussian_log_prob(z, p_mean, 2.0 * p_log_std)
      outputs = (z, log_q, log_p, kl, q_mean)
    proj = nn.Conv(width, (1, 1)) if self.spatial else nn.Dense(width)
    s = s + h + proj(z) * self.final_scale
    s = ResBlock(self.spatial, self.hidden, self.activation, self.final_scale, name='block')(s)
    return s, outputs


def _stages(shapes):
  """Consecutive equal shapes -> [(shape, first index, count)]: the groups one scan covers."""
  stages = []
  for i, shape in enumerate(shapes):
    if stages and stages[-1][0] == shape:
      stages[-1] = (shape, stages[-1][1], stages[-1][2] + 1)
    else:
      stages.append((shape, i, 1))
  return stages


class TopDownVAE(nn.Module):
  """L stochastic groups, top-down (see the module docstring); the contract of models.VAE.

  latent_shapes: each group's z shape, bottom-up: (D,) for a dense group,
  (r, r, c) for a spatial one at resolution r (non-increasing upwards).
  Noise, given latents and the terms are laid out bottom-up, group after
  group, each flattened: eps [k, B, noise_dim] = [eps_1, ..., eps_L].
  """

  likelihood: object
  image_shape: Sequence[int]
  latent_shapes: Sequence[tuple]
  width: int
  hidden: int
  activation: Callable = nn.gelu
  merge: str = 'residual'
  scale: str = 'softplus'
  encoder_blocks: int = 1  # Bottom-up residual blocks per group (dense) / per resolution.
  scan: bool = True
  remat: bool = False
  num_classes: int = 0  # No conditional top-down models (validate_config refuses them).

  @property
  def spatial(self):
    return len(self.latent_shapes[0]) == 3

  @property
  def latent_dims(self):
    return tuple(int(np.prod(shape)) for shape in self.latent_shapes)

  @property
  def noise_dim(self):
    return sum(self.latent_dims)

  @property
  def num_groups(self):
    return len(self.latent_shapes)

  def _final_scale(self):
    # VDVAE scales each residual branch's last layer by 1/sqrt(depth).
    return 1.0 / math.sqrt(self.num_groups * (1 + self.encoder_blocks))

  def _blocks(self, body, count, name, in_axes, **attributes):
    """`count` copies of body: one nn.scan over stacked params, or a list (scan off, or 1)."""
    cls = nn.remat(body, prevent_cse=False) if self.remat else body
    if self.scan and count > 1:
      cls = nn.scan(cls, variable_axes={'params': 0}, split_rngs={'params': True},
                    in_axes=in_axes, length=count)
      return cls(name=name, **attributes)
    return [cls(name=f'{name}_{i}', **attributes) for i in range(count)]

  @staticmethod
  def _run(blocks, carry, xs, a=None, a_stacked=False):
    """Runs blocks over xs stacked on axis 0 (and a, stacked or shared); carry, stacked ys."""
    if not isinstance(blocks, list):
      return blocks(carry, xs, a)
    ys = []
    for i, block in enumerate(blocks):
      item = jax.tree.map(lambda v, i=i: v[i], xs)
      carry, y = block(carry, item, a[i] if a_stacked and a is not None else a)
      ys.append(y)
    if ys[0] is None:
      return carry, None
    return carry, jax.tree.map(lambda *v: jnp.stack(v), *ys)

  def _stage_slices(self):
    """[(shape, first group, count, offset into the flat noise)] of each stage, bottom-up."""
    offsets = np.concatenate([[0], np.cumsum(self.latent_dims)])
    return [(shape, first, count, int(offsets[first])) for shape, first, count in
            _stages(self.latent_shapes)]

  # The bottom-up pass.

  def _bottom_up(self, x):
    """Dense: features [L, B, width], bottom-up; spatial: {resolution: [B, r, r, width]}."""
    act, scale = self.activation, self._final_scale()
    attributes = dict(hidden=self.hidden, activation=act, final_scale=scale)
    if not self.spatial:
      s = nn.Dense(self.width, name='embed')(x.reshape((x.shape[0], -1)))
      count = self.num_groups * self.encoder_blocks
      blocks = self._blocks(_EncoderStage, count, 'encoder', (0, nn.broadcast), spatial=False,
                            **attributes)
      _, features = self._run(blocks, s, jnp.zeros((count,)))
      return features[self.encoder_blocks - 1::self.encoder_blocks]
    s = nn.Conv(self.width, (3, 3), name='embed')(x)
    features = {}
    for resolution in sorted({shape[0] for shape in self.latent_shapes}, reverse=True):
      factor = s.shape[1] // resolution
      if factor > 1:
        s = nn.avg_pool(s, (factor, factor), (factor, factor))
      blocks = self._blocks(_EncoderStage, self.encoder_blocks, f'encoder_{resolution}',
                            (0, nn.broadcast), spatial=True, **attributes)
      s, _ = self._run(blocks, s, jnp.zeros((self.encoder_blocks,)))
      features[resolution] = s
    return features

  # The top-down pass.

  def _top_down(self, features, eps, source, temperature=1.0, z_given=None):
    """The groups from the top: the final state and per-group outputs (a bottom-up list).

    features: from _bottom_up, repeated to the pass's rows, or None (no x).
    eps: [rows, noise_dim]. source: POSTERIOR, PRIOR or GIVEN, one or one per
    group. temperature: a scalar or one per group (bottom-up). z_given:
    [rows, noise_dim] (read where source is GIVEN) or None.
    """
    act, scale = self.activation, self._final_scale()
    rows = eps.shape[0]
    top_shape = self.latent_shapes[-1]
    state_shape = (top_shape[0], top_shape[1], self.width) if self.spatial else (self.width,)
    s = self.param('state', nn.initializers.zeros, state_shape)
    s = jnp.broadcast_to(s, (rows,) + state_shape)
    temperature = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (self.num_groups,))
    source = jnp.broadcast_to(jnp.asarray(source, jnp.int32), (self.num_groups,))
    outputs = [None] * self.num_groups
    for index, (shape, first, count, offset) in reversed(list(enumerate(self._stage_slices()))):
      if self.spatial and s.shape[1] < shape[0]:
        s = _unpool(s, shape[0] // s.shape[1])
      # Stacked on a leading group axis, top group of the stage first (the scan runs downwards).
      def stacked(flat, shape=shape, first=first, count=count, offset=offset):
        part = flat[:, offset:offset + count * int(np.prod(shape))]
        return jnp.moveaxis(part.reshape((rows, count) + shape), 1, 0)[::-1]
      groups = slice(first, first + count)
      xs = (stacked(eps), temperature[groups][::-1], source[groups][::-1],
            None if z_given is None else stacked(z_given))
      if features is None:
        a = None
      elif self.spatial:
        a = features[shape[0]]
      else:
        a = features[groups][::-1]
      blocks = self._blocks(Group, count, f'stage_{index}',
                            (0, nn.broadcast if self.spatial else 0),
                            latent_channels=shape[-1], spatial=self.spatial, hidden=self.hidden,
                            activation=act, merge=self.merge, scale=self.scale,
                            final_scale=scale)
      s, ys = self._run(blocks, s, xs, a, a_stacked=not self.spatial)
      if ys is not None:
        for j in range(count):
          outputs[first + count - 1 - j] = jax.tree.map(lambda v, j=j: v[j], ys)
    if self.spatial and s.shape[1] < self.image_shape[0]:
      s = _unpool(s, -(-self.image_shape[0] // s.shape[1]))[:, :self.image_shape[0],
                                                             :self.image_shape[1]]
    return s, outputs

  def _output(self, s):
    """The likelihood's parameters [rows, H, W, c] from the final state."""
    act = self.activation
    channels = self.likelihood.out_channels(self.image_shape[-1])
    if self.spatial:
      return nn.Conv(channels, (1, 1), name='out')(act(s))
    h = nn.Dense(self.hidden, name='out_hidden')(act(s))
    height, width, _ = self.image_shape
    out = nn.Dense(height * width * channels, name='out')(act(h))
    return out.reshape((s.shape[0], height, width, channels))

  @nn.compact
  def _pass(self, x, eps, source, temperature=1.0, z_given=None, outputs=True):
    """The one compact pass every method runs: bottom-up over x (if given), top-down, output.

    x [B, ...] with eps [k * B, noise_dim] (sample-major rows: k copies of the
    batch) or x None.
    """
    features = None
    if x is not None:
      k = eps.shape[0] // x.shape[0]
      features = jax.tree.map(lambda f: _repeat_rows(f, k, axis=0 if self.spatial else 1),
                              self._bottom_up(x))
    s, groups = self._top_down(features, eps, source, temperature, z_given)
    return (self._output(s) if outputs else None), groups

  def __call__(self, x, eps, labels=None, decode=True):
    del labels
    k, batch = eps.shape[:2]
    out, groups = self._pass(x, eps.reshape((k * batch, -1)), POSTERIOR, outputs=decode)
    flat = lambda v: v.reshape((k, batch, -1))
    layers = tuple(Layer(*(flat(v) for v in group)) for group in groups)
    if not decode:
      return Terms(None, layers, None)
    out = out.reshape((k, batch) + out.shape[1:])
    return Terms(self.likelihood.log_prob(x, out), layers, out)

  def decode(self, z, key=None, temperature=1.0, labels=None):
    """Decoder output for top-group latents z [N, D_L]; the groups below at their prior means
    or, with `key`, sampled at `temperature` (a scalar or one per group, bottom-up)."""
    del labels
    rows = z.shape[0]
    source = jnp.full((self.num_groups,), PRIOR).at[-1].set(GIVEN)
    z_given = jnp.zeros((rows, self.noise_dim)).at[:, -self.latent_dims[-1]:].set(
        z.reshape((rows, -1)))
    return self._pass(None, self._prior_noise(key, rows), source, temperature, z_given)[0]

  def sample(self, key, num, temperature=1.0, labels=None):
    """Decoder output of `num` ancestral samples, each group's std scaled by its temperature
    (a scalar or one per group, bottom-up)."""
    del labels
    return self._pass(None, self._prior_noise(key, num), PRIOR, temperature)[0]

  def reconstruct_top(self, x, key, num_posterior_groups, temperature=1.0):
    """Decoder output with the top `num_posterior_groups` groups at their posterior means
    given x and the groups below sampled from their priors: what the hierarchy keeps of x
    at each depth (all groups: the reconstruction; none: a prior sample)."""
    from_q = jnp.arange(self.num_groups) >= self.num_groups - num_posterior_groups
    source = jnp.where(from_q, POSTERIOR, PRIOR)
    # Posterior groups at their means: eps = 0 there.
    keep = jnp.repeat(~from_q, np.asarray(self.latent_dims), total_repeat_length=self.noise_dim)
    eps = self._prior_noise(key, x.shape[0]) * keep
    return self._pass(x, eps, source, temperature)[0]

  def _prior_noise(self, key, rows):
    if key is None:
      return jnp.zeros((rows, self.noise_dim))
    return jax.random.normal(key, (rows, self.noise_dim))


def _unpool(s, factor):
  """Nearest-neighbour upsampling of [N, r, r, C] by an integer factor."""
  return jnp.repeat(jnp.repeat(s, factor, axis=1), factor, axis=2)


def _repeat_rows(features, k, axis):
  """[..., B, ...] with the batch on `axis` -> k copies, sample-major: [..., k * B, ...]."""
  shape = features.shape
  tiled = jnp.broadcast_to(jnp.expand_dims(features, axis), shape[:axis] + (k,) + shape[axis:])
  return tiled.reshape(shape[:axis] + (k * shape[axis],) + shape[axis + 1:])
