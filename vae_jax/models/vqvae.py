"""The VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning") in the
model contract, and the priors over its code grid.

The encoder maps x to a grid of vectors z_e [B, h, w, D]; each is replaced by its
nearest codebook vector (`Codebook`), the code index being the latent variable.
q(codes | x) is that one-hot choice (log q = 0), p(codes) is a prior over the
grid: `UniformCodes` while the VQ-VAE trains (stage 1; the KL is then the
constant h w log K), `PixelCNNPrior` once it is learned (stage 2, objective
code_prior). The model's Terms are then those of any other VAE, one layer:

  z       the quantised grid z_q [k, B, h, w, D] (straight-through: the value of
          z_q, the gradient of z_e), the same for all k samples;
  log_q   0 [k, B];   log_p   log p(codes) [k, B];   kl   None,

so ELBO = log p(x | z_q) + log p(codes), which for a one-hot q is a lower bound
on log p(x) through that one code grid, not an importance-sampled estimate.
`vq_terms` also returns z_e and the codes, which objectives.vq_vae reads for
the commitment and codebook losses and the codebook's moving averages.
"""

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.models.nets import depth_to_space
from vae_jax.models.vae import Layer, Terms

CODE_PRIORS = ('uniform', 'pixelcnn')
CODEBOOK_UPDATES = ('ema', 'loss')


class Codebook(nn.Module):
  """K vectors of size D and the nearest-vector quantisation of z_e [..., D].

  With `ema` it also keeps the moving averages of van den Oord et al.'s
  appendix A.1, `counts` [K] (assignments per code) and `sums` [K, D] (the sum of
  the vectors assigned), from which objectives.vq_vae computes each step's new
  embedding; they start at 1 and at the embedding, so embedding = sums / counts
  from the first step. `decay` and `restart` are the update's rule
  (objectives.codebook_targets), which reads them here.
  """

  size: int
  dim: int
  ema: bool = True
  decay: float = 0.99
  restart: float = 0.0

  def setup(self):
    limit = math.sqrt(3.0 / self.dim)  # Variance 1 / D: |e| near 1, as the encoder's outputs.
    self.embedding = self.param(
        'embedding', lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -limit, limit),
        (self.size, self.dim))
    if self.ema:
      self.counts = self.param('counts', nn.initializers.ones, (self.size,))
      self.sums = self.param('sums', lambda key, shape: self.embedding, (self.size, self.dim))

  def __call__(self, z_e):
    """(codes int32 [...], z_q [..., D]) of the nearest embedding to each vector."""
    flat = z_e.reshape(-1, self.dim)
    distances = (jnp.sum(jnp.square(flat), -1, keepdims=True) - 2.0 * flat @ self.embedding.T
                 + jnp.sum(jnp.square(self.embedding), -1))
    codes = jnp.argmin(distances, axis=-1).astype(jnp.int32).reshape(z_e.shape[:-1])
    return codes, self.lookup(codes)

  def lookup(self, codes):
    return jnp.take(self.embedding, codes, axis=0)


class _Residual(nn.Module):
  """x + 1x1(act(3x3(act(x)))): the VQ-VAE paper's residual block."""

  hidden: int
  activation: Callable

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.hidden, (3, 3))(self.activation(x))
    return x + nn.Conv(x.shape[-1], (1, 1))(self.activation(h))


class VQEncoder(nn.Module):
  """Stride-2 3x3 convolutions (one per entry of `features`), residual blocks, 1x1 to D."""

  features: Sequence[int]
  code_dim: int
  num_residual: int
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    h = x
    for i, width in enumerate(self.features):
      h = nn.Conv(width, (3, 3), strides=(2, 2))(h)
      if i < len(self.features) - 1:
        h = self.activation(h)
    for _ in range(self.num_residual):
      h = _Residual(self.features[-1] // 2 or 1, self.activation)(h)
    return nn.Conv(self.code_dim, (1, 1))(self.activation(h))


class VQDecoder(nn.Module):
  """The encoder's mirror: 3x3, residual blocks, then one 2x upsampling stage per entry of
  `features` (a 3x3 convolution to 4x the channels and a pixel shuffle, as nets.ConvDecoder:
  on XLA:CPU its gradient runs 3-5x faster than a transposed convolution's), and a 3x3
  convolution to the likelihood's channels."""

  features: Sequence[int]
  out_channels: int
  num_residual: int
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, z):
    h = nn.Conv(self.features[-1], (3, 3))(z)
    for _ in range(self.num_residual):
      h = _Residual(self.features[-1] // 2 or 1, self.activation)(h)
    for width in reversed(self.features):
      h = self.activation(depth_to_space(nn.Conv(4 * width, (3, 3))(self.activation(h))))
    return nn.Conv(self.out_channels, (3, 3))(h)


class UniformCodes(nn.Module):
  """p(codes) uniform over the K^(h w) grids: log p = -h w log K, whatever the codes."""

  size: int
  grid: tuple

  def log_prob(self, codes):
    return jnp.full(codes.shape[:-2], -float(np.prod(self.grid)) * math.log(self.size))

  def sample(self, key, num, temperature=1.0):
    del temperature  # Every grid is equally likely at any temperature.
    return jax.random.randint(key, (num,) + tuple(self.grid), 0, self.size, jnp.int32)


class MaskedConv(nn.Module):
  """A PixelCNN convolution (van den Oord et al. 2016): each output sees only the
  positions before it in raster order, and itself too with mask 'B' (not with 'A')."""

  features: int
  kernel: int
  mask: str

  @nn.compact
  def __call__(self, x):
    k = self.kernel
    weights = self.param('kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    mask = np.ones((k, k, 1, 1), np.float32)
    mask[k // 2, k // 2 + (self.mask == 'B'):] = 0.0
    mask[k // 2 + 1:] = 0.0
    out = jax.lax.conv_general_dilated(x, weights * mask, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return out + bias


class _PixelCNN(nn.Module):
  """codes [N, h, w] -> logits [N, h, w, K]: an embedding, a 7x7 'A' convolution, then
  residual 3x3 'B' convolutions and two 1x1 layers."""

  size: int
  features: int
  num_layers: int

  @nn.compact
  def __call__(self, codes):
    h = MaskedConv(self.features, 7, 'A')(nn.Embed(self.size, self.features)(codes))
    for _ in range(self.num_layers):
      h = h + MaskedConv(self.features, 3, 'B')(nn.relu(h))
    h = nn.relu(nn.Conv(self.features, (1, 1))(nn.relu(h)))
    return nn.Conv(self.size, (1, 1))(h)


class PixelCNNPrior(nn.Module):
  """An autoregressive prior over the code grid, in raster order (the VQ-VAE paper's second
  stage): log p(codes) = sum_i log p(c_i | c_<i) [...], and ancestral sampling one
  position at a time, the logits divided by the temperature."""

  size: int
  grid: tuple
  features: int = 64
  num_layers: int = 8

  def setup(self):
    self.net = _PixelCNN(self.size, self.features, self.num_layers)

  def log_prob(self, codes):
    lead = codes.shape[:-2]
    flat = codes.reshape((-1,) + tuple(self.grid))
    log_p = jax.nn.log_softmax(self.net(flat))
    picked = jnp.take_along_axis(log_p, flat[..., None], axis=-1)[..., 0]
    return jnp.sum(picked, axis=(-2, -1)).reshape(lead)

  def sample(self, key, num, temperature=1.0):
    net, variables = self.net.clone(parent=None), self.net.variables
    width = self.grid[1]

    def position(i, codes):
      row, col = i // width, i % width
      logits = net.apply(variables, codes)[:, row, col] / temperature
      return codes.at[:, row, col].set(
          jax.random.categorical(jax.random.fold_in(key, i), logits).astype(jnp.int32))

    start = jnp.zeros((num,) + tuple(self.grid), jnp.int32)
    return jax.lax.fori_loop(0, int(np.prod(self.grid)), position, start)


class VQVAE(nn.Module):
  """Encoder -> Codebook -> decoder -> likelihood, with a prior over the codes (module doc)."""

  encoder: nn.Module
  decoder: nn.Module
  codebook: Codebook
  likelihood: object
  prior: nn.Module
  grid: tuple  # (h, w) of the code grid.
  num_classes: int = 0  # The contract's field; a VQ-VAE is unconditional.

  @property
  def noise_dim(self):
    return 0  # q is deterministic: no reparameterisation noise.

  @property
  def latent_dims(self):
    return (int(np.prod(self.grid)) * self.codebook.dim,)

  def vq_terms(self, x, k=1, decode=True):
    """(Terms for k samples, z_e [B, h, w, D], codes [B, h, w])."""
    z_e = self.encoder(x)
    codes, z_q = self.codebook(z_e)
    z = z_e + jax.lax.stop_gradient(z_q - z_e)  # Straight-through: z_q's value, z_e's gradient.
    lead = (k, x.shape[0])
    z_k = jnp.broadcast_to(z, lead + z.shape[1:])
    log_p = jnp.broadcast_to(self.prior.log_prob(codes), lead)
    layer = Layer(z_k, jnp.zeros(lead), log_p, None, z_k)
    if not decode:
      return Terms(None, (layer,), None), z_e, codes
    out = self.decoder(z)[None]
    log_px_z = jnp.broadcast_to(self.likelihood.log_prob(x, out), lead)
    return Terms(log_px_z, (layer,), jnp.broadcast_to(out, lead + out.shape[2:])), z_e, codes

  def __call__(self, x, eps, labels=None, decode=True):
    del labels
    return self.vq_terms(x, eps.shape[0], decode)[0]

  def decode(self, codes, key=None, temperature=1.0, labels=None):
    """Decoder output for code grids [N, h, w] (int) or quantised grids [N, h, w, D]."""
    del key, temperature, labels
    z = self.codebook.lookup(codes) if jnp.issubdtype(codes.dtype, jnp.integer) else codes
    return self.decoder(z)

  def sample(self, key, num, temperature=1.0, labels=None):
    """Decoder output of `num` code grids drawn from the prior."""
    del labels
    return self.decode(self.prior.sample(key, num, temperature))
