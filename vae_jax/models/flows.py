"""Inverse autoregressive flow posteriors (Kingma et al. 2016, "Improved
Variational Inference with Inverse Autoregressive Flow").

A diagonal Gaussian sample z_0 with its log-density log q(z_0 | x) goes through
T steps z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t, where [m_t, s_t] come
from a MADE (Germain et al. 2015) over z_{t-1} and a context h from the encoder.
Each step's Jacobian is triangular with diagonal sigma_t, so log q(z_T | x) =
log q(z_0 | x) - sum_t sum_i log sigma_{t,i}.

Masks are numpy arrays computed from static degree tuples, never parameters or
array fields, so modules stay hashable and the masks are constants under jit.
"""

from typing import Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import distributions


def input_degrees(dim: int, reverse: bool = False) -> Tuple[int, ...]:
  """MADE degrees 1..D of z's dimensions in index order, or D..1 if reversed."""
  degrees = tuple(range(1, dim + 1))
  return degrees[::-1] if reverse else degrees


def hidden_degrees(width: int, dim: int) -> Tuple[int, ...]:
  """Degrees of a hidden layer, cycling through 1..D-1 (Germain et al. 2015, sec. 4).

  Degree D is left out because a unit of degree D could only feed outputs of
  degree > D, which do not exist. Cycling rather than sampling keeps the
  module deterministic and, for width >= D - 1, every degree present. For
  D = 1 every unit has degree 1 and the single output sees only biases.
  """
  span = max(dim - 1, 1)
  return tuple(k % span + 1 for k in range(width))


def made_mask(in_degrees: Sequence[int], out_degrees: Sequence[int],
              strict: bool = False) -> np.ndarray:
  """Boolean [len(in), len(out)] mask: out j sees in i iff deg_j >= deg_i (> if strict).

  Hidden layers use >=; the output layer uses > so that output d depends only
  on inputs of lower degree, which makes the flow's Jacobian triangular.
  """
  i = np.asarray(in_degrees)[:, None]
  o = np.asarray(out_degrees)[None, :]
  return o > i if strict else o >= i


class MaskedDense(nn.Module):
  """Dense layer whose kernel is multiplied by a fixed MADE mask (Germain et al. 2015)."""

  features: int
  in_degrees: Tuple[int, ...]
  out_degrees: Tuple[int, ...]
  strict: bool = False
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @property
  def mask(self) -> np.ndarray:
    return made_mask(self.in_degrees, self.out_degrees, self.strict)

  @nn.compact
  def __call__(self, x):
    if len(self.out_degrees) != self.features or x.shape[-1] != len(self.in_degrees):
      raise ValueError(
          f'MaskedDense: {len(self.in_degrees)} -> {len(self.out_degrees)} degrees for '
          f'input width {x.shape[-1]} and features {self.features}')
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
    # Masking the kernel (not the output) also zeroes the masked entries' gradients.
    return x @ (kernel * self.mask.astype(kernel.dtype)) + bias


# m and s start near zero, so each step starts near z * sigmoid(forget_bias):
# a fixed contraction whose log-det needs no learning (Kingma et al. 2016, sec. 4).
_SMALL_INIT = nn.initializers.variance_scaling(1e-4, 'fan_in', 'truncated_normal')


class IAFStep(nn.Module):
  """One IAF step with the numerically stable gating (Kingma et al. 2016, sec. 4, alg. 1).

  z [..., D], context h [..., C] -> (z_new [..., D], log_det [...]):
  sigma = sigmoid(s + forget_bias), z_new = sigma * z + (1 - sigma) * m,
  log_det = sum log sigma. `reverse` reverses the autoregressive order, so that
  alternating steps let every dimension depend on every other.
  """

  hidden: Sequence[int]
  reverse: bool = False
  forget_bias: float = 1.0
  activation: Callable = nn.elu

  @nn.compact
  def autoregressive_outputs(self, z, context):
    """(m, s), each [..., D]: output d sees z's lower-degree dimensions and h."""
    if not self.hidden:
      raise ValueError('IAFStep: hidden needs at least one layer, which takes the context')
    dim = z.shape[-1]
    degrees = input_degrees(dim, self.reverse)
    below = hidden_degrees(self.hidden[0], dim)
    h = MaskedDense(self.hidden[0], degrees, below, name='input')(z)
    # The context is unmasked: every hidden unit may see all of h. Its bias is
    # the masked layer's.
    h = self.activation(h + nn.Dense(self.hidden[0], use_bias=False, name='context')(context))
    for i, width in enumerate(self.hidden[1:]):
      above = hidden_degrees(width, dim)
      h = self.activation(MaskedDense(width, below, above, name=f'hidden_{i}')(h))
      below = above
    m = MaskedDense(dim, below, degrees, strict=True, kernel_init=_SMALL_INIT, name='m')(h)
    s = MaskedDense(dim, below, degrees, strict=True, kernel_init=_SMALL_INIT, name='s')(h)
    return m, s

  def __call__(self, z, context):
    m, s = self.autoregressive_outputs(z, context)
    gate = s + self.forget_bias
    # 1 - sigma as sigmoid(-gate) keeps its precision when sigma rounds to 1,
    # and log sigma = -softplus(-gate) stays finite when sigma underflows to 0.
    z_new = jax.nn.sigmoid(gate) * z + jax.nn.sigmoid(-gate) * m
    log_det = -jnp.sum(distributions.softplus(-gate), axis=-1)
    return z_new, log_det


class IAF(nn.Module):
  """T IAF steps, the order reversed on every other one (Kingma et al. 2016, sec. 4).

  (z_0 [..., D], log q(z_0 | x) [...], context h [..., C]) -> (z_T, log q(z_T | x)),
  by the change of variables log q(z_T) = log q(z_0) - sum_t log|det dz_t/dz_{t-1}|.
  num_steps = 0 returns its inputs: the plain diagonal Gaussian posterior.
  """

  num_steps: int
  hidden: Sequence[int]
  forget_bias: float = 1.0
  activation: Callable = nn.elu

  @nn.compact
  def __call__(self, z, log_q, context):
    for t in range(self.num_steps):
      step = IAFStep(tuple(self.hidden), reverse=t % 2 == 1, forget_bias=self.forget_bias,
                     activation=self.activation, name=f'step_{t}')
      z, log_det = step(z, context)
      log_q = log_q - log_det
    return z, log_q
