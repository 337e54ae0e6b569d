import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax.losses import reconstruction


def test_l1_and_l2_hand_values():
  x = jnp.array([[0.0, 1.0], [2.0, -1.0]])
  y = jnp.array([[1.0, 1.0], [0.0, 0.0]])
  # |diffs| = 1, 0, 2, 1 ; squares = 1, 0, 4, 1: sums of small integers and a
  # division by 4 are exact in float32 in any order (default rtol 1e-7).
  np.testing.assert_allclose(reconstruction.l1_loss(x, y), 1.0)
  np.testing.assert_allclose(reconstruction.l2_loss(x, y), 1.5)
  np.testing.assert_allclose(reconstruction.reconstruction_loss("mse", x, y), 1.5)


def test_low_precision_inputs_reduce_in_float32():
  x = jnp.full((4, 8, 8, 3), 0.5, jnp.bfloat16)
  loss = reconstruction.reconstruction_loss("l2", x, jnp.zeros_like(x))
  assert loss.dtype == jnp.float32
  # 0.5^2 summed 192 times and divided by 192: exact in float32.
  np.testing.assert_allclose(loss, 0.25)


def test_unknown_kind_lists_available():
  with pytest.raises(ValueError, match="l1"):
    reconstruction.reconstruction_loss("huber", jnp.zeros(2), jnp.zeros(2))
