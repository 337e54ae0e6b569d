"""Vision -> LLM projectors: shapes, logical axes, parameter counts, frame order."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import helpers
from vwt_jax.models.projector import Projector

B, T, N, DV, OUT = 2, 3, 5, 16, 24
Q, LAYERS, HEADS, MAX_FRAMES = 4, 2, 4, 8
HIDDEN = 4 * DV  # the resampler MLP width (mlp_ratio 4)


def _resampler(**kwargs):
  return Projector("resampler", OUT, num_queries=Q, num_layers=LAYERS, num_heads=HEADS,
                   max_frames=MAX_FRAMES, **kwargs)


def _resampler_params(temporal: bool) -> int:
  norm = 2 * DV
  attention = 4 * (DV * DV + DV)
  mlp = DV * HIDDEN + HIDDEN + HIDDEN * DV + DV
  block = 3 * norm + attention + mlp
  return Q * DV + temporal * MAX_FRAMES * DV + LAYERS * block + norm + DV * OUT + OUT


CASES = {
    "linear": (Projector("linear", OUT), N, DV * OUT + OUT),
    "mlp": (Projector("mlp", OUT), N, DV * OUT + OUT + OUT * OUT + OUT),
    "resampler": (_resampler(), Q, _resampler_params(True)),
    "resampler_no_time": (_resampler(temporal_embedding=False), Q, _resampler_params(False)),
}


@pytest.fixture(scope="module")
def features():
  return np.random.default_rng(0).normal(size=(B, T, N, DV)).astype(np.float32)


def _abstract(module, features):
  """Boxed params by shape only: compiling inits would cost seconds per case."""
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), features)["params"]


def _random_params(module, features, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape)).astype(a.dtype),
                      nn.meta.unbox(_abstract(module, features)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_and_tokens_per_frame(name, features):
  module, q, _ = CASES[name]
  tokens, aux = jax.eval_shape(module.apply, {"params": _abstract(module, features)}, features)
  assert tokens.shape == (B, T * q, OUT) and aux == {}
  assert module.tokens_per_frame(N) == q


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_and_logical_axes(name, features):
  module, _, num_params = CASES[name]
  leaves = jax.tree_util.tree_leaves(_abstract(module, features),
                                     is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  allowed = {"embed", "mlp", "heads", "kv", "length", "norm", None}
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(set(x.names) <= allowed and len(x.names) == x.value.ndim for x in leaves)
  # A name may shard at most one axis of a kernel.
  assert all(len([n for n in x.names if n]) == len({n for n in x.names if n}) for x in leaves)
  assert sum(int(np.prod(x.value.shape)) for x in leaves) == num_params


def test_mlp_projects_each_token(features):
  """Token t*N + n of the output is the projection of frame t's token n alone."""
  module, _, _ = CASES["mlp"]
  params = _random_params(module, features)
  tokens, _ = jax.jit(module.apply)({"params": params}, features)
  x = features[1, 2, 3]
  h = jax.nn.gelu(x @ params["fc1"]["kernel"] + params["fc1"]["bias"], approximate=False)
  expected = h @ params["fc2"]["kernel"] + params["fc2"]["bias"]
  # fc1 (16 -> 24) then fc2 (24 -> 24), jitted vs eager.
  helpers.assert_allclose_f32(tokens[1, 2 * N + 3], expected, reduction=OUT, depth=2)


def test_resampler_sees_frame_order_only_with_temporal_embedding(features):
  with_time, _, _ = CASES["resampler"]
  without, _, _ = CASES["resampler_no_time"]
  params = _random_params(with_time, features)
  no_time_params = {k: v for k, v in params.items() if k != "frame_embedding"}
  order = [2, 0, 1]

  both_orders = np.concatenate([features, features[:, order]])  # on the batch axis

  @jax.jit
  def run(params, no_time_params):
    return [module.apply({"params": p}, both_orders)[0]
            for module, p in ((with_time, params), (without, no_time_params))]

  (time_tokens, time_shuffled), (tokens, shuffled) = [
      np.split(x, 2) for x in jax.device_get(run(params, no_time_params))]

  def permute_blocks(x):
    return x.reshape(B, T, Q, OUT)[:, order].reshape(B, T * Q, OUT)

  # Without the temporal embedding each frame is resampled alone: permuting the
  # frames permutes the blocks of Q tokens and nothing else.
  # Other batch rows, same formula: the longest sum is the MLP's 64; 6 dots a
  # layer for 2 layers, the final norm and the output projection.
  helpers.assert_allclose_f32(shuffled, permute_blocks(tokens), reduction=HIDDEN, depth=14)
  assert np.abs(time_shuffled - permute_blocks(time_tokens)).max() > 1e-2


def test_rejects_bad_kind_and_too_many_frames(features):
  with pytest.raises(ValueError, match="kind='conv'"):
    _abstract(Projector("conv", OUT), features)
  with pytest.raises(ValueError, match="exceed the 2"):
    _abstract(Projector("resampler", OUT, num_heads=HEADS, max_frames=2), features)
