"""Patch discriminators: TiTok's MaskGIT-style one and LlamaGen's PatchGAN.

`NLayerDiscriminator` (TiTok / MaskGIT): a Conv5x5 stem, then per stage
Conv3x3 -> BlurPool(stride 2) -> GroupNorm -> LeakyReLU, an adaptive max pool
to a fixed grid (so the logit map has the same size for any input
resolution), and a 1x1 + 5x5 conv head to one logit per cell. All
convolutions use TF-"SAME" padding like the reference's `Conv2dSame`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models.layers import weight_init, zeros_init
from vwt_jax.models.maskgit_vqgan import group_norm

Dtype = Any
CONV_AXES = (None, None, "conv_in", "conv_out")


def _torch_uniform(bound: float):
  """U(-bound, bound): torch's default Conv2d bias init, given fan_in up front."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _conv(features: int, kernel: int, in_features: int, *, dtype: Dtype, param_dtype: Dtype,
          name: str, axes: Sequence[str | None] = CONV_AXES) -> nn.Conv:
  """Conv with torch's default init, so a from-scratch D trains like the reference."""
  return nn.Conv(
      features, (kernel, kernel), padding="SAME", dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), tuple(axes)),
      bias_init=nn.with_logical_partitioning(
          _torch_uniform(1.0 / np.sqrt(in_features * kernel * kernel)), (axes[-1],)),
      name=name)


def _blur_axis(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
  """Stride-2 1-D blur along `axis` with TF-SAME padding, as strided slices.

  A depthwise (grouped) conv would do the same, but grouped convs and their
  gradients are slow on CPU; shifted slices are cheap on every backend.
  """
  n = x.shape[axis]
  out = -(-n // 2)
  pad = max((out - 1) * 2 + len(taps) - n, 0)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (pad // 2, pad - pad // 2)
  xp = jnp.pad(x, widths)
  total = 0
  for k, t in enumerate(taps):
    piece = jax.lax.slice_in_dim(xp, k, k + 2 * (out - 1) + 1, stride=2, axis=axis)
    total = total + jnp.asarray(t, x.dtype) * piece
  return total


def blur_pool(x: jax.Array, taps: Sequence[int] = (1, 3, 3, 1)) -> jax.Array:
  """Depthwise blur with the normalised outer product of `taps`, stride 2, SAME pad.

  lax's "SAME" puts the odd padding pixel at the bottom/right, exactly like the
  reference BlurBlock's `calc_same_pad` + `F.pad`; the 2-D kernel is separable.
  """
  k = np.asarray(taps, np.float64)
  k = (k / k.sum()).astype(np.float32)
  return _blur_axis(_blur_axis(x, k, 1), k, 2)


def _adaptive_max_axis(x: jax.Array, axis: int, out: int) -> jax.Array:
  """torch's adaptive max pooling along one axis.

  Window i covers [floor(i*n/out), ceil((i+1)*n/out)); windows can differ in
  length when out does not divide n, so each is padded to the longest by
  repeating its last index (harmless under max) and reduced with one gather.
  """
  n = x.shape[axis]
  i = np.arange(out)
  starts = (i * n) // out
  ends = -((-(i + 1) * n) // out)
  width = int((ends - starts).max())
  idx = np.minimum(starts[:, None] + np.arange(width)[None, :], ends[:, None] - 1)
  gathered = jnp.take(x, idx.reshape(-1), axis=axis)
  gathered = gathered.reshape(x.shape[:axis] + (out, width) + x.shape[axis + 1:])
  return jnp.max(gathered, axis=axis + 1)


def adaptive_max_pool2d(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """`F.adaptive_max_pool2d` for NHWC inputs (max is separable over H and W)."""
  x = _adaptive_max_axis(x, 1, output_size[0])
  return _adaptive_max_axis(x, 2, output_size[1])


class NLayerDiscriminator(nn.Module):
  """TiTok / MaskGIT discriminator on NHWC images in [-1, 1].

  Attributes:
    hidden_channels: width of the stem; stage i outputs
      `hidden_channels * channel_mults[i + 1]` channels.
    channel_mults: the reference's `in_channel_mult`; one stage per entry after
      the first. (1, 1, 2, 4) gives 128 -> 128 -> 256 -> 512.
    norm_groups: GroupNorm groups (32 in the reference; lower it for tiny widths).
    pool_size: side of the adaptive max pool grid, i.e. of the logit map.
    blur_taps: 1-D blur filter of the stride-2 downsampling.
    negative_slope: LeakyReLU slope.
    norm_epsilon: torch GroupNorm's default 1e-5 (Flax defaults to 1e-6).
    dtype: compute dtype.
    param_dtype: parameter dtype (float32 in training).
  """
  hidden_channels: int = 128
  channel_mults: Sequence[int] = (1, 1, 2, 4)
  norm_groups: int = 32
  pool_size: int = 16
  blur_taps: Sequence[int] = (1, 3, 3, 1)
  negative_slope: float = 0.1
  norm_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (logits (B, pool_size, pool_size, 1), aux={})."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = lambda h: nn.leaky_relu(h, self.negative_slope)
    widths = [self.hidden_channels * m for m in self.channel_mults]
    # RGB input channels never divide a mesh axis, so that kernel axis stays unsharded.
    h = act(_conv(widths[0], 5, images.shape[-1], axes=(None, None, None, "conv_out"),
                  name="conv_in", **kw)(images.astype(self.dtype)))
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
      h = _conv(w_out, 3, w_in, name=f"stage_{i}_conv", **kw)(h)
      h = blur_pool(h, self.blur_taps)
      h = act(group_norm(num_groups=self.norm_groups, epsilon=self.norm_epsilon,
                         name=f"stage_{i}_norm", **kw)(h))
    h = adaptive_max_pool2d(h, (self.pool_size, self.pool_size))
    h = act(_conv(widths[-1], 1, widths[-1], name="head_conv", **kw)(h))
    # A single output channel cannot be sharded either.
    logits = _conv(1, 5, widths[-1], axes=(None, None, "conv_in", None), name="to_logits",
                   **kw)(h)
    return logits, {}


class PatchGANDiscriminator(nn.Module):
  """pix2pix / taming PatchGAN with BatchNorm (LlamaGen's `NLayerDiscriminator`).

  conv4x4 s2 -> LReLU(0.2); (n_layers - 1) x [conv4x4 s2 (no bias) -> BN -> LReLU]
  with ndf * min(2^i, 8) filters; conv4x4 s1 (no bias) -> BN -> LReLU; conv4x4 s1
  -> 1 logit per patch. All convs pad 1. Kernels N(0, 0.02), BN scales N(1, 0.02)
  as the reference's `weights_init`; conv biases keep torch's default init.

  BatchNorm needs the 'batch_stats' collection: `train=True` normalises with the
  batch statistics (as the reference, whose discriminator never leaves train
  mode) and returns updated running averages when applied with
  `mutable=['batch_stats']`. Under a sharded jit the statistics are global.
  """
  ndf: int = 64
  n_layers: int = 3
  negative_slope: float = 0.2
  bn_momentum: float = 0.9  # torch's momentum=0.1
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = True
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (logits (B, H/8 - 2, W/8 - 2, 1) for n_layers=3, aux={})."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = lambda h: nn.leaky_relu(h, self.negative_slope)

    def conv(features, stride, in_features, name, use_bias=False, axes=CONV_AXES):
      return nn.Conv(
          features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
          use_bias=use_bias, kernel_init=weight_init(tuple(axes)),
          bias_init=nn.with_logical_partitioning(
              _torch_uniform(1.0 / np.sqrt(in_features * 16)), (axes[-1],)),
          name=name, **kw)

    def batch_norm(name):
      return nn.BatchNorm(
          use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
          scale_init=nn.with_logical_partitioning(
              lambda key, shape, dtype=jnp.float32: 1.0 + 0.02 * jax.random.normal(
                  key, shape, dtype), ("norm",)),
          bias_init=zeros_init(("norm",)), name=name, **kw)

    h = act(conv(self.ndf, 2, images.shape[-1], "conv_in", use_bias=True,
                 axes=(None, None, None, "conv_out"))(images.astype(self.dtype)))
    width = self.ndf
    for i in range(1, self.n_layers + 1):
      out = self.ndf * min(2 ** i, 8)
      stride = 2 if i < self.n_layers else 1
      h = conv(out, stride, width, f"layer_{i}_conv")(h)
      h = act(batch_norm(f"layer_{i}_norm")(h))
      width = out
    logits = conv(1, 1, width, "to_logits", use_bias=True,
                  axes=(None, None, "conv_in", None))(h)
    return logits, {}
