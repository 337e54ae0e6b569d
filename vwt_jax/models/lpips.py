"""LPIPS v0.1 (Zhang et al. 2018): a learned perceptual distance on frozen features.

Matches the `lpips` package (version='0.1'): inputs are shifted/scaled by the
ScalingLayer constants, run through a torchvision feature extractor (VGG16,
AlexNet or SqueezeNet 1.1), each tapped ReLU output is unit-normalised over
channels, the squared differences are weighted by a 1x1 "lin" head and averaged
over space; the distance is the sum over taps. The backbones reproduce the
torchvision `features` stacks layer for layer; each conv is named
`features_{idx}` after its torchvision index so the converter's key map is
direct. Dropout before the lin heads is inactive at inference and not modelled.
"""

import dataclasses
from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models.layers import conv

Dtype = Any

# ScalingLayer of lpips v0.1: x' = (x - shift) / scale, on [-1, 1] inputs.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """torchvision Conv2d followed (at the next index) by a ReLU."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """torchvision MaxPool2d (no padding)."""
  window: int
  stride: int
  ceil_mode: bool = False


@dataclasses.dataclass(frozen=True)
class FireSpec:
  """torchvision SqueezeNet Fire: squeeze 1x1, then [expand 1x1, expand 3x3] concatenated."""
  squeeze: int
  expand: int


RELU = "relu"
Layer = Union[ConvSpec, PoolSpec, FireSpec, str]


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A torchvision `features` stack, one entry per index, and the tapped indices.

  A tap is the output of `features[idx]`, i.e. the end of the official
  `slice{k}` (`features[start:idx + 1]`).
  """
  layers: tuple[Layer, ...]
  taps: tuple[int, ...]


def _vgg16() -> Backbone:
  layers = []
  for block, (width, depth) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
    if block:
      layers.append(PoolSpec(2, 2))
    for _ in range(depth):
      layers += [ConvSpec(width, 3, padding=1), RELU]
  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; the final pool (index 30) is unused.
  return Backbone(tuple(layers), (3, 8, 15, 22, 29))


def _alexnet() -> Backbone:
  layers = (ConvSpec(64, 11, stride=4, padding=2), RELU, PoolSpec(3, 2),
            ConvSpec(192, 5, padding=2), RELU, PoolSpec(3, 2),
            ConvSpec(384, 3, padding=1), RELU,
            ConvSpec(256, 3, padding=1), RELU,
            ConvSpec(256, 3, padding=1), RELU)
  return Backbone(layers, (1, 4, 7, 9, 11))


def _squeezenet1_1() -> Backbone:
  # SqueezeNet's pools use ceil_mode=True: a partial window at the bottom/right
  # edge still produces an output row/column.
  pool = PoolSpec(3, 2, ceil_mode=True)
  layers = (ConvSpec(64, 3, stride=2), RELU, pool,
            FireSpec(16, 64), FireSpec(16, 64), pool,
            FireSpec(32, 128), FireSpec(32, 128), pool,
            FireSpec(48, 192), FireSpec(48, 192), FireSpec(64, 256), FireSpec(64, 256))
  return Backbone(layers, (1, 4, 7, 9, 10, 11, 12))


BACKBONES = {"vgg": _vgg16(), "alex": _alexnet(), "squeeze": _squeezenet1_1()}


def _conv(features: int, kernel: int, in_axis, *, stride: int = 1, padding: int = 0,
          dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Conv:
  return conv(features, kernel, (None, None, in_axis, "conv_out"), strides=stride,
              padding=((padding, padding),) * 2, dtype=dtype, param_dtype=param_dtype, name=name)


def _max_pool(x: jax.Array, spec: PoolSpec) -> jax.Array:
  padding = "VALID"
  if spec.ceil_mode:
    # Room for a last partial window; -inf padding (flax's max-pool init) never wins the max.
    padding = [(0, -(-(size - spec.window) // spec.stride) * spec.stride + spec.window - size)
               for size in x.shape[1:3]]
  return nn.max_pool(x, (spec.window,) * 2, strides=(spec.stride,) * 2, padding=padding)


class Fire(nn.Module):
  """SqueezeNet Fire module (ReLU after every conv)."""
  squeeze: int
  expand: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    s = nn.relu(_conv(self.squeeze, 1, "conv_in", name="squeeze", **kw)(x))
    e1 = nn.relu(_conv(self.expand, 1, "conv_in", name="expand1x1", **kw)(s))
    e3 = nn.relu(_conv(self.expand, 3, "conv_in", padding=1, name="expand3x3", **kw)(s))
    return jnp.concatenate([e1, e3], axis=-1)


class Features(nn.Module):
  """Runs a `Backbone` on NHWC inputs; returns the tapped activations."""
  backbone: Backbone
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[list[jax.Array], dict]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    taps = []
    last = max(self.backbone.taps)
    for idx, layer in enumerate(self.backbone.layers[:last + 1]):
      if isinstance(layer, ConvSpec):
        # RGB input channels never divide a mesh axis, so that kernel axis stays unsharded.
        x = _conv(layer.features, layer.kernel, "conv_in" if idx else None, stride=layer.stride,
                  padding=layer.padding, name=f"features_{idx}", **kw)(x)
      elif isinstance(layer, PoolSpec):
        x = _max_pool(x, layer)
      elif isinstance(layer, FireSpec):
        x = Fire(layer.squeeze, layer.expand, name=f"features_{idx}", **kw)(x)
      else:
        x = nn.relu(x)
      if idx in self.backbone.taps:
        taps.append(x)
    return taps, {}


def unit_normalize(features: jax.Array) -> jax.Array:
  """f / (||f||_channels + 1e-10), the official `normalize_tensor`.

  The squared norm is floored at the smallest normal float before the sqrt: an
  all-zero ReLU column would otherwise give a 0 * inf = NaN gradient. The floor's
  square root (~1e-19) is negligible next to the 1e-10 epsilon, so values match.
  """
  squared = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
  norm = jnp.sqrt(jnp.maximum(squared, jnp.finfo(features.dtype).tiny))
  return features / (norm + NORM_EPS)


class LPIPS(nn.Module):
  """LPIPS v0.1 distance between two NHWC image batches.

  `__call__(x0, x1, normalize=False)` takes images in [-1, 1] (or [0, 1] with
  `normalize=True`, like the official flag) and returns `(dist [N], aux)` with
  aux['per_layer'] [N, L] (per-tap spatial means, summing to dist) and
  aux['spatial'] [N, H, W] (each tap's weighted map, bilinearly upsampled to
  the input size with half-pixel centres, summed over taps).

  The backbone runs in `dtype`; normalisation, lin heads and averages in float32.
  """
  net: str = "vgg"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x0: jax.Array, x1: jax.Array, *, normalize: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.net not in BACKBONES:
      raise ValueError(f"LPIPS net {self.net!r} is not one of {sorted(BACKBONES)}")
    if x0.shape != x1.shape:
      raise ValueError(f"LPIPS inputs differ in shape: {x0.shape} vs {x1.shape}")
    batch, height, width = x0.shape[:3]
    # Interleaving the pairs (rather than concatenating) keeps each device's
    # rows local under batch sharding; one pass reads the weights once.
    x = jnp.stack([x0, x1], axis=1).reshape((2 * batch,) + x0.shape[1:]).astype(jnp.float32)
    if normalize:
      x = 2.0 * x - 1.0
    x = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
    taps, _ = Features(BACKBONES[self.net], dtype=self.dtype, param_dtype=self.param_dtype,
                       name="net")(x.astype(self.dtype))
    per_layer, spatial = [], jnp.zeros((batch, height, width), jnp.float32)
    for k, tap in enumerate(taps):
      if 0 in tap.shape[1:3]:
        raise ValueError(f"LPIPS-{self.net}: {height}x{width} images are too small "
                         f"(tap {k} has an empty {tap.shape[1]}x{tap.shape[2]} map)")
      tap = unit_normalize(tap.astype(jnp.float32)).reshape((batch, 2) + tap.shape[1:])
      diff = jnp.square(tap[:, 0] - tap[:, 1])
      weighted = conv(1, 1, (None, None, "conv_in", None), use_bias=False, dtype=jnp.float32,
                      param_dtype=self.param_dtype, name=f"lin{k}")(diff)[..., 0]
      per_layer.append(jnp.mean(weighted, axis=(1, 2)))
      # Every tap is at most the input size, so this is an upsample: without
      # antialiasing it is torch's bilinear with align_corners=False.
      spatial += jax.image.resize(weighted, (batch, height, width), "bilinear", antialias=False)
    per_layer = jnp.stack(per_layer, axis=1)
    return jnp.sum(per_layer, axis=1), {"per_layer": per_layer, "spatial": spatial}
