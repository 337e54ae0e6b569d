"""A LLaMA-family causal language model (LLaMA, Vicuna) on the shared LLaMA blocks.

The captioner's decoder: `embed_tokens`, the block stack of `models/llama.py`
(`layers_{i}`, or `layers` with `scan_layers`), the final RMSNorm `norm` and
`lm_head` (absent with `tie_embeddings`). RoPE is 1-D in the interleaved-pair
layout of `llama.apply_rope`; `conversion/hf_llama.py` permutes Hugging
Face's q/k projections to match.

RoPE scaling as transformers computes it: none, linear (frequencies divided by
a factor) or dynamic NTK (transformers >= 4.31). Dynamic NTK keeps the base up
to `max_positions` tokens and past that grows it with the running length L of
the forward pass: base * (factor * L / max_positions - (factor - 1))^(d/(d-2)),
d the head size. L is the sequence length of a full forward, the prompt length
in `prefill` and position + 1 in `decode`, so each decoded token is rotated at
the base of its own step while the keys already cached keep theirs, as in
transformers' cached generation. L is the batch's (transformers takes the
largest position id), so past `max_positions` a left-padded row does not
score exactly as it would alone. Below `max_positions` it is plain RoPE.

Batched prompts are left-padded, their pad slots hidden by a key mask; that
shorter prompts start at later positions changes nothing, as RoPE attention
scores depend only on the distance between positions.
"""

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import layers, llama

Dtype = Any

# RoPE variants of transformers' `rope_type` that this model runs.
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic")
# ST-LLM (Vriptor) saves its LLaMA under its own model_type, with LLaMA's fields.
MODEL_TYPES = ("llama", "st_llm_hf")

# name -> LlamaLMConfig fields of the released checkpoints' config.json.
LLAMA_VARIANTS = {
    # LLaMA-1 7B and Vicuna-7B v0/v1.1 (rms_norm_eps 1e-6, 2048 positions).
    "7B": dict(vocab_size=32000, dim=4096, n_layer=32, n_head=32, ffn_hidden=11008,
               norm_eps=1e-6, max_positions=2048),
    # LLaMA-1 13B and Vicuna-13B v1.1.
    "13B": dict(vocab_size=32000, dim=5120, n_layer=40, n_head=40, ffn_hidden=13824,
                norm_eps=1e-6, max_positions=2048),
    # Llama-2-7B and Vicuna-7B v1.5 (rms_norm_eps 1e-5, 4096 positions).
    "llama2-7B": dict(vocab_size=32000, dim=4096, n_layer=32, n_head=32, ffn_hidden=11008,
                      norm_eps=1e-5, max_positions=4096),
    # For tests and demos: two GQA layers.
    "tiny": dict(vocab_size=256, dim=64, n_layer=2, n_head=4, n_kv_head=2, ffn_hidden=128,
                 norm_eps=1e-6, max_positions=512),
}


@dataclasses.dataclass(frozen=True)
class LlamaLMConfig:
  """Sizes of a LLaMA decoder plus layout/precision switches.

  `head_dim=None` means dim // n_head; `rope_linear_factor` > 1 is
  transformers' linear RoPE scaling (frequencies divided by the factor),
  `rope_dynamic_factor` > 1 its dynamic NTK scaling (module docstring), with
  which `max_positions` is where the base starts to grow, not a limit.
  """
  vocab_size: int = 32000
  dim: int = 4096
  n_layer: int = 32
  n_head: int = 32
  n_kv_head: Optional[int] = None
  head_dim: Optional[int] = None
  ffn_hidden: int = 11008
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_linear_factor: float = 1.0
  rope_dynamic_factor: float = 1.0
  max_positions: int = 2048
  tie_embeddings: bool = False
  attn_dropout: float = 0.0
  scan_layers: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.head_dim is None and self.dim % self.n_head:
      raise ValueError(f"LlamaLMConfig: dim={self.dim} not divisible by n_head={self.n_head}")
    if self.attention_head_dim % 2:
      raise ValueError(f"LlamaLMConfig: head_dim={self.attention_head_dim} must be even for RoPE")
    if self.n_head % self.kv_heads:
      raise ValueError(f"LlamaLMConfig: n_head={self.n_head} not a multiple of "
                       f"n_kv_head={self.n_kv_head}")
    for field in ("rope_linear_factor", "rope_dynamic_factor"):
      if getattr(self, field) < 1:
        raise ValueError(f"LlamaLMConfig: {field}={getattr(self, field)} must be >= 1")
    if self.rope_linear_factor > 1 and self.dynamic_rope:
      raise ValueError("LlamaLMConfig: rope_linear_factor and rope_dynamic_factor are both "
                       "> 1; transformers applies one RoPE scaling")

  @property
  def dynamic_rope(self) -> bool:
    return self.rope_dynamic_factor > 1

  def check_length(self, length: int, what: str) -> None:
    """Refuses `length` positions past `max_positions` (which dynamic RoPE allows)."""
    if length > self.max_positions and not self.dynamic_rope:
      raise ValueError(f"{what} of {length} positions exceeds max_positions={self.max_positions}")

  @property
  def attention_head_dim(self) -> int:
    return self.head_dim or self.dim // self.n_head

  @property
  def kv_heads(self) -> int:
    return self.n_kv_head or self.n_head

  @property
  def stack(self) -> llama.StackConfig:
    """The transformer trunk (shared with the LlamaGen `gpt.GPT`)."""
    return llama.StackConfig.of(self, head_dim=self.attention_head_dim)

  @classmethod
  def from_variant(cls, name: str, **overrides) -> "LlamaLMConfig":
    """One of `LLAMA_VARIANTS` ('7B', '13B', 'llama2-7B', 'tiny')."""
    return cls(**dict(layers.variant(LLAMA_VARIANTS, name, "LLaMA"), **overrides))

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any], source: str = "config.json",
                     **overrides) -> "LlamaLMConfig":
    """Reads a transformers `LlamaConfig` dict (LlamaForCausalLM, Vicuna).

    Refuses, naming the field, what this model does not compute: another
    model_type or activation, biases, partial or non-linear RoPE scaling.
    `overrides` set the layout/precision fields (scan_layers, dtype, ...).
    """
    model_type = config.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"{source}: model_type={model_type!r}; expected one of {MODEL_TYPES}")
    layers.require_fields(config, ("vocab_size", "hidden_size", "num_hidden_layers",
                                   "num_attention_heads", "intermediate_size"), source)
    if config.get("hidden_act", "silu") != "silu":
      raise ValueError(f"{source}: hidden_act={config['hidden_act']!r}; only 'silu' (SwiGLU) "
                       "is supported")
    for name in ("attention_bias", "mlp_bias"):
      if config.get(name, False):
        raise ValueError(f"{source}: {name}=true is not supported (LLaMA has no biases)")
    theta, linear, dynamic = _rope_settings(config, source)
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    kwargs = dict(
        vocab_size=int(config["vocab_size"]), dim=hidden,
        n_layer=int(config["num_hidden_layers"]), n_head=heads,
        # Defaults are kept as None (as in the variants) so equal models compare equal.
        n_kv_head=None if kv_heads == heads else kv_heads,
        head_dim=None if head_dim == hidden // heads else head_dim,
        ffn_hidden=int(config["intermediate_size"]),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        rope_linear_factor=linear, rope_dynamic_factor=dynamic,
        max_positions=int(config.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        attn_dropout=float(config.get("attention_dropout", 0.0)))
    return cls(**{**kwargs, **overrides})


def _rope_settings(config: Mapping[str, Any], source: str) -> tuple[float, float, float]:
  """(rope_theta, linear factor, dynamic factor) from `rope_scaling`
  (transformers 4) or `rope_parameters` (transformers 5, which also holds
  rope_theta)."""
  field = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
  params = dict(config.get(field) or {})
  theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ValueError(f"{source}: {field}={config[field]!r} (rope_type {rope_type!r}) is not "
                     f"supported; rope_scaling must be null or {{'rope_type': 'linear' or "
                     f"'dynamic', 'factor': f}} (supported rope types: {SUPPORTED_ROPE_TYPES})")
  partial = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
  if partial != 1.0:
    raise ValueError(f"{source}: partial_rotary_factor={partial} is not supported (only 1.0)")
  factor = float(params.get("factor", 1.0))
  return (theta, factor if rope_type == "linear" else 1.0,
          factor if rope_type == "dynamic" else 1.0)


def rope_table(config: LlamaLMConfig) -> np.ndarray:
  """(max_positions, head_dim/2, 2) [cos, sin] of positions 0..max_positions-1.

  Linear scaling divides the frequencies by the factor, as transformers does
  (the same angles as dividing the positions, rounded the same way). Dynamic
  scaling leaves these positions unscaled.
  """
  hd = config.attention_head_dim
  freqs = llama.rope_frequencies(hd // 2, hd, config.rope_theta) / np.float32(
      config.rope_linear_factor)
  positions = np.arange(config.max_positions, dtype=np.float32)
  return llama.cos_sin(np.outer(positions, freqs))


def dynamic_frequencies(config: LlamaLMConfig, length: Any) -> jax.Array:
  """The frequencies of a forward pass over `length` positions (may be traced)
  under dynamic NTK scaling, in float32 in transformers' order of operations."""
  hd = config.attention_head_dim
  factor = config.rope_dynamic_factor
  length = jnp.maximum(jnp.asarray(length, jnp.int32), config.max_positions)
  growth = factor * length.astype(jnp.float32) / config.max_positions - (factor - 1)
  base = config.rope_theta * growth ** (hd / (hd - 2))
  return 1.0 / base ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd)


def rope_rows(config: LlamaLMConfig, start: Any, count: int) -> jax.Array:
  """[cos, sin] (count, head_dim/2, 2) of positions start..start+count-1 in a
  forward pass whose running length is start + count (`start` may be traced)."""
  if not config.dynamic_rope:
    return llama.table_rows(rope_table(config), start, count)
  positions = jnp.asarray(start, jnp.int32) + jnp.arange(count)
  angles = positions.astype(jnp.float32)[:, None] * dynamic_frequencies(
      config, positions[-1] + 1)[None, :]
  return jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class LlamaLM(nn.Module):
  """LLaMA causal LM. `__call__` scores whole sequences; `prefill`/`decode` use a KV cache."""
  config: LlamaLMConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.dim, embedding_init=layers.weight_init(
        ("vocab", "embed")), **kw)
    self.layers = llama.build_layers(cfg.stack)
    self.norm = llama.RMSNorm(cfg.norm_eps, **kw)
    if not cfg.tie_embeddings:
      self.lm_head = layers.dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, **kw)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token ids (B,S) -> embeddings (B,S,dim), to splice other tokens in between."""
    return self.embed_tokens(input_ids.astype(jnp.int32))

  def _head(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = self.norm(h)
    logits = self.embed_tokens.attend(h) if self.config.tie_embeddings else self.lm_head(h)
    return logits.astype(jnp.float32), h

  def __call__(self, input_ids: Optional[jax.Array] = None, *,
               inputs_embeds: Optional[jax.Array] = None, attn_mask: Optional[jax.Array] = None,
               train: bool = False) -> tuple[jax.Array, dict]:
    """Next-token logits of every position 0..S-1.

    Args:
      input_ids: int (B, S); or instead
      inputs_embeds: (B, S, dim), e.g. `embed` output with visual tokens spliced in.
      attn_mask: optional bool (B,S,S) or (B,1,S,S), True = may attend (e.g.
        `llama.attention_mask(prompt_mask, jnp.arange(S), S)` for left-padded
        prompts); None = causal.
      train: attention dropout on (rng 'dropout').

    Returns:
      logits (B, S, vocab) float32 and aux {'hidden_states': the final-normed
      hidden states (B, S, dim)}. Block outputs are sown as intermediates.
    """
    cfg = self.config
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("LlamaLM: pass exactly one of input_ids and inputs_embeds")
    h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.dtype)
    seq = h.shape[1]
    cfg.check_length(seq, "sequence")
    h, _ = llama.run_layers(cfg.stack, self.layers, h, rope_rows(cfg, 0, seq), attn_mask, None,
                            None, train)
    logits, hidden = self._head(h)
    return logits, {"hidden_states": hidden}

  def prefill(self, inputs_embeds: jax.Array, cache: Any, *,
              mask: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    """Runs a prompt (B,T,dim) at positions 0..T-1 into an empty cache.

    `mask` (B,T) bool marks the real prompt slots (False = left padding).
    Returns the last position's next-token logits (B, vocab) float32 and the
    filled cache.
    """
    cfg = self.config
    t = inputs_embeds.shape[1]
    cfg.check_length(t, "prompt")
    h, cache = llama.run_cached(cfg.stack, self.layers, inputs_embeds.astype(cfg.dtype),
                                rope_rows(cfg, 0, t), mask, cache)
    logits, _ = self._head(h[:, -1])
    return logits, cache

  def decode(self, token: jax.Array, position: Any, cache: Any, *,
             mask: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    """Feeds one token (B,) at `position` (a traced int < the cache length).

    `mask` is the prompt mask given to `prefill` (slots past it are real).
    Returns the next-token logits (B, vocab) float32 and the updated cache.
    """
    cfg = self.config
    h, cache = llama.run_cached(cfg.stack, self.layers, self.embed(token)[:, None],
                                rope_rows(cfg, position, 1), mask, cache, position)
    logits, _ = self._head(h[:, 0])
    return logits, cache


def init_cache(config: LlamaLMConfig, batch: int, max_len: int, dtype: Optional[Dtype] = None):
  """Zero KV cache for `LlamaLM.prefill/decode` (see `llama.init_stack_cache`).

  `max_len` must cover the prompt and every decoded token.
  """
  config.check_length(max_len, "cache")
  return llama.init_stack_cache(config.stack, batch, max_len, dtype or config.dtype)


def abstract_params(config: LlamaLMConfig) -> Any:
  """Boxed (logically partitioned) abstract params via `jax.eval_shape`."""
  return layers.abstract_params(LlamaLM(config), jnp.zeros((1, 1), jnp.int32))


def count_params(config: LlamaLMConfig) -> int:
  """The number of parameters, without materialising them."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(
      abstract_params(config))))
