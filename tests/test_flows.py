"""Inverse autoregressive flow (Kingma et al. 2016): MADE masks, triangular
Jacobians, log-determinants against autodiff, the diagonal-Gaussian special case."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import distributions
from vae_jax.models import flows

CONTEXT = 3


def _random_params(module, seed, *args, scale=0.5):
  """Normal(0, scale^2) in every leaf (biases and the small output layers too),
  so that m and s really depend on z and the context.

  Shapes come from eval_shape and values from numpy: jax.random compiles anew
  for every shape, which made these tests 3x slower on CPU.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), shapes)


def _inputs(seed, n, dim, scale=1.0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(scale * rng.standard_normal((n, dim)), jnp.float32),
          jnp.asarray(scale * rng.standard_normal((n, CONTEXT)), jnp.float32))


def test_degrees_and_masks_known_answers():
  assert flows.input_degrees(3) == (1, 2, 3)
  assert flows.input_degrees(3, reverse=True) == (3, 2, 1)
  assert flows.hidden_degrees(5, 3) == (1, 2, 1, 2, 1)
  assert flows.hidden_degrees(2, 1) == (1, 1)
  np.testing.assert_array_equal(
      flows.made_mask((1, 2, 3), (1, 2, 1, 2)),
      [[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(
      flows.made_mask((1, 2, 1, 2), (1, 2, 3), strict=True),
      [[0, 1, 1], [0, 0, 1], [0, 1, 1], [0, 0, 1]])


@pytest.mark.parametrize('reverse', [False, True])
def test_mask_product_connects_exactly_the_lower_degrees(reverse):
  dim, hidden = 5, (7, 6)
  deg = flows.input_degrees(dim, reverse)
  h1, h2 = (flows.hidden_degrees(w, dim) for w in hidden)
  paths = (flows.made_mask(deg, h1).astype(int) @ flows.made_mask(h1, h2)
           @ flows.made_mask(h2, deg, strict=True))
  expected = np.array(deg)[:, None] < np.array(deg)[None, :]  # [in, out]
  np.testing.assert_array_equal(paths > 0, expected)


def test_masks_are_constants_not_params_and_modules_hash():
  flow = flows.IAF(2, (8,))
  assert hash(flow) == hash(flows.IAF(2, (8,)))
  z, c = _inputs(1, 2, 4)
  params = _random_params(flow, 0, z, jnp.zeros(2), c)
  names = {path[-1].key for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert names == {'kernel', 'bias'}
  # Masked kernel entries get no gradient: they could never be learned into use.
  grads = jax.jit(jax.grad(lambda p: flow.apply({'params': p}, z, jnp.zeros(2), c)[1].sum()))(params)
  mask = flows.made_mask(flows.input_degrees(4), flows.hidden_degrees(8, 4))
  np.testing.assert_array_equal(np.asarray(grads['step_0']['input']['kernel'])[~mask], 0.0)
  assert np.all(np.asarray(grads['step_0']['input']['kernel'])[mask] != 0.0)


@pytest.mark.parametrize('reverse', [False, True])
def test_step_jacobian_is_triangular_with_sigma_on_the_diagonal(reverse):
  dim = 5
  step = flows.IAFStep((16, 16), reverse=reverse)
  z, c = _inputs(2, 1, dim)
  params = {'params': _random_params(step, 3, z, c)}
  jac = jax.jit(jax.jacfwd(lambda x: step.apply(params, x[None], c)[0][0]))(z[0])
  _, s = step.apply(params, z, c, method='autoregressive_outputs')
  np.testing.assert_allclose(np.diag(jac), jax.nn.sigmoid(s[0] + 1.0), rtol=1e-5)
  above = np.triu(np.ones((dim, dim), bool), 1)
  zero, nonzero = (above, above.T) if not reverse else (above.T, above)
  np.testing.assert_array_equal(jac[zero], 0.0)
  assert np.all(np.abs(jac[nonzero]) > 1e-6)  # The autoregressive path is really there.


def test_log_q_matches_autodiff_log_determinant():
  flow = flows.IAF(3, (12, 12))
  n, dim = 6, 4
  z, c = _inputs(4, n, dim)
  log_q = jnp.linspace(-2.0, 2.0, n)
  params = {'params': _random_params(flow, 6, z, log_q, c)}
  _, log_q_out = flow.apply(params, z, log_q, c)
  def one(x, ctx):
    return flow.apply(params, x[None], jnp.zeros(1), ctx[None])[0][0]
  jac = jax.jit(jax.vmap(jax.jacfwd(one)))(z, c)
  sign, log_abs_det = jnp.linalg.slogdet(jac)
  assert np.all(np.asarray(sign) > 0)
  assert np.ptp(np.asarray(log_abs_det)) > 0.1  # The determinant does depend on z.
  np.testing.assert_allclose(log_q - log_q_out, log_abs_det, atol=1e-4)


def _zero_ar_inputs(params):
  """Zeroes the only z -> MADE weights, so m and s are functions of the context alone."""
  return {name: {**step, 'input': {**step['input'], 'kernel': jnp.zeros_like(step['input']['kernel'])}}
          for name, step in params.items()}


@pytest.mark.parametrize('num_steps', [1, 3])
def test_flow_without_autoregressive_inputs_is_a_diagonal_gaussian(num_steps):
  n, dim, hidden = 5, 4, (10, 9)
  flow = flows.IAF(num_steps, hidden, forget_bias=0.7)
  mean, c = _inputs(7, n, dim)
  log_std, eps = _inputs(8, n, dim)[0], _inputs(9, n, dim)[0]
  std = std0 = jnp.exp(0.5 * log_std)
  z0 = mean + std * eps
  log_q0 = distributions.gaussian_log_prob(z0, mean, 2 * jnp.log(std)).sum(-1)
  params = _zero_ar_inputs(_random_params(flow, 8, z0, log_q0, c))
  z, log_q = flow.apply({'params': params}, z0, log_q0, c)
  for t in range(num_steps):
    step = flows.IAFStep(hidden, reverse=t % 2 == 1, forget_bias=0.7)
    m, s = step.apply({'params': params[f'step_{t}']}, jnp.zeros_like(z0), c,
                      method='autoregressive_outputs')
    sigma = jax.nn.sigmoid(s + 0.7)
    mean, std = sigma * mean + (1 - sigma) * m, sigma * std
  assert np.ptp(np.asarray(std / std0)) > 0.1  # A different scale per dimension and example.
  np.testing.assert_allclose(z, mean + std * eps, rtol=1e-5, atol=1e-5)
  expected = distributions.gaussian_log_prob(z, mean, 2 * jnp.log(std)).sum(-1)
  np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('forget_bias', [1.0, 2.5, -3.0])
def test_step_with_zero_params_is_the_forget_gate_contraction(forget_bias):
  step = flows.IAFStep((8,), forget_bias=forget_bias)
  z, c = _inputs(9, 4, 3)
  params = {'params': jax.tree.map(jnp.zeros_like, _random_params(step, 0, z, c))}
  z_new, log_det = step.apply(params, z, c)
  np.testing.assert_allclose(z_new, z * jax.nn.sigmoid(forget_bias), rtol=1e-6)
  np.testing.assert_allclose(log_det, 3 * math.log(jax.nn.sigmoid(forget_bias)), rtol=1e-6)


def test_fresh_init_starts_near_the_contraction():
  flow = flows.IAF(2, (16,))
  z, c = _inputs(10, 8, 4)
  params = jax.jit(flow.init)(jax.random.key(0), z, jnp.zeros(8), c)
  z_out, log_q = flow.apply(params, z, jnp.zeros(8), c)
  sigma = float(jax.nn.sigmoid(1.0))
  np.testing.assert_allclose(z_out, sigma ** 2 * z, atol=0.05)
  np.testing.assert_allclose(log_q, -2 * 4 * math.log(sigma), atol=0.05)


def test_zero_steps_return_the_inputs():
  flow = flows.IAF(0, (8,))
  z, c = _inputs(11, 3, 4)
  log_q = jnp.arange(3.0)
  variables = flow.init(jax.random.key(0), z, log_q, c)
  assert not jax.tree.leaves(variables)
  z_out, log_q_out = flow.apply(variables, z, log_q, c)
  np.testing.assert_array_equal(z_out, z)
  np.testing.assert_array_equal(log_q_out, log_q)


def test_context_changes_the_output():
  flow = flows.IAF(2, (12,))
  z, c = _inputs(12, 4, 4)
  params = {'params': _random_params(flow, 13, z, jnp.zeros(4), c)}
  z_a, log_q_a = flow.apply(params, z, jnp.zeros(4), c)
  z_b, log_q_b = flow.apply(params, z, jnp.zeros(4), c + 1.0)
  assert np.all(np.abs(np.asarray(z_a - z_b)).max(-1) > 1e-3)
  assert np.all(np.abs(np.asarray(log_q_a - log_q_b)) > 1e-3)


def test_finite_values_and_gradients_for_large_inputs():
  flow = flows.IAF(3, (16, 16))
  z, c = _inputs(14, 6, 4, scale=1e3)
  log_q = jnp.zeros(6)
  params = _random_params(flow, 15, z, log_q, c, scale=1.0)
  _, s = flows.IAFStep((16, 16)).apply({'params': params['step_0']}, z, c,
                                       method='autoregressive_outputs')
  assert float(jnp.abs(s).max()) > 200  # Far past where float32 sigmoid underflows.
  def loss(p, x, ctx):
    z_out, lq = flow.apply({'params': p}, x, log_q, ctx)
    return lq.sum() + z_out.sum()
  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, z, c)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_jit_vmap_and_flattened_leading_dims_agree():
  flow = flows.IAF(2, (12,))
  k, b, dim = 3, 4, 5
  z, c = _inputs(16, k * b, dim)
  log_q = jnp.linspace(-2.0, 2.0, k * b)
  params = {'params': _random_params(flow, 18, z, log_q, c)}
  flat = flow.apply(params, z, log_q, c)
  jitted = jax.jit(flow.apply)(params, z, log_q, c)
  split = lambda x: x.reshape((k, b) + x.shape[1:])
  mapped = jax.vmap(flow.apply, in_axes=(None, 0, 0, 0))(params, split(z), split(log_q), split(c))
  nested = flow.apply(params, split(z), split(log_q), split(c))
  for got in (jitted, jax.tree.map(lambda x: x.reshape((k * b,) + x.shape[2:]), mapped),
              jax.tree.map(lambda x: x.reshape((k * b,) + x.shape[2:]), nested)):
    for g, f in zip(got, flat):
      np.testing.assert_allclose(g, f, rtol=1e-5, atol=1e-5)
