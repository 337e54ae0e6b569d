"""ConvNeXt classifier with torchvision's layout (frozen perceptual-loss backbone).

Inference only: stochastic depth is the identity at inference, so it is not
modelled; the network is used frozen inside TiTok's perceptual loss.
Parameter names are the targets of `vwt_jax.conversion.convnext`.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models.layers import conv, dense, layer_norm

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ConvNeXtConfig:
  """Defaults are torchvision's `convnext_small`."""
  depths: Sequence[int] = (3, 3, 27, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  num_classes: int = 1000
  layer_scale_init: float = 1e-6
  norm_epsilon: float = 1e-6


CONVNEXT_SMALL = ConvNeXtConfig()


class ConvNeXtBlock(nn.Module):
  """torchvision `CNBlock`: dwconv7 -> LN -> Linear 4x -> GELU -> Linear -> scale."""
  layer_scale_init: float
  norm_epsilon: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dim = x.shape[-1]
    # The depthwise kernel's input axis has size 1, so it cannot carry 'conv_in'.
    h = conv(dim, 7, (None, None, None, "conv_out"), padding=3, feature_group_count=dim,
             name="dwconv", **kw)(x)
    h = layer_norm(epsilon=self.norm_epsilon, name="norm", **kw)(h)
    h = dense(4 * dim, ("embed", "mlp"), name="fc1", **kw)(h)
    h = jax.nn.gelu(h, approximate=False)  # torch nn.GELU is the exact (erf) form.
    h = dense(dim, ("mlp", "embed"), name="fc2", **kw)(h)
    gamma = self.param(
        "layer_scale",
        nn.with_logical_partitioning(nn.initializers.constant(self.layer_scale_init), ("norm",)),
        (dim,), self.param_dtype)
    return x + h * gamma.astype(self.dtype)


class ConvNeXt(nn.Module):
  """ConvNeXt on ImageNet-normalised NHWC images; returns (logits, aux).

  aux['pooled'] is the spatially averaged last-stage feature (before the head LN).
  """
  config: ConvNeXtConfig = CONVNEXT_SMALL
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ln = lambda name: layer_norm(epsilon=cfg.norm_epsilon, name=name, **kw)
    # RGB input channels never divide a mesh axis, so that kernel axis stays unsharded.
    h = conv(cfg.dims[0], 4, (None, None, None, "conv_out"), strides=4, padding="VALID",
             name="stem_conv", **kw)(images.astype(self.dtype))
    h = ln("stem_norm")(h)
    for stage, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
      if stage > 0:
        h = ln(f"down_{stage}_norm")(h)
        h = conv(dim, 2, (None, None, "conv_in", "conv_out"), strides=2, padding="VALID",
                 name=f"down_{stage}_conv", **kw)(h)
      for i in range(depth):
        h = ConvNeXtBlock(cfg.layer_scale_init, cfg.norm_epsilon, name=f"stage_{stage}_block_{i}",
                          **kw)(h)
    pooled = jnp.mean(h, axis=(1, 2))
    # 1000 classes do not divide a mesh axis, so the class axis stays unsharded.
    logits = dense(cfg.num_classes, ("embed", None), name="head", **kw)(ln("head_norm")(pooled))
    return logits, {"pooled": pooled}
