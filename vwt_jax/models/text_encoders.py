"""BERT- and MPNet-family sentence encoders, as sentence-transformers runs them.

One post-LN transformer serves both families; they differ only in how
positions enter:
* BERT (`BertModel`): learned absolute positions 0..L-1 plus token-type
  embeddings, summed with the word embeddings before the embedding LayerNorm.
* MPNet (`MPNetModel`): learned absolute positions numbered like RoBERTa
  (padding tokens get the padding index, real tokens padding_idx+1, +2, ...)
  and, in every layer, one relative-position attention bias whose bucket table
  is shared by all layers.
The token states are pooled (attention-mask weighted mean, mean / sqrt(count),
first token or max, as the `Pooling` module of sentence-transformers) and
L2-normalised (its `Normalize`). Everything is computed in float32.

A layer's two blocks, `bert_attention` and `bert_feed_forward`, are
transformers' BERT blocks; the Q-Former (`models.qformer`) is built of them too.
"""

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers

FAMILIES = ("bert", "mpnet")
POOLING_MODES = ("mean", "mean_sqrt_len_tokens", "cls", "max")


# MPNetEmbeddings hard-codes padding_idx = 1 for its position numbering,
# whatever the config's pad_token_id says.
MPNET_POSITION_PADDING_IDX = 1
# MPNetEncoder.compute_position_bias always buckets with these two constants;
# the config's relative_attention_num_buckets only sizes the bias table.
MPNET_RELATIVE_BUCKETS = 32
MPNET_RELATIVE_MAX_DISTANCE = 128
# sentence-transformers' Pooling clamps the token count, Normalize the norm.
_MEAN_POOL_MIN_COUNT = 1e-9
_NORMALIZE_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """Sizes of a BERT/MPNet encoder (the fields of transformers' config.json)."""
  family: str = "bert"
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  relative_attention_num_buckets: int = 32

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"TextEncoderConfig.family={self.family!r}: expected one of {FAMILIES}")
    layers.check_sizes(self, "hidden_size", "num_heads", "hidden_act")
    if self.family == "mpnet" and self.relative_attention_num_buckets < MPNET_RELATIVE_BUCKETS:
      raise ValueError(
          f"TextEncoderConfig.relative_attention_num_buckets="
          f"{self.relative_attention_num_buckets}: MPNet looks up bucket ids up to "
          f"{MPNET_RELATIVE_BUCKETS - 1}, so at least {MPNET_RELATIVE_BUCKETS} are needed")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def max_length(self) -> int:
    """Longest token sequence the position table can number (MPNet's starts at 2)."""
    offset = MPNET_POSITION_PADDING_IDX + 1 if self.family == "mpnet" else 0
    return self.max_position_embeddings - offset

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any], source: str = "config.json"
                     ) -> "TextEncoderConfig":
    """Reads a transformers `BertConfig`/`MPNetConfig` dict (model_type bert or mpnet)."""
    family = config.get("model_type")
    if family not in FAMILIES:
      raise ValueError(f"{source}: model_type={family!r}; supported: {FAMILIES}")
    if family == "bert" and config.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{source}: position_embedding_type="
                       f"{config['position_embedding_type']!r}; only 'absolute' is supported")
    layers.require_fields(config, ("vocab_size", "hidden_size", "num_hidden_layers",
                                   "num_attention_heads", "intermediate_size",
                                   "max_position_embeddings"), source)
    act = config.get("hidden_act", "gelu")
    if not isinstance(act, str):
      raise ValueError(f"{source}: hidden_act={act!r} must be an activation name")
    return cls(
        family=family,
        vocab_size=int(config["vocab_size"]),
        hidden_size=int(config["hidden_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        intermediate_size=int(config["intermediate_size"]),
        hidden_act=act,
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        max_position_embeddings=int(config["max_position_embeddings"]),
        type_vocab_size=int(config.get("type_vocab_size", 2)),
        relative_attention_num_buckets=int(config.get("relative_attention_num_buckets", 32)))


def _embed(num: int, dim: int, names, name: str) -> nn.Embed:
  return nn.Embed(num, dim, dtype=jnp.float32, param_dtype=jnp.float32,
                  embedding_init=layers.weight_init(names), name=name)


def bert_attention(x: jax.Array, context: jax.Array, key_mask: jax.Array, num_heads: int, *,
                   epsilon: float, dtype: layers.Dtype, param_dtype: layers.Dtype,
                   bias: Optional[jax.Array] = None) -> jax.Array:
  """BERT's post-LN attention block: LN(x + out(attention(q(x), k(context), v(context)))).

  transformers' `BertAttention` (`BertSelfAttention` then `BertSelfOutput`,
  dropout off): queries from `x` (B, L, D), keys and values from `context`
  (B, N, Dc) (`x` itself for self-attention, an encoder's states for
  cross-attention), `key_mask` (B, N) True where a key may be attended, `bias`
  added to the logits. Created in the calling module: the parameters query,
  key, value, attention_out and attention_norm sit directly under it.
  """
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  width = x.shape[-1]
  q, k, v = layers.project_qkv(x, context, num_heads, width // num_heads, **kw)
  attn = layers.attention_out(width, name="attention_out", **kw)(
      layers.masked_attention(q, k, v, key_mask, bias))
  return layers.layer_norm(epsilon=epsilon, name="attention_norm", **kw)(x + attn)


def bert_feed_forward(x: jax.Array, intermediate_size: int, activation: str, *, epsilon: float,
                      dtype: layers.Dtype, param_dtype: layers.Dtype) -> jax.Array:
  """BERT's post-LN feed-forward block: LN(x + W2 act(W1 x)).

  transformers' `BertIntermediate` then `BertOutput` (dropout off), with the
  `layers.HF_ACTIVATIONS` function `activation`. Created in the calling
  module: the parameters intermediate, output and output_norm sit directly
  under it.
  """
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  h = layers.dense(intermediate_size, ("embed", "mlp"), name="intermediate", **kw)(x)
  h = layers.HF_ACTIVATIONS[activation](h)
  h = layers.dense(x.shape[-1], ("mlp", "embed"), name="output", **kw)(h)
  return layers.layer_norm(epsilon=epsilon, name="output_norm", **kw)(x + h)


class EncoderLayer(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); x = LN(x + W2 act(W1 x))."""
  config: TextEncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array,
               position_bias: Optional[jax.Array]) -> jax.Array:
    cfg = self.config
    kw = dict(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32)
    x = bert_attention(x, x, key_mask, cfg.num_heads, bias=position_bias, **kw)
    return bert_feed_forward(x, cfg.intermediate_size, cfg.hidden_act, **kw)


class TextEncoder(nn.Module):
  """Token ids -> pooled, optionally L2-normalised sentence embeddings.

  `__call__(input_ids [N, L] int, attention_mask [N, L] {0,1}, token_type_ids
  [N, L] or None)` returns `(sentence_embeddings [N, D], {'token_embeddings':
  [N, L, D]})`. Sequences are right-padded; padded positions are masked out of
  attention and pooling.
  """
  config: TextEncoderConfig
  pooling: str = "mean"
  normalize: bool = True

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None):
    cfg = self.config
    if self.pooling not in POOLING_MODES:
      raise ValueError(f"TextEncoder.pooling={self.pooling!r}: expected one of {POOLING_MODES}")
    length = input_ids.shape[1]
    if length > cfg.max_length:
      raise ValueError(f"sequence length {length} exceeds the {cfg.max_length} positions of "
                       f"this {cfg.family} encoder")
    key_mask = attention_mask.astype(bool)

    x = _embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), "word_embeddings")(input_ids)
    if cfg.family == "bert":
      positions = jnp.arange(length)[None, :]
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + _embed(cfg.type_vocab_size, cfg.hidden_size, (None, "embed"),
                     "token_type_embeddings")(token_type_ids)
      position_bias = None
    else:
      not_pad = (input_ids != MPNET_POSITION_PADDING_IDX).astype(jnp.int32)
      positions = jnp.cumsum(not_pad, axis=1) * not_pad + MPNET_POSITION_PADDING_IDX
      position_bias = layers.relative_position_bias(
          self, cfg.relative_attention_num_buckets, cfg.num_heads,
          layers.relative_position_buckets(length, MPNET_RELATIVE_BUCKETS,
                                           MPNET_RELATIVE_MAX_DISTANCE))
    x = x + _embed(cfg.max_position_embeddings, cfg.hidden_size, ("length", "embed"),
                   "position_embeddings")(positions)
    x = layers.layer_norm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32,
                          param_dtype=jnp.float32, name="embeddings_norm")(x)

    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, name=f"layer_{i}")(x, key_mask, position_bias)

    mask = attention_mask.astype(jnp.float32)[..., None]
    if self.pooling in ("mean", "mean_sqrt_len_tokens"):
      count = jnp.maximum(jnp.sum(mask, axis=1), _MEAN_POOL_MIN_COUNT)
      if self.pooling == "mean_sqrt_len_tokens":
        count = jnp.sqrt(count)
      pooled = jnp.sum(x * mask, axis=1) / count
    elif self.pooling == "cls":
      pooled = x[:, 0]
    else:
      pooled = jnp.max(jnp.where(mask > 0, x, -jnp.inf), axis=1)
    if self.normalize:
      norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
      pooled = pooled / jnp.maximum(norm, _NORMALIZE_EPS)
    return pooled, {"token_embeddings": x}


abstract_params = layers.abstract_text_encoder_params
