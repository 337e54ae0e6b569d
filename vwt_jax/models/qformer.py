"""The InstructBLIP Q-Former with instruction text, as ST-LLM (Vriptor) runs it.

Computes `STLLMModel.encode_img` (vriptor/stllm/models/st_llm.py,
`qformer_text_input=True`) from the image features on: `Qformer.bert` of
stllm/models/Qformer.py run on [learned queries; instruction tokens] with
cross-attention to the features, then `llama_proj` of the query positions.

Embeddings (`BertEmbeddings`): the text gets word + absolute position
embeddings, positions 0..T-1 (the queries take no position); the query tokens
are put before it and one LayerNorm normalises all Q + T positions.

Layers (`BertLayer`, post-LN, `query_length` = Q):
* self-attention (`attention`) over all Q + T positions, the queries always
  visible, text keys masked by the tokenizer's attention mask;
* in layers i with i % cross_attention_freq == 0 (0, 2, 4, ... for the
  released freq 2), cross-attention (`crossattention`) from the Q query
  positions alone to the image features, itself post-LN with a residual;
* feed-forward with separate weights: the query positions through
  `intermediate_query` / `output_query`, the text through `intermediate` /
  `output`.
Each block is transformers' BERT block (`text_encoders.bert_attention`,
`text_encoders.bert_feed_forward`); dropout is off (the Q-Former is frozen in
eval mode). The official masks are additive (-10000 for self-attention,
float32's minimum for cross-attention, `get_extended_attention_mask` and
`invert_attention_mask`); here masked keys get float32's minimum in place of
their logit, which is the same in float32: the always-visible queries keep
exp(-10000) of a masked text key at 0, and adding float32's minimum to a
logit gives float32's minimum.

The output is the last layer's query positions (B, Q, D) and their
`llama_proj` (B, Q, llm_hidden_size), the LLM's visual tokens. Tokenization
(bert-base-uncased plus '[DEC]', hence 30523 rows, truncated on the left to
512 - Q - 10 tokens) happens before this module; the instruction text is
`captioner_text.qformer_instruction` of the prompt.

Logical axes: 'embed' is the Q-Former width and the image feature width
(cross-attention key/value inputs), as in the vision tower; the LLM width of
`llama_proj` is 'mlp' as in `projector.Projector`.
"""

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers
from vwt_jax.models import text_encoders

Dtype = Any


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
  """Sizes of a Q-Former; defaults are ST-LLM's (Vriptor's) for EVA ViT-g and Vicuna-7B.

  The BERT fields are bert-base-uncased's (`Blip2Base.init_Qformer`) with the
  vocabulary resized for '[DEC]'; `encoder_width` is EVA ViT-g's 1408,
  `num_query_tokens` the config's `num_query_token` and `llm_hidden_size`
  the output width of `llama_proj` (Vicuna-7B's 4096).
  """
  vocab_size: int = 30523
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  layer_norm_eps: float = 1e-12
  encoder_width: int = 1408
  cross_attention_freq: int = 2
  num_query_tokens: int = 32
  llm_hidden_size: int = 4096
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    layers.check_sizes(self, "hidden_size", "num_attention_heads", "hidden_act")
    for name in ("cross_attention_freq", "num_query_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"QFormerConfig.{name}={getattr(self, name)}: expected at least 1")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def has_cross_attention(self, layer: int) -> bool:
    """Whether layer `layer` (0-based) cross-attends to the image features."""
    return layer % self.cross_attention_freq == 0

  @classmethod
  def from_bert_config(cls, config: Mapping[str, Any], llm_hidden_size: int,
                       source: str = "BertConfig", **overrides) -> "QFormerConfig":
    """Reads the fields `init_Qformer` sets on a transformers `BertConfig` dict.

    That is bert-base-uncased's config plus encoder_width,
    add_cross_attention, cross_attention_freq and query_length; vocab_size
    is the resized one. `llm_hidden_size` is `llama_proj`'s output width;
    `overrides` set other fields (dtype, param_dtype).
    """
    layers.require_fields(config, (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "encoder_width", "cross_attention_freq",
        "query_length"), source)
    if config.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{source}: position_embedding_type="
                       f"{config['position_embedding_type']!r}; only 'absolute' is supported")
    if not config.get("add_cross_attention", False):
      raise ValueError(f"{source}: add_cross_attention={config.get('add_cross_attention')!r}; "
                       "a Q-Former cross-attends to the image (True)")
    try:
      return cls(
          vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
          num_hidden_layers=int(config["num_hidden_layers"]),
          num_attention_heads=int(config["num_attention_heads"]),
          intermediate_size=int(config["intermediate_size"]),
          hidden_act=config.get("hidden_act", "gelu"),
          max_position_embeddings=int(config["max_position_embeddings"]),
          layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
          encoder_width=int(config["encoder_width"]),
          cross_attention_freq=int(config["cross_attention_freq"]),
          num_query_tokens=int(config["query_length"]), llm_hidden_size=int(llm_hidden_size),
          **overrides)
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None


class QFormerAttention(nn.Module):
  """One `BertAttention` (self- or cross-) in its own parameter scope."""
  config: QFormerConfig

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, key_mask: jax.Array) -> jax.Array:
    cfg = self.config
    return text_encoders.bert_attention(
        x, context, key_mask, cfg.num_attention_heads, epsilon=cfg.layer_norm_eps,
        dtype=cfg.dtype, param_dtype=cfg.param_dtype)


class QFormerFeedForward(nn.Module):
  """One `BertIntermediate` + `BertOutput` pair in its own parameter scope."""
  config: QFormerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    return text_encoders.bert_feed_forward(
        x, cfg.intermediate_size, cfg.hidden_act, epsilon=cfg.layer_norm_eps, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype)


class QFormerLayer(nn.Module):
  """`BertLayer` with Q query positions first: self-attention, cross-attention, two FFNs."""
  config: QFormerConfig
  cross_attention: bool

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array, image: jax.Array,
               image_mask: jax.Array) -> jax.Array:
    cfg = self.config
    q = cfg.num_query_tokens
    x = QFormerAttention(cfg, name="attention")(x, x, key_mask)
    queries, text = x[:, :q], x[:, q:]
    if self.cross_attention:
      queries = QFormerAttention(cfg, name="crossattention")(queries, image, image_mask)
    queries = QFormerFeedForward(cfg, name="feed_forward_query")(queries)
    text = QFormerFeedForward(cfg, name="feed_forward")(text)
    return layers.constrain_activations(jnp.concatenate([queries, text], axis=1))


class QFormer(nn.Module):
  """Instruction tokens and image features -> the LLM's visual tokens.

  `__call__(input_ids (B, T) int, attention_mask (B, T) {0,1},
  image_features (B, N, encoder_width), image_mask (B, N) {0,1} or None (all
  visible, as ST-LLM))` returns `(llm_tokens (B, Q, llm_hidden_size), aux)`:
  `aux['query_output']` (B, Q, hidden_size) is the last layer's query
  positions, `aux['hidden_states']` the num_hidden_layers + 1 states
  (B, Q + T, hidden_size) of the embeddings and each layer. Text is
  right-padded; padded tokens change no query output.
  """
  config: QFormerConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, image_features: jax.Array,
               image_mask: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, Any]]:
    cfg = self.config
    batch, length = input_ids.shape
    if length > cfg.max_position_embeddings:
      raise ValueError(f"text length {length} exceeds the {cfg.max_position_embeddings} "
                       "positions of the Q-Former")
    if image_features.ndim != 3 or image_features.shape[-1] != cfg.encoder_width:
      raise ValueError(f"image_features {image_features.shape}: expected (B, N, "
                       f"{cfg.encoder_width})")
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    q = cfg.num_query_tokens

    # 30523 rows (bert-base-uncased + '[DEC]') split evenly over no mesh axis.
    words = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=layers.weight_init(
        (None, "embed")), name="word_embeddings", **kw)(input_ids)
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                         embedding_init=layers.weight_init(("length", "embed")),
                         name="position_embeddings", **kw)(jnp.arange(length)[None, :])
    query_tokens = self.param("query_tokens", layers.weight_init(("length", "embed")),
                              (q, cfg.hidden_size), cfg.param_dtype)
    queries = jnp.broadcast_to(query_tokens.astype(cfg.dtype), (batch, q, cfg.hidden_size))
    x = jnp.concatenate([queries, words + positions], axis=1)
    x = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="embeddings_norm", **kw)(x)

    key_mask = jnp.concatenate(
        [jnp.ones((batch, q), bool), attention_mask.astype(bool)], axis=1)
    image_mask = (jnp.ones(image_features.shape[:2], bool) if image_mask is None
                  else image_mask.astype(bool))
    image = image_features.astype(cfg.dtype)
    hidden_states = [x]
    for i in range(cfg.num_hidden_layers):
      x = QFormerLayer(cfg, cfg.has_cross_attention(i), name=f"layer_{i}")(
          x, key_mask, image, image_mask)
      hidden_states.append(x)

    query_output = x[:, :q]
    llm_tokens = layers.dense(cfg.llm_hidden_size, ("embed", "mlp"), name="llama_proj",
                              **kw)(query_output)
    return llm_tokens, {"query_output": query_output, "hidden_states": tuple(hidden_states)}


def abstract_params(config: QFormerConfig) -> Any:
  """The boxed parameter tree of a `QFormer(config)`, by shape only."""
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  image = jax.ShapeDtypeStruct((1, 1, config.encoder_width), jnp.float32)
  return layers.abstract_params(QFormer(config), ids, ids, image)
