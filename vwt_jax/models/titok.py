"""TiTok 1-D tokenizer (bytedance/1d-tokenizer), all three released families.

* legacy two-stage VQ (`is_legacy=True`, L-32/B-64/S-128): the decoder predicts
  MaskGIT-VQGAN proxy-code logits; with `finetune_decoder` their softmax mixes
  the MaskGIT codebook and a MaskGIT-VQGAN pixel decoder renders the image.
* single-stage VQ (`is_legacy=False`): the decoder predicts RGB directly.
* single-stage VAE (`quantize_mode='vae'`): diagonal Gaussian bottleneck.

Conventions: images are NHWC in [-1, 1] at the module boundary (the official
model works in [0, 1]); latents are (B, N, C); outputs are returned unclamped.
"""

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers
from vwt_jax.models.maskgit_vqgan import Decoder as PixelDecoder
from vwt_jax.models.maskgit_vqgan import RGB_CHANNELS, MaskGitVQGANConfig, conv
from vwt_jax.models.quantizers import DiagonalGaussian, VectorQuantizer

Dtype = Any
# The legacy decoder head always predicts logits over MaskGIT-VQGAN's 1024 codes.
NUM_PROXY_CODES = 1024


class ViTSize(NamedTuple):
  width: int
  num_layers: int
  num_heads: int


VIT_SIZES = {
    "small": ViTSize(512, 8, 8),
    "base": ViTSize(768, 12, 12),
    "large": ViTSize(1024, 24, 16),
}


@dataclasses.dataclass(frozen=True)
class TiTokConfig:
  """Everything needed to build a TiTok; defaults are TiTok-L-32."""
  image_size: int = 256
  enc_width: int = 1024
  enc_depth: int = 24
  enc_heads: int = 16
  dec_width: int = 1024
  dec_depth: int = 24
  dec_heads: int = 16
  enc_patch_size: int = 16
  dec_patch_size: int = 16
  num_latent_tokens: int = 32
  codebook_size: int = 4096
  token_size: int = 12
  use_l2_norm: bool = True
  commitment_cost: float = 0.25
  quantize_mode: str = "vq"
  is_legacy: bool = True
  # Legacy only: a pixel decoder renders the proxy-code logits (stage 2 /
  # released models); the encoder and quantizer are then frozen.
  finetune_decoder: bool = True
  pixel_decoder: Optional[MaskGitVQGANConfig] = MaskGitVQGANConfig()
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.quantize_mode not in ("vq", "vae"):
      raise ValueError(f"quantize_mode must be 'vq' or 'vae', got {self.quantize_mode!r}")
    if self.finetune_decoder:
      if not (self.quantize_mode == "vq" and self.is_legacy):
        raise ValueError("finetune_decoder (pixel decoder) needs quantize_mode='vq' and is_legacy")
      if self.pixel_decoder is None:
        raise ValueError("finetune_decoder=True needs a pixel_decoder config")
      grid = self.image_size // self.dec_patch_size
      rendered = grid * 2 ** (self.pixel_decoder.num_resolutions - 1)
      if rendered != self.image_size:
        raise ValueError(f"pixel decoder renders {rendered}px from the decoder grid, "
                         f"not image_size={self.image_size}")
    for name, patch in (("enc", self.enc_patch_size), ("dec", self.dec_patch_size)):
      if self.image_size % patch:
        raise ValueError(f"image_size {self.image_size} not divisible by {name}_patch_size {patch}")

  @property
  def latent_channels(self) -> int:
    """Channels the encoder emits: VAE predicts mean and logvar."""
    return 2 * self.token_size if self.quantize_mode == "vae" else self.token_size

  @classmethod
  def from_sizes(cls, enc_size: str, dec_size: str, **kwargs) -> "TiTokConfig":
    """Builds from the named presets ('small', 'base', 'large')."""
    enc, dec = VIT_SIZES[enc_size], VIT_SIZES[dec_size]
    return cls(enc_width=enc.width, enc_depth=enc.num_layers, enc_heads=enc.num_heads,
               dec_width=dec.width, dec_depth=dec.num_layers, dec_heads=dec.num_heads,
               **kwargs)

  @classmethod
  def from_official(cls, official_config: Mapping[str, Any],
                    sizes: Optional[Mapping[str, Any]] = None,
                    pixel_decoder: Union[None, Mapping[str, Any], MaskGitVQGANConfig] = None,
                    **overrides) -> "TiTokConfig":
    """Reads the official OmegaConf dict (`model.vq_model`, `dataset.preprocessing`).

    Args:
      official_config: the dict given to the official `TiTok(config)`.
      sizes: extra/overriding size names -> {width, num_layers, num_heads}.
      pixel_decoder: MaskGIT-VQGAN decoder config; giving one enables the pixel
        decoder. Defaults to the released 256-px decoder when the official
        config sets `finetune_decoder`.
      **overrides: any other field (e.g. dtype).
    """
    vq = official_config["model"]["vq_model"]
    table = {**VIT_SIZES, **{k: ViTSize(int(v["width"]), int(v["num_layers"]), int(v["num_heads"]))
                             for k, v in (sizes or {}).items()}}
    enc, dec = table[vq["vit_enc_model_size"]], table[vq["vit_dec_model_size"]]
    preprocessing = official_config.get("dataset", {}).get("preprocessing", {})
    if isinstance(pixel_decoder, Mapping):
      pixel_decoder = MaskGitVQGANConfig.from_official(pixel_decoder)
    finetune = bool(vq.get("finetune_decoder", False)) or pixel_decoder is not None
    if finetune and pixel_decoder is None:
      pixel_decoder = MaskGitVQGANConfig()
    fields = dict(
        image_size=int(preprocessing.get("crop_size", 256)),
        enc_width=enc.width, enc_depth=enc.num_layers, enc_heads=enc.num_heads,
        dec_width=dec.width, dec_depth=dec.num_layers, dec_heads=dec.num_heads,
        enc_patch_size=int(vq["vit_enc_patch_size"]),
        dec_patch_size=int(vq["vit_dec_patch_size"]),
        num_latent_tokens=int(vq["num_latent_tokens"]),
        codebook_size=int(vq.get("codebook_size", 4096)),
        token_size=int(vq["token_size"]),
        use_l2_norm=bool(vq.get("use_l2_norm", False)),
        commitment_cost=float(vq.get("commitment_cost", 0.25)),
        quantize_mode=str(vq.get("quantize_mode", "vq")),
        # Released L32/B64/S128 configs omit the key; the official default is True.
        is_legacy=bool(vq.get("is_legacy", True)),
        finetune_decoder=finetune,
        pixel_decoder=pixel_decoder,
    )
    return cls(**{**fields, **overrides})


def _embedding(module: nn.Module, name: str, shape, names):
  """A `module` parameter drawn as width**-0.5 * randn, width = shape[-1]."""
  return module.param(name, layers.scaled_normal_init(shape[-1] ** -0.5, names), shape,
                      module.config.param_dtype)


def _transformer(x: jax.Array, depth: int, heads: int, cfg: TiTokConfig,
                 module: nn.Module, prefix: str) -> jax.Array:
  for i in range(depth):
    x = layers.ResidualAttentionBlock(
        heads, mlp_ratio=cfg.mlp_ratio, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        name=f"transformer_{i}")(x)
    if i == 0:
      module.sow("intermediates", f"{prefix}_block0_out", x)
  module.sow("intermediates", f"{prefix}_blocklast_out", x)
  return x


class TiTokEncoder(nn.Module):
  """Images (B,H,W,3) in [0,1] + latent queries (N,W) -> latents (B,N,C)."""
  config: TiTokConfig

  @nn.compact
  def __call__(self, images: jax.Array, latent_tokens: jax.Array) -> jax.Array:
    cfg = self.config
    width, kw = cfg.enc_width, dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    grid = cfg.image_size // cfg.enc_patch_size
    batch = images.shape[0]

    p = cfg.enc_patch_size
    x = layers.conv(width, p, (None, None, None, "embed"), strides=(p, p), padding="VALID",
                    name="patch_embed", **kw)(images.astype(cfg.dtype))
    self.sow("intermediates", "enc_patch_embed", x)
    x = x.reshape(batch, grid * grid, width)  # row-major raster order

    cls_emb = _embedding(self, "class_embedding", (1, width), (None, "embed"))
    pos_emb = _embedding(self, "positional_embedding", (grid * grid + 1, width),
                         ("length", "embed"))
    latent_pos = _embedding(self, "latent_token_positional_embedding",
                            (cfg.num_latent_tokens, width), ("length", "embed"))
    cls_tok = jnp.broadcast_to(cls_emb.astype(x.dtype)[None], (batch, 1, width))
    x = jnp.concatenate([cls_tok, x], axis=1) + pos_emb.astype(x.dtype)
    n = latent_tokens.shape[0]
    latents = (latent_tokens + latent_pos[:n]).astype(x.dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(latents[None], (batch, n, width))], axis=1)
    self.sow("intermediates", "enc_ln_pre_in", x)
    x = layers.layer_norm(name="ln_pre", **kw)(x)
    self.sow("intermediates", "enc_ln_pre_out", x)
    x = _transformer(x, cfg.enc_depth, cfg.enc_heads, cfg, self, "enc")
    x = layers.layer_norm(name="ln_post", **kw)(x[:, 1 + grid * grid:])
    self.sow("intermediates", "enc_ln_post_out", x)
    if cfg.is_legacy:
      # Released checkpoints reinterpret the C-contiguous (B,N,W) memory as
      # (B,W,N,1) without transposing; reproduce that scramble, then go back
      # to channels-last for the 1x1 conv (a Dense over W).
      x = x.reshape(batch, width, n).transpose(0, 2, 1)
    return layers.dense(cfg.latent_channels, ("embed", "token"), name="conv_out", **kw)(x)


class TiTokDecoder(nn.Module):
  """Latents (B,N,C) -> proxy-code logits (B,g,g,1024) [legacy] or RGB (B,H,W,3) in [0,1]."""
  config: TiTokConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.config
    width, kw = cfg.dec_width, dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    grid = cfg.image_size // cfg.dec_patch_size
    batch, n = z.shape[:2]

    x = layers.dense(width, ("token", "embed"), name="decoder_embed", **kw)(z.astype(cfg.dtype))
    self.sow("intermediates", "dec_embed_out", x)
    cls_emb = _embedding(self, "class_embedding", (1, width), (None, "embed"))
    pos_emb = _embedding(self, "positional_embedding", (grid * grid + 1, width),
                         ("length", "embed"))
    mask_token = _embedding(self, "mask_token", (1, 1, width), (None, None, "embed"))
    latent_pos = _embedding(self, "latent_token_positional_embedding",
                            (cfg.num_latent_tokens, width), ("length", "embed"))
    image_part = jnp.concatenate([
        jnp.broadcast_to(cls_emb.astype(x.dtype)[None], (batch, 1, width)),
        jnp.broadcast_to(mask_token.astype(x.dtype), (batch, grid * grid, width)),
    ], axis=1) + pos_emb.astype(x.dtype)
    x = jnp.concatenate([image_part, x + latent_pos[:n].astype(x.dtype)], axis=1)
    self.sow("intermediates", "dec_ln_pre_in", x)
    x = layers.layer_norm(name="ln_pre", **kw)(x)
    x = _transformer(x, cfg.dec_depth, cfg.dec_heads, cfg, self, "dec")
    x = layers.layer_norm(name="ln_post", **kw)(x[:, 1:1 + grid * grid])
    self.sow("intermediates", "dec_ln_post_out", x)
    x = x.reshape(batch, grid, grid, width)

    if cfg.is_legacy:
      h = jnp.tanh(layers.dense(2 * width, ("embed", "mlp"), name="ffn_0", **kw)(x))
      logits = layers.dense(NUM_PROXY_CODES, ("mlp", "vocab"), name="ffn_2", **kw)(h)
      self.sow("intermediates", "dec_ffn_out", logits)
      return logits
    p = cfg.dec_patch_size
    h = layers.dense(p * p * RGB_CHANNELS, ("embed", None), name="ffn_0", **kw)(x)
    # Channel order is (p1, p2, c) with c fastest, as the official Rearrange.
    h = h.reshape(batch, grid, grid, p, p, RGB_CHANNELS).transpose(0, 1, 3, 2, 4, 5)
    h = h.reshape(batch, grid * p, grid * p, RGB_CHANNELS)
    self.sow("intermediates", "dec_ffn_out", h)
    return conv(RGB_CHANNELS, 3, RGB_CHANNELS, use_bias=True, name="conv_out", **kw)(h)


class TiTok(nn.Module):
  """TiTok tokenizer. See the module docstring for layout conventions."""
  config: TiTokConfig

  def setup(self):
    cfg = self.config
    self.latent_tokens = _embedding(self, "latent_tokens", (cfg.num_latent_tokens, cfg.enc_width),
                                    ("length", "embed"))
    self.encoder = TiTokEncoder(cfg)
    self.decoder = TiTokDecoder(cfg)
    if cfg.quantize_mode == "vq":
      self.quantize = VectorQuantizer(cfg.codebook_size, cfg.token_size,
                                      use_l2_norm=cfg.use_l2_norm, param_dtype=cfg.param_dtype)
    if cfg.finetune_decoder:
      pd = cfg.pixel_decoder
      self.pixel_quantize = VectorQuantizer(NUM_PROXY_CODES, pd.z_channels,
                                            param_dtype=cfg.param_dtype)
      self.pixel_decoder = PixelDecoder(pd, dtype=cfg.dtype, param_dtype=cfg.param_dtype)

  def __call__(self, images: jax.Array, *, train: bool = False,
               rng: Optional[jax.Array] = None):
    """Reconstructs `images`; returns (recon or None, aux).

    `recon` is None for a legacy model without pixel decoder (stage 1): use
    `aux['proxy_logits']` there.
    """
    z, aux = self.encode(images, train=train, sample_rng=rng)
    recon, dec_aux = self.decode(z)
    return recon, {**aux, **dec_aux}

  def encode(self, images: jax.Array, *, train: bool = False,
             sample_rng: Optional[jax.Array] = None):
    """Images (B,H,W,3) in [-1,1] -> (z_quantized (B,N,token_size) f32, aux).

    VQ aux: indices (B,N), z (normalised latent), z_q_raw, usage stats.
    VAE aux: posterior_mean / posterior_logvar; the latent is a sample when
    `sample_rng` is given, else the posterior mode. Training a VAE requires
    `sample_rng` (the official model always samples).
    """
    cfg = self.config
    enc_out = self.encoder((images + 1.0) / 2.0, self.latent_tokens).astype(jnp.float32)
    aux = {"enc_out": enc_out}
    if cfg.quantize_mode == "vae":
      if train and sample_rng is None:
        raise ValueError("training a TiTok-VAE needs sample_rng")
      posterior = DiagonalGaussian.from_moments(enc_out)
      aux.update(posterior_mean=posterior.mean, posterior_logvar=posterior.logvar)
      return posterior.sample_or_mode(sample_rng), aux
    z_q, vq_aux = self.quantize(enc_out)
    aux.update(vq_aux)
    if cfg.finetune_decoder:
      # Stage 2: encoder and quantizer are frozen (official: no_grad).
      z_q = jax.lax.stop_gradient(z_q)
      aux = jax.tree_util.tree_map(jax.lax.stop_gradient, aux)
    return z_q, aux

  def decode(self, z_quantized: jax.Array):
    """Latents (B,N,token_size) -> (images in [-1,1] unclamped, or None; aux)."""
    cfg = self.config
    out = self.decoder(z_quantized)
    if not cfg.is_legacy:
      return 2.0 * out.astype(jnp.float32) - 1.0, {}
    aux = {"proxy_logits": out.astype(jnp.float32)}
    if not cfg.finetune_decoder:
      return None, aux
    # Soft (softmax, not argmax) mix of the MaskGIT codebook, as the official stage 2.
    probs = jax.nn.softmax(out.astype(jnp.float32), axis=-1)
    pixel_in = self.pixel_quantize.get_codebook_entry(probs)
    self.sow("intermediates", "pixel_decoder_in", pixel_in)
    y = self.pixel_decoder(pixel_in.astype(cfg.dtype)).astype(jnp.float32)
    return 2.0 * y - 1.0, aux

  def tokens_to_latents(self, tokens: jax.Array) -> jax.Array:
    """VQ ids (B,N) -> codes (B,N,token_size); VAE latents pass through."""
    if self.config.quantize_mode == "vq":
      return self.quantize.get_codebook_entry(tokens)
    return tokens.astype(jnp.float32)

  def decode_tokens(self, tokens: jax.Array):
    """VQ ids (B,N) or VAE latents (B,N,token_size) -> (images, aux) as `decode`."""
    return self.decode(self.tokens_to_latents(tokens))
