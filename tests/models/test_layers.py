"""`layers.flat_dot_general`: the same products and gradients as `lax.dot_general`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax.models import layers


def _integers(rng, shape):
  # Small integers: every product and sum below is exact in float32, so the
  # two ways of computing it must agree bit for bit whatever the summation order.
  return jnp.asarray(rng.integers(-3, 4, size=shape), jnp.float32)


# (lhs shape, rhs shape, dimension numbers): Dense on (B, L, D), the q|k|v and
# per-head projections' multi-axis kernels, the attention output projection
# contracting two axes, and a 4-D input.
PRODUCTS = [
    ((2, 5, 6), (6, 7), (((2,), (0,)), ((), ()))),
    ((2, 5, 6), (6, 3, 4), (((2,), (0,)), ((), ()))),
    ((2, 5, 3, 4), (3, 4, 6), (((2, 3), (0, 1)), ((), ()))),
    ((2, 3, 5, 6), (6, 2, 2, 4), (((3,), (0,)), ((), ()))),
]


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims", PRODUCTS)
def test_flat_dot_general_equals_dot_general_with_gradients(lhs_shape, rhs_shape, dims):
  rng = np.random.default_rng(0)
  lhs, rhs = _integers(rng, lhs_shape), _integers(rng, rhs_shape)
  expected = jax.lax.dot_general(lhs, rhs, dims)
  got = layers.flat_dot_general(lhs, rhs, dims)
  assert got.shape == expected.shape
  np.testing.assert_array_equal(got, expected)

  cotangent = _integers(rng, expected.shape)
  def pulled(fn):
    return jax.vjp(lambda a, b: fn(a, b, dims), lhs, rhs)[1](cotangent)
  for got_grad, expected_grad in zip(pulled(layers.flat_dot_general),
                                     pulled(jax.lax.dot_general)):
    np.testing.assert_array_equal(got_grad, expected_grad)


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims", [
    ((5, 6), (6, 7), (((1,), (0,)), ((), ()))),         # already 2-D
    ((2, 5, 6), (2, 6, 7), (((2,), (1,)), ((0,), (0,)))),  # a batch axis
    ((2, 6, 5), (6, 7), (((1,), (0,)), ((), ()))),      # contracts a middle axis
    ((2, 5, 6), (7, 6), (((2,), (1,)), ((), ()))),      # kernel stored (out, in)
])
def test_flat_dot_general_passes_other_products_through(lhs_shape, rhs_shape, dims):
  rng = np.random.default_rng(1)
  lhs, rhs = _integers(rng, lhs_shape), _integers(rng, rhs_shape)
  np.testing.assert_array_equal(layers.flat_dot_general(lhs, rhs, dims),
                                jax.lax.dot_general(lhs, rhs, dims))


def test_layers_compute_what_flax_computes():
  """The helpers' layers give flax's own Dense and DenseGeneral outputs."""
  rng = np.random.default_rng(2)
  x = _integers(rng, (2, 5, 6))
  kw = dict(dtype=jnp.float32, param_dtype=jnp.float32)
  cases = [
      (layers.dense(7, ("embed", "mlp"), **kw), nn.Dense(7), x),
      (layers.attention_out(6, **kw), nn.DenseGeneral(6, axis=(-2, -1)),
       _integers(rng, (2, 5, 3, 4))),
  ]
  for ours, plain, inputs in cases:
    params = jax.tree.map(lambda p: _integers(rng, p.shape),
                          nn.meta.unbox(ours.init(jax.random.key(0), inputs)))
    np.testing.assert_array_equal(ours.apply(params, inputs), plain.apply(params, inputs))


@pytest.mark.parametrize("dtype,is_causal,atol", [
    # float32: the same products summed in another order, a few ulps of
    # outputs that are averages of unit-normal values.
    (jnp.float32, False, 1e-5), (jnp.float32, True, 1e-5),
    # bfloat16 outputs: one rounding of values below 4, 2**-7 relative.
    (jnp.bfloat16, False, 4 * 2.0 ** -7),
])
def test_dot_product_attention_equals_jax(dtype, is_causal, atol):
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 3, 8)), dtype) for _ in range(3))
  if not is_causal:
    k, v = (jnp.asarray(rng.normal(size=(2, 5, 3, 8)), dtype) for _ in range(2))
  got = layers.dot_product_attention(q, k, v, is_causal=is_causal)
  expected = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal)
  assert got.dtype == expected.dtype and got.shape == expected.shape
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                             atol=atol, rtol=0)
  if is_causal:
    # The first query sees only the first key.
    np.testing.assert_allclose(got[:, 0], v[:, 0], atol=atol)
