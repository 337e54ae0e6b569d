"""TiTok's class-conditional MaskGIT generators over 1-D tokens.

* `ImageBert` (model type 'ViT', TiTok-L-32 / B-64): a HF `BertModel` (post-LN
  layers, exact GELU, LayerNorm eps 1e-12, absolute positions plus token-type 0)
  with a linear head onto the image codebook.
* `UViTBert` (model type 'UViT', TiTok-S-128): pre-LN U-ViT blocks with long
  skip connections, qkv without bias, no dropout.

Token space of the input sequence (as the official code):
`[0, K)` image tokens, `K` the mask token, `K+1 .. K+nc` the classes
(label + K + 1) and `K+1+nc` the null class used for classifier-free guidance.
The class token is prepended at position 0; logits are returned for the `L`
image positions over the `K` codebook entries only. `arccos_mask_ratio` is the
masking schedule of training and sampling.
"""

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import layers

Dtype = Any
MODEL_TYPES = ("ViT", "UViT")
BERT_LN_EPSILON = 1e-12
UVIT_LN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class MaskGitGeneratorConfig:
  """Fields of the official `model.generator` config; defaults are TiTok-L-32's."""
  model_type: str = "ViT"
  hidden_size: int = 768
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 3072
  # Only ImageBert uses dropout (hidden / attention-probability); UViTBert has none.
  dropout: float = 0.1
  attn_drop: float = 0.1
  image_seq_len: int = 32
  condition_num_classes: int = 1000
  codebook_size: int = 4096
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
    layers.check_sizes(self, "hidden_size", "num_attention_heads")

  @property
  def mlp_width(self) -> int:
    """MLP width: UViTBert's blocks take the float ratio intermediate/hidden and build
    int(hidden * ratio), which float rounding can make one less than intermediate_size."""
    if self.model_type == "UViT":
      return int(self.hidden_size * (self.intermediate_size / self.hidden_size))
    return self.intermediate_size

  @property
  def mask_token_id(self) -> int:
    return self.codebook_size

  @property
  def null_class_id(self) -> int:
    """Token that replaces the class token when the label is dropped (CFG)."""
    return self.codebook_size + 1 + self.condition_num_classes

  @property
  def vocab_size(self) -> int:
    return self.codebook_size + self.condition_num_classes + 2

  @classmethod
  def from_official(cls, official_config: Mapping[str, Any], model_type: str = "ViT",
                    **overrides) -> "MaskGitGeneratorConfig":
    """Reads the official OmegaConf dict (`model.generator`, `model.vq_model.codebook_size`).

    `model_type` is 'ViT' (ImageBert) or 'UViT' (UViTBert), unless the config
    names it (`model.generator.model_type`, as the released S-128 config does):
    the official code picks the class in the sampling script.
    """
    try:
      gen = official_config["model"]["generator"]
      codebook_size = official_config["model"]["vq_model"]["codebook_size"]
    except KeyError as e:
      raise ValueError(f"official generator config lacks {e}; expected "
                       "model.generator.* and model.vq_model.codebook_size") from e
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "image_seq_len", "condition_num_classes")
    fields = dict({k: int(gen[k]) for k in sizes}, model_type=gen.get("model_type", model_type),
                  dropout=float(gen.get("dropout", 0.1)),
                  attn_drop=float(gen.get("attn_drop", 0.1)), codebook_size=int(codebook_size))
    return cls(**{**fields, **overrides})

  @classmethod
  def from_variant(cls, name: str, **overrides) -> "MaskGitGeneratorConfig":
    """One of `GENERATOR_VARIANTS` ('titok_l32', 'titok_b64', 'titok_s128')."""
    return dataclasses.replace(layers.variant(GENERATOR_VARIANTS, name, "generator"),
                               **overrides)


# Released generators (`configs/infer/TiTok/*.yaml`); 177.2 M / 177.2 M / 295.0 M params.
GENERATOR_VARIANTS = {
    "titok_l32": MaskGitGeneratorConfig(image_seq_len=32),
    "titok_b64": MaskGitGeneratorConfig(image_seq_len=64),
    "titok_s128": MaskGitGeneratorConfig(
        model_type="UViT", hidden_size=1024, num_hidden_layers=20, num_attention_heads=16,
        intermediate_size=4096, image_seq_len=128),
}


def arccos_mask_ratio(t):
  """Fraction of tokens masked at progress `t` in [0,1]: arccos(t) / (pi/2).

  The schedule of both the masked-token loss and MaskGIT sampling. numpy in,
  numpy (float64) out; jax in, jax out.
  """
  xp = jnp if isinstance(t, jax.Array) else np
  return xp.arccos(t) / (math.pi * 0.5)


def _input_ids(tokens, labels, drop_labels, config: MaskGitGeneratorConfig) -> jax.Array:
  """[class token ; tokens]; dropped labels become the null class."""
  if tokens.ndim != 2 or labels.shape != tokens.shape[:1]:
    raise ValueError(f"expected tokens (B, L) and labels (B,), got {tokens.shape} and "
                     f"{labels.shape}")
  if tokens.shape[1] > config.image_seq_len:
    raise ValueError(f"{tokens.shape[1]} tokens exceed image_seq_len={config.image_seq_len}")
  cond = labels.astype(jnp.int32) + config.codebook_size + 1
  if drop_labels is not None:
    cond = jnp.where(drop_labels, config.null_class_id, cond)
  return jnp.concatenate([cond[:, None], tokens.astype(jnp.int32)], axis=1)


class SelfAttention(nn.Module):
  """Bidirectional multi-head attention with dropout on the probabilities (BERT's).

  Unlike `layers.MultiHeadAttention`, the q/k/v bias is optional (UViT has none).
  """
  num_heads: int
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    head_dim = width // self.num_heads
    q, k, v = layers.project_qkv(x, x, self.num_heads, head_dim, use_bias=self.qkv_bias, **kw)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(self.dtype)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return layers.attention_out(width, **kw)(y)


def _token_embedding(config: MaskGitGeneratorConfig, name: str) -> nn.Embed:
  return nn.Embed(config.vocab_size, config.hidden_size, dtype=config.dtype,
                  param_dtype=config.param_dtype,
                  embedding_init=layers.weight_init(("vocab", "embed")), name=name)


def _lm_head(config: MaskGitGeneratorConfig, x: jax.Array) -> jax.Array:
  logits = layers.dense(config.codebook_size, ("embed", "vocab"), dtype=config.dtype,
                        param_dtype=config.param_dtype, name="lm_head")(x[:, 1:])
  return logits.astype(jnp.float32)


class BertLayer(nn.Module):
  """HF BERT layer, post-LN: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""
  config: MaskGitGeneratorConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = SelfAttention(cfg.num_attention_heads, dropout_rate=cfg.attn_drop, name="attention",
                      **kw)(x, deterministic=not train)
    h = nn.Dropout(cfg.dropout)(h, deterministic=not train)
    x = layers.layer_norm(epsilon=BERT_LN_EPSILON, name="attention_ln", **kw)(x + h)
    h = layers.Mlp(cfg.mlp_width, name="mlp", **kw)(x)
    h = nn.Dropout(cfg.dropout)(h, deterministic=not train)
    return layers.constrain_activations(
        layers.layer_norm(epsilon=BERT_LN_EPSILON, name="output_ln", **kw)(x + h))


class ImageBert(nn.Module):
  """MaskGIT generator on HF BERT (TiTok-L-32 / B-64)."""
  config: MaskGitGeneratorConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, labels: jax.Array, *, train: bool = False,
               drop_labels: Optional[jax.Array] = None):
    """Tokens (B,L) in [0,K] (K = mask) and labels (B,) -> (logits (B,L,K) f32, aux).

    `drop_labels` (B,) bool replaces those labels by the null class (CFG).
    """
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    ids = _input_ids(tokens, labels, drop_labels, cfg)
    length = ids.shape[1]
    positions = self.param("position_embeddings", layers.weight_init(("length", "embed")),
                           (cfg.image_seq_len + 1, cfg.hidden_size), cfg.param_dtype)
    token_types = self.param("token_type_embeddings", layers.weight_init((None, "embed")),
                             (2, cfg.hidden_size), cfg.param_dtype)
    x = _token_embedding(cfg, "word_embeddings")(ids)
    # All tokens have token type 0; summation order as HF (word + type, then + position).
    x = x + token_types[0].astype(cfg.dtype)
    x = x + positions[:length].astype(cfg.dtype)
    x = layers.layer_norm(epsilon=BERT_LN_EPSILON, name="embeddings_ln", **kw)(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=not train)
    for i in range(cfg.num_hidden_layers):
      x = BertLayer(cfg, name=f"layer_{i}")(x, train=train)
    return _lm_head(cfg, x), {"condition_ids": ids[:, 0]}


class UViTBlock(nn.Module):
  """Pre-LN block; out-blocks first fuse the long skip: Linear(concat([x, skip]))."""
  config: MaskGitGeneratorConfig
  skip: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, skip: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    if self.skip:
      x = layers.dense(cfg.hidden_size, ("mlp", "embed"), name="skip_linear", **kw)(
          jnp.concatenate([x, skip], axis=-1))
    h = layers.layer_norm(epsilon=UVIT_LN_EPSILON, name="norm1", **kw)(x)
    x = x + SelfAttention(cfg.num_attention_heads, qkv_bias=False, name="attn", **kw)(h)
    h = layers.layer_norm(epsilon=UVIT_LN_EPSILON, name="norm2", **kw)(x)
    return layers.constrain_activations(
        x + layers.Mlp(cfg.mlp_width, name="mlp", **kw)(h))


class UViTBert(nn.Module):
  """MaskGIT generator on U-ViT (TiTok-S-128); same interface as `ImageBert`."""
  config: MaskGitGeneratorConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, labels: jax.Array, *, train: bool = False,
               drop_labels: Optional[jax.Array] = None):
    """See `ImageBert.__call__`; `train` has no effect (UViTBert has no dropout)."""
    del train
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    ids = _input_ids(tokens, labels, drop_labels, cfg)
    pos_embed = self.param("pos_embed", layers.weight_init((None, "length", "embed")),
                           (1, cfg.image_seq_len + 1, cfg.hidden_size), cfg.param_dtype)
    x = _token_embedding(cfg, "embeddings")(ids)
    x = x + pos_embed[:, :ids.shape[1]].astype(cfg.dtype)
    skips = []
    depth = cfg.num_hidden_layers // 2
    for i in range(depth):
      x = UViTBlock(cfg, name=f"in_blocks_{i}")(x)
      skips.append(x)
    x = UViTBlock(cfg, name="mid_block")(x)
    for i in range(depth):
      x = UViTBlock(cfg, skip=True, name=f"out_blocks_{i}")(x, skips.pop())
    x = layers.layer_norm(epsilon=UVIT_LN_EPSILON, name="norm", **kw)(x)
    return _lm_head(cfg, x), {"condition_ids": ids[:, 0]}


GENERATORS = {"ViT": ImageBert, "UViT": UViTBert}


def build_generator(config: MaskGitGeneratorConfig) -> nn.Module:
  """`ImageBert` or `UViTBert` according to `config.model_type`."""
  return GENERATORS[config.model_type](config)
