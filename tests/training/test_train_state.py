"""The finite check that keeps a bad step out of the train state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax.training import train_state


def _tree(bad=None):
  tree = {"a": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
          "b": jnp.full((2, 2), -2.5), "count": jnp.arange(3)}
  if bad is not None:
    tree["a"]["bias"] = tree["a"]["bias"].at[1].set(bad)
  return tree


def test_a_finite_tree_passes_and_integer_leaves_are_ignored():
  assert bool(train_state.all_finite(_tree()))
  assert bool(train_state.all_finite({"count": jnp.arange(3)}))
  assert bool(train_state.all_finite({}))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_entry_in_one_leaf_fails_the_tree(bad):
  assert not bool(train_state.all_finite(_tree(bad)))


def test_a_norm_beyond_float32_counts_as_non_finite():
  # Every entry is finite, but the sum of squares (4 * 1e40) overflows float32.
  assert not bool(train_state.all_finite({"g": jnp.full(4, 1e20, jnp.float32)}))
  assert bool(train_state.all_finite({"g": jnp.full(4, 1e18, jnp.float32)}))
  # Half-precision leaves are squared in float32: 1e3 squared overflows float16 alone.
  assert bool(train_state.all_finite({"g": jnp.full(4, 1e3, jnp.float16)}))


def test_keep_if_returns_the_old_tree_when_not_ok():
  old = _tree()
  new = jax.tree.map(lambda x: x + 1, old)
  for ok, want in ((False, old), (True, new)):
    kept = train_state.keep_if(jnp.array(ok), new, old)
    for got, expected in zip(jax.tree.leaves(kept), jax.tree.leaves(want)):
      np.testing.assert_array_equal(got, expected)
