import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers
from vwt_jax.models import discriminator as disc

TINY = dict(hidden_channels=8, channel_mults=(1, 1, 2, 4), norm_groups=4)
LOGICAL_NAMES = {"embed", "mlp", "heads", "kv", "vocab", "token", "length", "conv_in",
                 "conv_out", "norm", None}


def _torch_blur(x, taps):
  """The reference BlurBlock: TF-SAME pad for a 4-tap stride-2 window, depthwise conv."""
  k = torch.tensor(taps, dtype=torch.float32)
  k = (k[None, :] * k[:, None]) / (k.sum() ** 2)
  pads = []
  for i in (x.shape[-1], x.shape[-2]):
    total = max((math.ceil(i / 2) - 1) * 2 + len(taps) - i, 0)
    pads += [total // 2, total - total // 2]
  x = F.pad(x, pads)
  return F.conv2d(x, k[None, None].expand(x.shape[1], -1, -1, -1), stride=2, groups=x.shape[1])


def _nhwc(t):
  return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


def _random_params(model, x, seed=0):
  """Numpy-filled params: jitting `init` pays seconds of XLA:CPU compile for threefry."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (32, 5)])
@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1)])
def test_blur_pool_matches_torch(size, taps):
  x = torch.randn(2, 6, *size)
  got = disc.blur_pool(_nhwc(x), taps)
  # One depthwise window of len(taps)^2 terms (exact weights: the sums are powers of 2).
  helpers.assert_allclose_f32(got, _nhwc(_torch_blur(x, taps)), reduction=len(taps) ** 2)


@pytest.mark.parametrize("in_size,out_size", [
    ((32, 32), (16, 16)), ((4, 4), (16, 16)), ((10, 7), (3, 4)), ((5, 13), (16, 5)),
    ((9, 9), (9, 9))])
def test_adaptive_max_pool_matches_torch(in_size, out_size):
  x = torch.randn(2, 5, *in_size)
  got = disc.adaptive_max_pool2d(_nhwc(x), out_size)
  np.testing.assert_array_equal(got, _nhwc(F.adaptive_max_pool2d(x, out_size)))


@pytest.mark.parametrize("size", [32, 64, 256])
def test_output_shape_any_resolution(size):
  model = disc.NLayerDiscriminator(**TINY)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, aux = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 16, 16, 1)
  assert aux == {}


def test_reference_size_params_and_partitioning():
  model = disc.NLayerDiscriminator()
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
  params = variables["params"]
  shapes = {k: v["kernel"].value.shape for k, v in params.items() if "kernel" in v}
  assert shapes == {
      "conv_in": (5, 5, 3, 128), "stage_0_conv": (3, 3, 128, 128),
      "stage_1_conv": (3, 3, 128, 256), "stage_2_conv": (3, 3, 256, 512),
      "head_conv": (1, 1, 512, 512), "to_logits": (5, 5, 512, 1)}
  # 2*128 GN + convs (weights + biases) of the torch module.
  want = (3 * 25 * 128 + 128) + (128 * 9 * 128 + 128) + (128 * 9 * 256 + 256) + (
      256 * 9 * 512 + 512) + (512 * 512 + 512) + (512 * 25 + 1) + 2 * (128 + 256 + 512)
  leaves = jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert sum(int(np.prod(v.value.shape)) for v in leaves) == want
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert set(leaf.names) <= LOGICAL_NAMES


def test_forward_matches_torch_functional():
  """Whole network against the reference op sequence written with torch.nn.functional."""
  model = disc.NLayerDiscriminator(**TINY, pool_size=4)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 33, 30, 3)).astype(np.float32)
  params = _random_params(model, x)
  got, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(x))

  def conv(h, name):
    w = torch.tensor(np.asarray(params[name]["kernel"])).permute(3, 2, 0, 1)
    return F.conv2d(h, w, torch.tensor(np.asarray(params[name]["bias"])), padding=w.shape[-1] // 2)

  act = lambda h: F.leaky_relu(h, 0.1)
  h = act(conv(torch.tensor(x).permute(0, 3, 1, 2), "conv_in"))
  for i in range(3):
    h = _torch_blur(conv(h, f"stage_{i}_conv"), (1, 3, 3, 1))
    gn = params[f"stage_{i}_norm"]
    h = act(F.group_norm(h, 4, torch.tensor(np.asarray(gn["scale"])),
                         torch.tensor(np.asarray(gn["bias"])), eps=1e-5))
  h = F.adaptive_max_pool2d(h, (4, 4))
  want = conv(act(conv(h, "head_conv")), "to_logits")
  # The longest sum is to_logits' 5x5x32; conv_in, 3 stages of conv, blur and
  # group norm (mean, variance), head_conv, to_logits.
  helpers.assert_allclose_f32(got, _nhwc(want), reduction=5 * 5 * 32, depth=15)


def test_bfloat16_compute_keeps_float32_params():
  model = disc.NLayerDiscriminator(**TINY, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 32, 32, 3))
  params = _random_params(model, x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))
  logits, _ = jax.jit(model.apply)({"params": params}, x)
  assert logits.dtype == jnp.bfloat16
