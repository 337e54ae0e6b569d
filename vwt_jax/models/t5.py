"""The T5 / mT5 text encoder (the encoder stack of transformers' `T5EncoderModel`).

LlamaGen's text-to-image GPT conditions on FLAN-T5-XL's last hidden states.

Per layer (pre-norm, no biases anywhere):
  x = x + o(attention(T5LayerNorm(x)))          # bidirectional self-attention
  x = x + wo(act(wi x))                          # T5 v1.0 ('relu')
      or wo(act(wi_0 x) * wi_1 x)                # v1.1 / FLAN / mT5 ('gated-gelu')
then a final T5LayerNorm. T5LayerNorm is an RMS norm (no mean subtraction, no
bias) computed in float32, i.e. `llama.RMSNorm`. Attention logits are NOT
scaled by 1/sqrt(d_kv) (T5 folds that into its initialisation); instead one
learned relative-position bias [heads, L, L], bucketed from key - query
offsets, is computed once (transformers keeps its table in layer 0) and added
in every layer, next to the padding mask.

Inference only (a frozen feature extractor): the reference's dropout is left out.
"""

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers
from vwt_jax.models import llama

Dtype = Any

MODEL_TYPES = ("t5", "mt5")
# The config defaults transformers fills in for each model_type when config.json
# leaves a field out (older hub configs omit some of them).
_HF_DEFAULTS = {
    "t5": {"feed_forward_proj": "relu"},
    "mt5": {"feed_forward_proj": "gated-gelu"},
}
_HF_SHARED_DEFAULTS = {"relative_attention_num_buckets": 32,
                       "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6}

VARIANTS: dict[str, dict[str, Any]] = {
    # google/flan-t5-xl, LlamaGen's t2i text encoder (caption_dim 2048).
    "flan-t5-xl": dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                       num_heads=32, feed_forward_proj="gated-gelu"),
    "tiny": dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu"),
}


def parse_feed_forward_proj(value: str) -> tuple[str, bool]:
  """`feed_forward_proj` -> (activation name, gated), as `T5Config` parses it.

  'ACT' is a plain wo(act(wi x)) block, 'gated-ACT' the gated one; 'gated-gelu'
  means the tanh approximation ('gelu_new') while a plain 'gelu' is the exact
  erf GELU.
  """
  parts = str(value).split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"feed_forward_proj={value!r}: expected 'ACT' or 'gated-ACT'")
  gated = len(parts) == 2
  act = "gelu_new" if value == "gated-gelu" else parts[-1]
  if act not in layers.HF_ACTIVATIONS:
    raise ValueError(f"feed_forward_proj={value!r}: activation {act!r} is not supported; "
                     f"expected one of {sorted(layers.HF_ACTIVATIONS)}")
  return act, gated


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
  """Sizes of a T5 encoder (the fields of transformers' `T5Config`)."""
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"

  def __post_init__(self):
    parse_feed_forward_proj(self.feed_forward_proj)
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
      if getattr(self, name) < 1:
        raise ValueError(f"T5EncoderConfig.{name}={getattr(self, name)} must be positive")
    # Bidirectional bucketing halves the buckets, then keeps a half of each half
    # for exact offsets: at least one exact bucket, and a log range above it.
    max_exact = self.relative_attention_num_buckets // 4
    if max_exact < 1:
      raise ValueError(f"T5EncoderConfig.relative_attention_num_buckets="
                       f"{self.relative_attention_num_buckets}: at least 4 are needed")
    if self.relative_attention_max_distance <= max_exact:
      raise ValueError(f"T5EncoderConfig.relative_attention_max_distance="
                       f"{self.relative_attention_max_distance} must exceed the {max_exact} "
                       "exact offsets")

  @property
  def activation(self) -> str:
    """transformers' `dense_act_fn`."""
    return parse_feed_forward_proj(self.feed_forward_proj)[0]

  @property
  def is_gated(self) -> bool:
    return parse_feed_forward_proj(self.feed_forward_proj)[1]

  @classmethod
  def named(cls, name: str, **overrides) -> "T5EncoderConfig":
    """One of `VARIANTS` ('flan-t5-xl', 'tiny')."""
    return cls(**{**layers.variant(VARIANTS, name, "T5 encoder"), **overrides})

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any], source: str = "config.json"
                     ) -> "T5EncoderConfig":
    """Reads a transformers `T5Config` / `MT5Config` dict (model_type t5 or mt5).

    UMT5 (a bias table in every layer) and decoder-only configs are refused.
    """
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"{source}: model_type={model_type!r}; supported: {MODEL_TYPES}")
    if config.get("is_decoder"):
      raise ValueError(f"{source}: is_decoder=true; only the bidirectional encoder is supported")
    required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
    layers.require_fields(config, required, source)
    fields = {**_HF_SHARED_DEFAULTS, **_HF_DEFAULTS[model_type],
              **{k: config[k] for k in (*_HF_SHARED_DEFAULTS, "feed_forward_proj")
                 if k in config}}
    try:
      return cls(
          **{k: int(config[k]) for k in required},
          relative_attention_num_buckets=int(fields["relative_attention_num_buckets"]),
          relative_attention_max_distance=int(fields["relative_attention_max_distance"]),
          layer_norm_epsilon=float(fields["layer_norm_epsilon"]),
          feed_forward_proj=str(fields["feed_forward_proj"]))
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None


class SelfAttention(nn.Module):
  """Unscaled multi-head self-attention with an additive bias and a key padding mask."""
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, position_bias: jax.Array, key_mask: jax.Array) -> jax.Array:
    """x (B,L,D); position_bias (1,H,L,L) float32; key_mask (B,L) bool."""
    kw = dict(dtype=self.dtype, param_dtype=jnp.float32, use_bias=False)
    q, k, v = layers.project_qkv(x, x, self.num_heads, self.head_dim, names=("q", "k", "v"), **kw)
    context = layers.masked_attention(q, k, v, key_mask, position_bias, scaled=False)
    return layers.attention_out(x.shape[-1], name="o", **kw)(context)


class FeedForward(nn.Module):
  """DenseReluDense: wo(act(wi x)), or gated wo(act(wi_0 x) * wi_1 x)."""
  config: T5EncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(param_dtype=jnp.float32, use_bias=False)
    act = layers.HF_ACTIVATIONS[cfg.activation]
    wi = lambda name: layers.dense(cfg.d_ff, ("embed", "mlp"), name=name, dtype=self.dtype,
                                   **kw)(x)
    h = act(wi("wi_0")) * wi("wi_1") if cfg.is_gated else act(wi("wi"))
    # transformers keeps `wo` in float32 under half precision (`_keep_in_fp32_modules`,
    # its inputs overflow float16), so the bfloat16 reference runs this matmul in float32.
    return layers.dense(cfg.d_model, ("mlp", "embed"), name="wo", dtype=jnp.float32, **kw)(h)


class EncoderLayer(nn.Module):
  """x + attention(norm(x)); x + feed_forward(norm(x))."""
  config: T5EncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, position_bias: jax.Array, key_mask: jax.Array) -> jax.Array:
    cfg = self.config
    # The norms see the float32 residual and return float32; the dense layers
    # cast their inputs to `dtype`.
    h = llama.RMSNorm(cfg.layer_norm_epsilon, name="attention_norm")(x)
    x = x + SelfAttention(cfg.num_heads, cfg.d_kv, self.dtype, name="attention")(
        h, position_bias, key_mask)
    h = llama.RMSNorm(cfg.layer_norm_epsilon, name="mlp_norm")(x)
    return x + FeedForward(cfg, self.dtype, name="mlp")(h)


class T5Encoder(nn.Module):
  """Token ids -> T5 encoder last hidden states.

  `__call__(input_ids [B, L] int, attention_mask [B, L] {0,1}/bool or None)`
  returns `(hidden float32 [B, L, D], {})`. Padding may sit anywhere (the
  bias is relative); padded positions still get hidden states, as in
  transformers, and are only hidden from the other tokens' attention.
  `dtype` is the compute dtype (the reference runs FLAN-T5-XL in bfloat16);
  parameters stay float32.
  """
  config: T5EncoderConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None):
    cfg = self.config
    length = input_ids.shape[1]
    key_mask = (jnp.ones(input_ids.shape, bool) if attention_mask is None
                else jnp.asarray(attention_mask).astype(bool))
    # The residual stream stays float32 for any `dtype`, as in the reference under
    # bfloat16, where the float32 `wo` output promotes every residual sum.
    x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.float32, param_dtype=jnp.float32,
                 embedding_init=layers.weight_init(("vocab", "embed")), name="shared")(input_ids)
    position_bias = layers.relative_position_bias(
        self, cfg.relative_attention_num_buckets, cfg.num_heads,
        layers.relative_position_buckets(length, cfg.relative_attention_num_buckets,
                                         cfg.relative_attention_max_distance))
    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, self.dtype, name=f"layer_{i}")(x, position_bias, key_mask)
    x = llama.RMSNorm(cfg.layer_norm_epsilon, name="final_norm")(x)
    return x, {}


abstract_params = layers.abstract_text_encoder_params
