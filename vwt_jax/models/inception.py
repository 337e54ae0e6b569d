"""The FID Inception-v3 ("2015-12-05" TF graph) with the ADM evaluator's input path.

This is the network inside `classify_image_graph_def.pb` as the ADM evaluator
feeds it: uint8/float images in [0, 255] of any size go through the graph's
TF1 `ResizeBilinear` to 299x299 and `(x - 128) / 128`. It differs from
torchvision's Inception-v3 in the ways pytorch-fid patches: batch norm has no
scale (gamma), the average pools skip padded pixels, Mixed_7c's pool branch is
a max pool, and the classifier has 1008 outputs.

Module and parameter names are the graph's node names (`conv`, `conv_1`, ...,
`mixed_6/tower_1/conv_3/conv2d_params`, `.../batchnorm/moving_mean`,
`softmax/weights`), so a flattened parameter path equals the TF Const it comes
from; `vwt_jax.conversion.inception` writes them. Inference only: the batch
norm statistics are plain parameters.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_CLASSES = 1008
# sFID keeps the first 7 channels of Mixed_6d's 1x1 branch (17x17 map): 2023-d.
SPATIAL_CHANNELS = 7
BATCHNORM_EPSILON = 1e-3

Precision = Optional[jax.lax.Precision]
# Per layer: (features, (kernel_h, kernel_w), stride, padding).
ConvSpec = tuple[int, tuple[int, int], int, str]


def _source_indices(in_size: int, out_size: int):
  """Rows sampled by TF1's legacy bilinear resize along one axis.

  TF computes `scale = in / out` and `src = dst * scale` in float32 with no
  half-pixel offset; the upper neighbour is clamped to the border.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(src)
  frac = (src - lower).astype(np.float32)
  lo = np.minimum(lower.astype(np.int32), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, frac


def tf1_resize_bilinear(images: jax.Array, height: int, width: int) -> jax.Array:
  """TF1 `ResizeBilinear(align_corners=False, half_pixel_centers=False)` of NHWC images.

  [N, H, W, C] of any real dtype -> [N, height, width, C] float32, without
  antialiasing, in TF's interpolation order (horizontal lerps of the two
  source rows, then the vertical lerp).
  """
  x = jnp.asarray(images).astype(jnp.float32)
  y_lo, y_hi, y_frac = _source_indices(x.shape[1], height)
  x_lo, x_hi, x_frac = _source_indices(x.shape[2], width)
  x_frac = jnp.asarray(x_frac)[:, None]

  def horizontal(rows):
    left = jnp.take(rows, x_lo, axis=2)
    right = jnp.take(rows, x_hi, axis=2)
    return left + (right - left) * x_frac

  top = horizontal(jnp.take(x, y_lo, axis=1))
  bottom = horizontal(jnp.take(x, y_hi, axis=1))
  return top + (bottom - top) * jnp.asarray(y_frac)[:, None, None]


class BatchNorm(nn.Module):
  """The graph's `BatchNormWithGlobalNormalization` without scale: beta, mean, var."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (x.shape[-1],)

    def param(name, init):
      return self.param(name, nn.with_logical_partitioning(init, ("conv_out",)), shape,
                        jnp.float32)

    beta = param("beta", nn.initializers.zeros_init())
    mean = param("moving_mean", nn.initializers.zeros_init())
    var = param("moving_variance", nn.initializers.ones_init())
    return (x - mean) * jax.lax.rsqrt(var + BATCHNORM_EPSILON) + beta


class ConvBN(nn.Module):
  """conv (no bias, HWIO kernel `conv2d_params`) -> batch norm -> ReLU."""
  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: str = "SAME"
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # RGB input channels never divide a mesh axis, so that kernel axis stays unsharded.
    in_axis = None if x.shape[-1] == 3 else "conv_in"
    kernel = self.param(
        "conv2d_params",
        nn.with_logical_partitioning(nn.initializers.he_normal(),
                                     (None, None, in_axis, "conv_out")),
        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    # Stride-1 "SAME" with odd kernels pads symmetrically, as TF does.
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    return nn.relu(BatchNorm(name="batchnorm")(y))


class Tower(nn.Module):
  """A name scope of consecutive ConvBN layers `conv`, `conv_1`, ...

  With `split_features` (the Mixed_7b/7c towers) they end in the `mixed` split.
  """
  specs: Sequence[ConvSpec]
  precision: Precision = jax.lax.Precision.HIGHEST
  split_features: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, (features, kernel, stride, padding) in enumerate(self.specs):
      x = ConvBN(features, kernel, stride, padding, self.precision,
                 name=f"conv_{i}" if i else "conv")(x)
    if self.split_features:
      x = SplitConvs(self.split_features, self.precision, name="mixed")(x)
    return x


class SplitConvs(nn.Module):
  """The `mixed` scope of Mixed_7b/7c towers: a 1x3 (`conv`) and a 3x1 (`conv_1`) in parallel."""
  features: int
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = ConvBN(self.features, (1, 3), precision=self.precision, name="conv")(x)
    b = ConvBN(self.features, (3, 1), precision=self.precision, name="conv_1")(x)
    return jnp.concatenate([a, b], axis=-1)


class PoolTower(nn.Module):
  """A 3x3 stride-1 SAME pool, then the 1x1 ConvBN `conv`.

  The average pool divides by the number of in-image pixels (TF's SAME
  padding; `count_include_pad=False`); the max pool pads with -inf.
  """
  features: int
  max_pool: bool = False
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.max_pool:
      x = nn.max_pool(x, (3, 3), (1, 1), "SAME")
    else:
      x = nn.avg_pool(x, (3, 3), (1, 1), "SAME", count_include_pad=False)
    return ConvBN(self.features, (1, 1), precision=self.precision, name="conv")(x)


def _reduction_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (`mixed`, `mixed_1`, `mixed_2`): 1x1, 5x5, double 3x3, avg pool."""
  pool_features: int
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.precision
    return jnp.concatenate([
        ConvBN(64, (1, 1), precision=p, name="conv")(x),
        Tower([(48, (1, 1), 1, "SAME"), (64, (5, 5), 1, "SAME")], p, name="tower")(x),
        Tower([(64, (1, 1), 1, "SAME"), (96, (3, 3), 1, "SAME"), (96, (3, 3), 1, "SAME")], p,
              name="tower_1")(x),
        PoolTower(self.pool_features, precision=p, name="tower_2")(x),
    ], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (`mixed_3`): grid reduction 35 -> 17."""
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.precision
    return jnp.concatenate([
        ConvBN(384, (3, 3), 2, "VALID", p, name="conv")(x),
        Tower([(64, (1, 1), 1, "SAME"), (96, (3, 3), 1, "SAME"), (96, (3, 3), 2, "VALID")], p,
              name="tower")(x),
        _reduction_pool(x),
    ], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (`mixed_4`..`mixed_7`): factorised 7x7 towers.

  Returns the block output and its 1x1 branch (`mixed_{k}/conv`, the sFID tap
  for Mixed_6d).
  """
  channels_7x7: int
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    p, c = self.precision, self.channels_7x7
    branch_1x1 = ConvBN(192, (1, 1), precision=p, name="conv")(x)
    tower = Tower([(c, (1, 1), 1, "SAME"), (c, (1, 7), 1, "SAME"), (192, (7, 1), 1, "SAME")], p,
                  name="tower")(x)
    tower_1 = Tower([(c, (1, 1), 1, "SAME"), (c, (7, 1), 1, "SAME"), (c, (1, 7), 1, "SAME"),
                     (c, (7, 1), 1, "SAME"), (192, (1, 7), 1, "SAME")], p, name="tower_1")(x)
    tower_2 = PoolTower(192, precision=p, name="tower_2")(x)
    return jnp.concatenate([branch_1x1, tower, tower_1, tower_2], axis=-1), branch_1x1


class InceptionD(nn.Module):
  """Mixed_7a (`mixed_8`): grid reduction 17 -> 8."""
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.precision
    return jnp.concatenate([
        Tower([(192, (1, 1), 1, "SAME"), (320, (3, 3), 2, "VALID")], p, name="tower")(x),
        Tower([(192, (1, 1), 1, "SAME"), (192, (1, 7), 1, "SAME"), (192, (7, 1), 1, "SAME"),
               (192, (3, 3), 2, "VALID")], p, name="tower_1")(x),
        _reduction_pool(x),
    ], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c (`mixed_9`, `mixed_10`); the graph's Mixed_7c pools with max, not avg."""
  max_pool: bool
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.precision
    return jnp.concatenate([
        ConvBN(320, (1, 1), precision=p, name="conv")(x),
        Tower([(384, (1, 1), 1, "SAME")], p, 384, name="tower")(x),
        Tower([(448, (1, 1), 1, "SAME"), (384, (3, 3), 1, "SAME")], p, 384, name="tower_1")(x),
        PoolTower(192, self.max_pool, p, name="tower_2")(x),
    ], axis=-1)


class Logits(nn.Module):
  """`softmax/weights` [2048, 1008] applied without the bias (ADM's IS logits)."""
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("weights", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                           ("embed", "vocab")),
                   (POOL_FEATURES, NUM_CLASSES), jnp.float32)
    return jnp.dot(x, w, precision=self.precision)


class InceptionV3(nn.Module):
  """FID Inception-v3 on [0, 255] NHWC images of any size; returns (pool3, aux).

  pool3 is `pool_3:0` [N, 2048]. aux['spatial'] is `mixed_6/conv:0` (Mixed_6d's
  1x1 branch after ReLU) [..., :7] flattened in NHWC order, [N, 2023];
  aux['logits'] is `pool3 @ softmax/weights` [N, 1008] without the bias, only
  when the params hold `softmax` (the fc is optional).
  Convolutions and matmuls run at `precision` (HIGHEST by default so that
  accelerators do not fall back to bf16/TF32 passes).
  """
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    p = self.precision
    x = tf1_resize_bilinear(images, INPUT_SIZE, INPUT_SIZE)
    x = (x - 128.0) * (1.0 / 128.0)
    x = ConvBN(32, (3, 3), 2, "VALID", p, name="conv")(x)
    x = ConvBN(32, (3, 3), 1, "VALID", p, name="conv_1")(x)
    x = ConvBN(64, (3, 3), 1, "SAME", p, name="conv_2")(x)
    x = _reduction_pool(x)
    x = ConvBN(80, (1, 1), 1, "VALID", p, name="conv_3")(x)
    x = ConvBN(192, (3, 3), 1, "VALID", p, name="conv_4")(x)
    x = _reduction_pool(x)
    for i, pool_features in enumerate((32, 64, 64)):
      x = InceptionA(pool_features, p, name="mixed" if i == 0 else f"mixed_{i}")(x)
    x = InceptionB(p, name="mixed_3")(x)
    for i, channels in enumerate((128, 160, 160, 192)):
      x, branch_1x1 = InceptionC(channels, p, name=f"mixed_{4 + i}")(x)
      if i == 2:  # Mixed_6d, the graph's `mixed_6`.
        spatial = branch_1x1[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionD(p, name="mixed_8")(x)
    x = InceptionE(False, p, name="mixed_9")(x)
    x = InceptionE(True, p, name="mixed_10")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    aux = {"spatial": spatial}
    if self.is_initializing() or self.has_variable("params", "softmax"):
      aux["logits"] = Logits(p, name="softmax")(pool3)
    return pool3, aux
