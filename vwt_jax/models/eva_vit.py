"""The EVA ViT-g vision encoder of BLIP-2 / ST-LLM, followed by `ln_vision`.

Vriptor (ST-LLM) encodes each frame as `st_llm.py` `encode_img` does:
`ln_vision(visual_encoder(image))`, with `visual_encoder` built by
`eva_vit.py` `create_eva_vit_g` and `ln_vision` the float32 LayerNorm of
`blip2.py` (`init_vision_encoder`). This module computes the same from
normalised images (B, H, W, C): OpenAI CLIP's mean and std, as ST-LLM's
`BlipImageBaseProcessor` and its demo's transform apply them
(`data.vript.frames.normalize`).

* a stride-p patch conv with bias, then [cls_token; patches] + learned
  absolute positions (`VisionTransformer.forward_features`);
* `depth` pre-LN blocks (`Block`): x + attn(norm1(x)); x + fc2(gelu(fc1(norm2(x)))),
  exact GELU, LayerNorm eps 1e-6. Attention (`Attention`) projects q/k/v with
  one fused `qkv` weight whose bias is [q_bias; 0; v_bias]: keys have no bias.
  `create_eva_vit_g` leaves out layer scale (`init_values`), relative position
  biases and the final norm, so the features are the last block's output for
  every token, CLS included;
* `ln_vision` (eps 1e-5) computed in float32 and cast back to the compute dtype.

Returns (B, 1 + (H/p) * (W/p), width). The `intermediates` collection holds
`block0_out` (the first block's output) and `features` (the last block's,
before `ln_vision`).

Precision: float32 by default. The official model casts the conv and linear
weights to float16 (`convert_weights_to_fp16`) and runs under autocast, with
LayerNorms in float32; `dtype` sets the compute dtype of the projections here
(bfloat16 or float16), while every LayerNorm keeps float32 statistics.

The q/k/v projections are split per head like `layers.MultiHeadAttention`'s
(the converter splits the fused `qkv` weight), with the same logical axis
names as the CLIP tower (`clip_vision.py`).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers

Dtype = Any

# `VisionTransformer` options that `create_eva_vit_g` leaves at these values;
# `from_official` rejects others (the released encoder has none of them).
_OFFICIAL_FIXED = dict(qkv_bias=True, qk_scale=None, init_values=None,
                       use_abs_pos_emb=True, use_rel_pos_bias=False,
                       use_shared_rel_pos_bias=False)


@dataclasses.dataclass(frozen=True)
class EvaViTConfig:
  """Sizes of the encoder; defaults are `create_eva_vit_g`'s ViT-g at 224 px.

  `mlp_dim` is the official `int(width * mlp_ratio)` with mlp_ratio 4.3637
  (6144 for width 1408); heads are 1408 // 88 = 16, 88 wide.
  """
  image_size: int = 224
  patch_size: int = 14
  num_channels: int = 3
  width: int = 1408
  depth: int = 39
  num_heads: int = 16
  mlp_dim: int = 6144
  layer_norm_eps: float = 1e-6
  ln_vision_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    layers.check_sizes(self, "width", "num_heads")
    if self.image_size % self.patch_size:
      raise ValueError(f"EvaViTConfig: image_size={self.image_size} is not divisible by "
                       f"patch_size={self.patch_size}")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """CLS + patches."""
    return 1 + self.grid_size ** 2

  @classmethod
  def from_official(cls, args: Mapping[str, Any], ln_vision_eps: float = 1e-5,
                    source: str = "VisionTransformer arguments", **overrides) -> "EvaViTConfig":
    """Reads `eva_vit.VisionTransformer` keyword arguments.

    `args` holds img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
    and `norm_layer_eps` for the eps of the blocks' `partial(nn.LayerNorm, eps=...)`;
    optionally in_chans (3), and the options of `_OFFICIAL_FIXED` with those
    values only. Dropout and drop-path rates are ignored (eval mode).
    `overrides` set other fields (dtype, ...).
    """
    layers.require_fields(args, ("img_size", "patch_size", "embed_dim", "depth", "num_heads",
                                 "mlp_ratio", "norm_layer_eps"), source)
    for key, value in _OFFICIAL_FIXED.items():
      if args.get(key, value) != value:
        raise ValueError(f"{source}: {key}={args[key]!r} is not supported (create_eva_vit_g "
                         f"uses {value!r})")
    width = int(args["embed_dim"])
    try:
      return cls(image_size=int(args["img_size"]), patch_size=int(args["patch_size"]),
                 num_channels=int(args.get("in_chans", 3)), width=width,
                 depth=int(args["depth"]), num_heads=int(args["num_heads"]),
                 mlp_dim=int(width * float(args["mlp_ratio"])),
                 layer_norm_eps=float(args["norm_layer_eps"]),
                 ln_vision_eps=float(ln_vision_eps), **overrides)
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None


class EvaAttention(nn.Module):
  """Self-attention with biased q and v projections and an unbiased k projection."""
  config: EvaViTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)

    def project(name, use_bias):
      return nn.DenseGeneral(
          (cfg.num_heads, cfg.head_dim), use_bias=use_bias,
          kernel_init=layers.weight_init(("embed", "heads", "kv")),
          bias_init=layers.zeros_init(("heads", "kv")),
          dot_general=layers.flat_dot_general, name=name, **kw)(x)

    q, k, v = project("query", True), project("key", False), project("value", True)
    y = layers.dot_product_attention(q, k, v)
    return layers.attention_out(cfg.width, name="out", **kw)(y)


class EvaBlock(nn.Module):
  """Pre-LN block: x + attn(norm1(x)); x + fc2(gelu(fc1(norm2(x))))."""
  config: EvaViTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="norm1", **kw)(x)
    x = x + EvaAttention(cfg, name="attn")(h)
    h = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="norm2", **kw)(x)
    h = layers.dense(cfg.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(h)
    h = nn.gelu(h, approximate=False)
    return layers.constrain_activations(
        x + layers.dense(cfg.width, ("mlp", "embed"), name="fc2", **kw)(h))


class EvaViT(nn.Module):
  """Normalised images (B, H, W, C) -> ln_vision(features) (B, 1 + P, width)."""
  config: EvaViTConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(f"images {images.shape}: expected (B, {', '.join(map(str, expected))})")
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    batch, width, p = images.shape[0], cfg.width, cfg.patch_size

    x = layers.conv(width, p, (None, None, None, "embed"), strides=(p, p), padding="VALID",
                    name="patch_embed", **kw)(images.astype(cfg.dtype))
    x = x.reshape(batch, cfg.num_tokens - 1, width)  # row-major, as torch's flatten(2)
    cls_token = self.param("cls_token", layers.weight_init(("embed",)), (width,),
                           cfg.param_dtype)
    pos_embed = self.param("pos_embed", layers.weight_init(("length", "embed")),
                           (cfg.num_tokens, width), cfg.param_dtype)
    cls_tok = jnp.broadcast_to(cls_token.astype(x.dtype), (batch, 1, width))
    x = jnp.concatenate([cls_tok, x], axis=1) + pos_embed.astype(x.dtype)

    for i in range(cfg.depth):
      x = EvaBlock(cfg, name=f"blocks_{i}")(x)
      if i == 0:
        self.sow("intermediates", "block0_out", x)
    self.sow("intermediates", "features", x)
    # blip2.py's LayerNorm upcasts to float32 and casts the result back.
    ln_vision = layers.layer_norm(epsilon=cfg.ln_vision_eps, dtype=jnp.float32,
                                  param_dtype=cfg.param_dtype, name="ln_vision")
    return ln_vision(x.astype(jnp.float32)).astype(cfg.dtype)


def abstract_params(config: EvaViTConfig) -> Any:
  """The boxed parameter tree of an encoder of `config`, by shape only."""
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels),
                                jnp.float32)
  return layers.abstract_params(EvaViT(config), images)
