"""LlamaGen's VQGAN image tokenizer (VQ-16 / VQ-8), NHWC throughout.

Taming-style encoder/decoder with single-head attention at the lowest
resolution and an l2-normalised (cosine) codebook. Differences from the
attention-free MaskGIT-VQGAN of `maskgit_vqgan.py`, whose conv / GroupNorm /
upsample helpers are shared: convs carry biases, the ResNet shortcut projects
the block *input*, downsampling is a stride-2 conv after a right/bottom-only
zero pad, and images enter the encoder in [-1, 1].
"""

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers
from vwt_jax.models.maskgit_vqgan import RGB_CHANNELS, conv, group_norm, upsample_nearest_2x
from vwt_jax.models.quantizers import VectorQuantizer

Dtype = Any

# Channel multipliers of the released tokenizers (base width 128).
VARIANTS: dict[str, tuple[int, ...]] = {
    "VQ-16": (1, 1, 2, 2, 4),
    "VQ-8": (1, 2, 2, 4),
}


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Defaults are the released VQ-16 (`vq_ds16_c2i.pt`)."""
  ch: int = 128
  ch_mult: tuple[int, ...] = VARIANTS["VQ-16"]
  num_res_blocks: int = 2
  z_channels: int = 256
  codebook_size: int = 16384
  codebook_embed_dim: int = 8
  codebook_l2_norm: bool = True
  commit_loss_beta: float = 0.25
  entropy_loss_ratio: float = 0.0
  entropy_temperature: float = 0.01
  dropout_p: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_levels(self) -> int:
    return len(self.ch_mult)

  @property
  def downsample_factor(self) -> int:
    return 2 ** (self.num_levels - 1)

  @classmethod
  def named(cls, name: str, **overrides) -> "VQGANConfig":
    """'VQ-16' or 'VQ-8', with any field overridden."""
    return cls(**{"ch_mult": layers.variant(VARIANTS, name, "VQGAN"), **overrides})

  @classmethod
  def from_official(cls, model_args: Mapping[str, Any], **overrides) -> "VQGANConfig":
    """Reads the official `ModelArgs` fields (as in vq_config.json's `model_args`).

    `ch` is not a ModelArgs field (the reference hard-codes 128): pass it as an
    override for other widths. `codebook_show_usage` only affects logging.
    """
    enc, dec = model_args["encoder_ch_mult"], model_args["decoder_ch_mult"]
    if list(enc) != list(dec):
      raise ValueError(f"model_args: encoder_ch_mult {list(enc)} != decoder_ch_mult "
                       f"{list(dec)}; only symmetric tokenizers are supported")
    fields = dict(
        ch_mult=tuple(int(m) for m in enc),
        z_channels=int(model_args["z_channels"]),
        codebook_size=int(model_args["codebook_size"]),
        codebook_embed_dim=int(model_args["codebook_embed_dim"]),
        codebook_l2_norm=bool(model_args["codebook_l2_norm"]),
        commit_loss_beta=float(model_args["commit_loss_beta"]),
        entropy_loss_ratio=float(model_args["entropy_loss_ratio"]),
        dropout_p=float(model_args["dropout_p"]))
    return cls(**{**fields, **overrides})


class ResnetBlock(nn.Module):
  """GN -> swish -> conv3x3 -> GN -> swish -> dropout -> conv3x3, plus the input.

  When channels change, a 1x1 `nin_shortcut` projects the input.
  """
  out_channels: int
  dropout_p: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    in_channels = x.shape[-1]
    h = nn.silu(group_norm(name="norm1", **kw)(x))
    h = conv(self.out_channels, 3, in_channels, use_bias=True, name="conv1", **kw)(h)
    h = nn.silu(group_norm(name="norm2", **kw)(h))
    h = nn.Dropout(self.dropout_p)(h, deterministic=not train)
    h = conv(self.out_channels, 3, self.out_channels, use_bias=True, name="conv2", **kw)(h)
    if in_channels != self.out_channels:
      x = conv(self.out_channels, 1, in_channels, use_bias=True, name="nin_shortcut", **kw)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions (row-major), residual."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, hgt, wid, c = x.shape
    h = group_norm(name="norm", **kw)(x)
    q, k, v = (conv(c, 1, c, use_bias=True, name=n, **kw)(h).reshape(b, hgt * wid, c)
               for n in ("q", "k", "v"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (c ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hgt, wid, c)
    return x + conv(c, 1, c, use_bias=True, name="proj_out", **kw)(out)


class Encoder(nn.Module):
  """Images (B,H,W,3) in [-1,1] -> (B,H/f,W/f,z_channels)."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    res = lambda c, name: ResnetBlock(c, cfg.dropout_p, name=name, **kw)
    last = cfg.num_levels - 1
    h = conv(cfg.ch, 3, x.shape[-1], use_bias=True, name="conv_in", **kw)(x.astype(cfg.dtype))
    for level, mult in enumerate(cfg.ch_mult):
      for j in range(cfg.num_res_blocks):
        h = res(cfg.ch * mult, f"conv_blocks_{level}_res_{j}")(h, train)
        if level == last:
          h = AttnBlock(name=f"conv_blocks_{level}_attn_{j}", **kw)(h)
      if level != last:
        # Asymmetric on purpose: the reference pads right/bottom only.
        h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
        h = conv(h.shape[-1], 3, h.shape[-1], use_bias=True, strides=2, padding="VALID",
                 name=f"conv_blocks_{level}_downsample", **kw)(h)
    h = res(h.shape[-1], "mid_0")(h, train)
    h = AttnBlock(name="mid_1", **kw)(h)
    h = res(h.shape[-1], "mid_2")(h, train)
    h = nn.silu(group_norm(name="norm_out", **kw)(h))
    return conv(cfg.z_channels, 3, h.shape[-1], use_bias=True, name="conv_out", **kw)(h)


class Decoder(nn.Module):
  """(B,h,w,z_channels) -> images (B,h*f,w*f,3), nominally in [-1,1] (unclamped).

  `conv_blocks_0` is the deepest level, as in the reference.
  """
  config: VQGANConfig

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    res = lambda c, name: ResnetBlock(c, cfg.dropout_p, name=name, **kw)
    top = cfg.ch * cfg.ch_mult[-1]
    h = conv(top, 3, z.shape[-1], use_bias=True, name="conv_in", **kw)(z.astype(cfg.dtype))
    h = res(top, "mid_0")(h, train)
    h = AttnBlock(name="mid_1", **kw)(h)
    h = res(top, "mid_2")(h, train)
    for j, mult in enumerate(reversed(cfg.ch_mult)):
      for i in range(cfg.num_res_blocks + 1):
        h = res(cfg.ch * mult, f"conv_blocks_{j}_res_{i}")(h, train)
        if j == 0:
          h = AttnBlock(name=f"conv_blocks_{j}_attn_{i}", **kw)(h)
      if j != cfg.num_levels - 1:
        h = conv(h.shape[-1], 3, h.shape[-1], use_bias=True, name=f"conv_blocks_{j}_upsample",
                 **kw)(upsample_nearest_2x(h))
    h = nn.silu(group_norm(name="norm_out", **kw)(h))
    return conv(RGB_CHANNELS, 3, h.shape[-1], use_bias=True, name="conv_out", **kw)(h)


class VQModel(nn.Module):
  """LlamaGen VQ tokenizer; images at the boundary are NHWC in [-1, 1].

  Token ids are per image in raster (row-major h, w) order.
  """
  config: VQGANConfig = VQGANConfig()

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    self.quant_conv = conv(cfg.codebook_embed_dim, 1, cfg.z_channels, use_bias=True,
                           name="quant_conv", **kw)
    self.post_quant_conv = conv(cfg.z_channels, 1, cfg.codebook_embed_dim, use_bias=True,
                                name="post_quant_conv", **kw)
    self.quantize = VectorQuantizer(
        cfg.codebook_size, cfg.codebook_embed_dim, use_l2_norm=cfg.codebook_l2_norm,
        normalize_init=cfg.codebook_l2_norm, param_dtype=cfg.param_dtype)

  def __call__(self, images: jax.Array, train: bool = False):
    """Images -> (reconstruction (B,H,W,3) f32, aux of `encode`)."""
    z_q, aux = self.encode(images, train)
    return self.decode(z_q, train), aux

  def encode(self, images: jax.Array, train: bool = False):
    """Images -> (z_q (B,h,w,embed_dim) f32 straight-through, aux).

    aux holds the quantizer outputs (`indices` (B, h*w) int, `z` the normalised
    latent, `z_q_raw` its code, `distances` (B,h,w,K), code counts / usage /
    perplexity) and `h_prequant`, the latent before normalisation.
    """
    h = self.quant_conv(self.encoder(images, train)).astype(jnp.float32)
    z_q, aux = self.quantize(h)
    aux = dict(aux, h_prequant=h, indices=aux["indices"].reshape(h.shape[0], -1))
    return z_q, aux

  def decode(self, z_q: jax.Array, train: bool = False) -> jax.Array:
    """Quantized latents (B,h,w,embed_dim) -> images in [-1,1] (unclamped), f32."""
    h = self.post_quant_conv(z_q.astype(self.config.dtype))
    return self.decoder(h, train).astype(jnp.float32)

  def decode_code(self, indices: jax.Array,
                  grid: Optional[tuple[int, int]] = None) -> jax.Array:
    """Token ids (B, h*w) or (B, h, w) -> images in [-1,1] (unclamped).

    A flat sequence is laid out on `grid` (h, w), square by default.
    """
    if indices.ndim == 2:
      n = indices.shape[1]
      if grid is None:
        side = math.isqrt(n)
        if side * side != n:
          raise ValueError(f"decode_code: {n} tokens per image is not a square grid; "
                           "pass grid=(h, w)")
        grid = (side, side)
      if grid[0] * grid[1] != n:
        raise ValueError(f"decode_code: grid {grid} does not hold {n} tokens")
      indices = indices.reshape(indices.shape[0], *grid)
    elif indices.ndim != 3:
      raise ValueError(f"decode_code: indices must be (B, h*w) or (B, h, w), got "
                       f"shape {indices.shape}")
    return self.decode(self.quantize.get_codebook_entry(indices))
