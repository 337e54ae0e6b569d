"""LlamaGen GPT (arXiv 2406.06525): class- (c2i) and text-conditional (t2i) generators.

The sequence is [condition prefix (T rows) ; image tokens]; T = cls_token_num
(1 for c2i, the caption length for t2i). RoPE rows 0..T-1 are all zeros
(cos = sin = 0), so q and k of the prefix are exactly zero, as in the reference.

Parameters follow the official names (`tok_embeddings`, `cls_embedding`,
`layers_{i}` or, with `scan_layers`, one `layers` subtree stacked over a leading
layer axis, `norm`, `output`). The t2i null caption `uncond_embedding` is kept
as a parameter at `cls_embedding/uncond_embedding` so that `{'params': ...}`
is the whole model; it is a buffer in the reference and must never be trained:
the optimizer freezes every path matching `FROZEN_PARAMS`.
"""

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import layers, llama

Dtype = Any

# Regexes over '/'-joined parameter paths that the optimizer must not update.
FROZEN_PARAMS = (r"(^|/)cls_embedding/uncond_embedding$",)

# name -> (n_layer, n_head, dim); the official factory functions.
GPT_VARIANTS = {
    "B": (12, 12, 768),
    "L": (24, 16, 1024),
    "XL": (36, 20, 1280),
    "XXL": (48, 24, 1536),
    "3B": (24, 32, 3200),
    "XXXL": (48, 40, 2560),
    "1B": (22, 32, 2048),
    "7B": (32, 32, 4096),
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Every `ModelArgs` field of the reference plus layout/precision switches."""
  dim: int = 4096
  n_layer: int = 32
  n_head: int = 32
  n_kv_head: Optional[int] = None
  multiple_of: int = 256
  ffn_dim_multiplier: Optional[float] = None
  rope_base: float = 10000.0
  norm_eps: float = 1e-5
  vocab_size: int = 16384
  block_size: int = 256
  num_classes: int = 1000
  class_dropout_prob: float = 0.1
  model_type: str = "c2i"
  caption_dim: int = 2048
  cls_token_num: int = 1
  token_dropout_p: float = 0.1
  attn_dropout_p: float = 0.0
  resid_dropout_p: float = 0.1
  ffn_dropout_p: float = 0.1
  drop_path_rate: float = 0.0
  # False: 1-D RoPE over the sequence (generators over TiTok's 1-D tokens); the
  # T condition rows stay all-zero there too, image token k uses row T + k.
  rope_2d: bool = True
  scan_layers: bool = False
  remat: bool = False
  # 'xla' | 'dot_product' | 'cudnn': see `llama.ATTENTION_KINDS`.
  attention: str = "xla"
  # Query block of the causal teacher-forced pass (`llama.StackConfig`).
  causal_block: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.model_type not in ("c2i", "t2i"):
      raise ValueError(f"GPTConfig.model_type={self.model_type!r}: expected 'c2i' or 't2i'")
    layers.check_sizes(self, "dim", "n_head")
    if self.head_dim % (4 if self.rope_2d else 2):
      raise ValueError(f"GPTConfig: head_dim={self.head_dim} must be a multiple of "
                       f"{4 if self.rope_2d else 2} for {'2-D' if self.rope_2d else '1-D'} RoPE")
    if self.n_head % (self.n_kv_head or self.n_head):
      raise ValueError(f"GPTConfig: n_head={self.n_head} not a multiple of "
                       f"n_kv_head={self.n_kv_head}")
    if self.rope_2d and self.grid_size ** 2 != self.block_size:
      raise ValueError(f"GPTConfig: block_size={self.block_size} is not a square grid; "
                       "use rope_2d=False for 1-D token sequences")
    if self.model_type == "c2i" and self.cls_token_num != 1:
      # The label embedder yields one token; a longer prefix would shift RoPE rows.
      raise ValueError(f"GPTConfig: c2i needs cls_token_num=1, got {self.cls_token_num}")
    _ = self.stack  # Building the trunk's config runs its attention checks.

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_head

  @property
  def kv_heads(self) -> int:
    return self.n_kv_head or self.n_head

  @property
  def ffn_hidden_dim(self) -> int:
    return llama.ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

  @property
  def stack(self) -> llama.StackConfig:
    """The transformer trunk (shared with `llama_lm.LlamaLM`)."""
    return llama.StackConfig.of(
        self, ffn_hidden=self.ffn_hidden_dim, attn_dropout=self.attn_dropout_p,
        resid_dropout=self.resid_dropout_p, ffn_dropout=self.ffn_dropout_p)

  @property
  def grid_size(self) -> int:
    return int(round(np.sqrt(self.block_size)))

  @property
  def has_null_condition(self) -> bool:
    """Whether a null class / caption exists (needed for CFG)."""
    return self.model_type == "t2i" or self.class_dropout_prob > 0

  @classmethod
  def from_official(cls, model_args: Mapping[str, Any], **overrides) -> "GPTConfig":
    """From the reference `ModelArgs` fields; the unused `initializer_range`,
    `max_batch_size` and `max_seq_len` are ignored, unknown names raise."""
    unused = {"initializer_range", "max_batch_size", "max_seq_len"}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(model_args) - names - unused
    if unknown:
      raise ValueError(f"GPTConfig.from_official: unknown ModelArgs field(s) {sorted(unknown)}")
    kwargs = {k: v for k, v in model_args.items() if k in names}
    return cls(**{**kwargs, **overrides})

  @classmethod
  def from_variant(cls, name: str, **overrides) -> "GPTConfig":
    """'B', 'L', 'XL', 'XXL', '3B', 'XXXL', '1B' or '7B' (the official GPT-* sizes)."""
    n_layer, n_head, dim = layers.variant(GPT_VARIANTS, name, "GPT")
    return cls(**dict(dict(n_layer=n_layer, n_head=n_head, dim=dim), **overrides))


def rope_table_2d(grid: int, head_dim: int, prefix_len: int, base: float = 10000.0) -> np.ndarray:
  """(prefix_len + grid^2, head_dim/2, 2) [cos, sin]; prefix rows are all zero.

  Token (r, c) in raster order: the first head_dim/4 pairs rotate by r*f_j, the
  rest by c*f_j, with f_j = base^(-4j/head_dim).
  """
  half = head_dim // 2
  freqs = llama.rope_frequencies(half // 2, half, base)
  angles = np.outer(np.arange(grid, dtype=np.float32), freqs)  # (grid, hd/4)
  grid_angles = np.concatenate([
      np.broadcast_to(angles[:, None, :], (grid, grid, half // 2)),
      np.broadcast_to(angles[None, :, :], (grid, grid, half // 2))], axis=-1)
  table = llama.cos_sin(grid_angles.reshape(grid * grid, half))
  return np.concatenate([np.zeros((prefix_len, half, 2), np.float32), table])


def rope_table_1d(length: int, head_dim: int, prefix_len: int,
                  base: float = 10000.0) -> np.ndarray:
  """(prefix_len + length, head_dim/2, 2): token k rotates by k*base^(-2j/head_dim)."""
  freqs = llama.rope_frequencies(head_dim // 2, head_dim, base)
  table = llama.cos_sin(np.outer(np.arange(length, dtype=np.float32), freqs))
  return np.concatenate([np.zeros((prefix_len, head_dim // 2, 2), np.float32), table])


def rope_table(config: GPTConfig) -> np.ndarray:
  """The model's table: rows 0..T-1 for the prefix, then one row per image token."""
  args = (config.head_dim, config.cls_token_num, config.rope_base)
  if config.rope_2d:
    return rope_table_2d(config.grid_size, *args)
  return rope_table_1d(config.block_size, *args)


def t2i_attention_mask(emb_mask: jax.Array, seq_len: int) -> jax.Array:
  """(B, 1, S, S) teacher-forcing mask of `dataset/t2i.py` + `train_t2i.py`."""
  return llama.attention_mask(emb_mask, jnp.arange(seq_len), seq_len)[:, None]


def left_pad_captions(caption: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Right-padded T5 output (B,T,C) + mask (B,T) -> left-padded, zeroed caption, mask.

  As `sample_t2i.py`: the n real vectors move to the end, pads are zeroed.
  """
  caption, mask = jnp.asarray(caption), jnp.asarray(mask)
  length = caption.shape[1]
  n = jnp.sum(mask.astype(jnp.int32), axis=1)
  src = (jnp.arange(length)[None] + n[:, None]) % length
  rolled = jnp.take_along_axis(caption, src[:, :, None], axis=1)
  new_mask = jnp.flip(mask, axis=1)
  return rolled * new_mask[..., None].astype(caption.dtype), new_mask


class LabelEmbedder(nn.Module):
  """Class table with an extra null row (index num_classes) when dropout is on."""
  config: GPTConfig

  @nn.compact
  def __call__(self, labels: jax.Array, *, train: bool,
               force_drop: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    rows = cfg.num_classes + int(cfg.class_dropout_prob > 0)
    table = nn.Embed(rows, cfg.dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     embedding_init=layers.weight_init((None, "embed")), name="embedding_table")
    drop = _drop_flags(self, labels.shape[0], train, force_drop)
    if drop is not None:
      labels = jnp.where(drop, cfg.num_classes, labels)
    return table(labels.astype(jnp.int32))[:, None]


class CaptionEmbedder(nn.Module):
  """cap_proj = fc2(gelu_tanh(fc1(caption))), no biases; null caption for CFG/dropout."""
  config: GPTConfig

  @nn.compact
  def __call__(self, caption: jax.Array, *, train: bool,
               force_drop: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    uncond = self.param(
        "uncond_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(1.0 / np.sqrt(cfg.caption_dim)),
                                     ("token", None)),
        (cfg.cls_token_num, cfg.caption_dim), cfg.param_dtype)
    if caption.shape[1:] != uncond.shape:
      raise ValueError(f"caption {caption.shape}: expected (B, cls_token_num="
                       f"{cfg.cls_token_num}, caption_dim={cfg.caption_dim})")
    drop = _drop_flags(self, caption.shape[0], train, force_drop)
    if drop is not None:
      caption = jnp.where(drop[:, None, None], uncond.astype(caption.dtype)[None], caption)
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, use_bias=False)
    h = layers.dense(cfg.dim, ("mlp", "embed"), name="fc1", **kw)(caption.astype(cfg.dtype))
    return layers.dense(cfg.dim, ("mlp", "embed"), name="fc2", **kw)(
        nn.gelu(h, approximate=True))


def _drop_flags(module: nn.Module, batch: int, train: bool,
                force_drop: Optional[jax.Array]) -> Optional[jax.Array]:
  """Per-sample null-condition flags: `force_drop`, else Bernoulli(p) in training."""
  if force_drop is not None:
    return jnp.asarray(force_drop).astype(bool)
  p = module.config.class_dropout_prob
  if train and p > 0:
    return jax.random.bernoulli(module.make_rng("dropout"), p, (batch,))
  return None


class GPT(nn.Module):
  """LlamaGen GPT. `__call__` is teacher forcing; `prefill`/`decode` use a KV cache."""
  config: GPTConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.tok_embeddings = nn.Embed(cfg.vocab_size, cfg.dim, embedding_init=layers.weight_init(
        ("vocab", "embed")), **kw)
    self.cls_embedding = (LabelEmbedder if cfg.model_type == "c2i" else CaptionEmbedder)(cfg)
    self.layers = llama.build_layers(cfg.stack)
    self.norm = llama.RMSNorm(cfg.norm_eps, **kw)
    self.output = layers.dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, **kw)
    self.token_dropout = nn.Dropout(cfg.token_dropout_p)

  def embed_condition(self, cond: jax.Array, *, train: bool = False,
                      force_drop: Optional[jax.Array] = None) -> jax.Array:
    """Labels (B,) or captions (B,T,caption_dim) -> prefix embeddings (B,T,dim)."""
    return self.cls_embedding(cond, train=train, force_drop=force_drop)

  def _head(self, h):
    return self.output(self.norm(h)).astype(jnp.float32)

  def __call__(self, cond: jax.Array, idx: jax.Array, *, train: bool = False,
               attn_mask: Optional[jax.Array] = None,
               force_drop: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
    """Teacher forcing over [prefix ; tok_emb(idx)] at positions 0..S-1.

    Args:
      cond: int labels (B,) for c2i, caption embeddings (B,T,caption_dim) for t2i.
      idx: int image tokens (B, L).
      train: dropouts and label/caption dropout on (rng 'dropout').
      attn_mask: optional bool (B,S,S) or (B,1,S,S), True = may attend
        (see `t2i_attention_mask`); None = causal.
      force_drop: optional bool (B,): use the null condition for these rows.

    Returns:
      logits (B, T+L, vocab) float32, not sliced (a trainer uses [:, T-1:]),
      and aux {'h_embed'}; block outputs are sown as intermediates
      `layers_{i}/out` (stacked `layers/out` when scanned).
    """
    cfg = self.config
    prefix = self.embed_condition(cond, train=train, force_drop=force_drop)
    h = jnp.concatenate([prefix, self.tok_embeddings(idx.astype(jnp.int32))], axis=1)
    h = self.token_dropout(h, deterministic=not train)
    seq = h.shape[1]
    if seq > cfg.cls_token_num + cfg.block_size:
      raise ValueError(f"sequence of {seq} positions exceeds cls_token_num + block_size = "
                       f"{cfg.cls_token_num + cfg.block_size}")
    rope = jnp.asarray(rope_table(cfg)[:seq])
    out, _ = llama.run_layers(cfg.stack, self.layers, h, rope, attn_mask, None, None, train)
    return self._head(out), {"h_embed": h}

  def prefill(self, cond: jax.Array, cache: Any, *, emb_mask: Optional[jax.Array] = None,
              force_drop: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    """Runs the condition prefix (positions 0..T-1) into an empty cache.

    Returns the logits of the last prefix position (B, vocab) float32 (they
    predict image token 0) and the filled cache.
    """
    cfg = self.config
    h = self.embed_condition(cond, force_drop=force_drop)
    rope = llama.table_rows(rope_table(cfg), 0, h.shape[1])
    h, cache = llama.run_cached(cfg.stack, self.layers, h, rope, emb_mask, cache)
    return self._head(h[:, -1]), cache

  def decode(self, token: jax.Array, position: Any, cache: Any, *,
             emb_mask: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    """Feeds one token (B,) at `position` (traced int, T + its raster index).

    Returns the next-token logits (B, vocab) float32 and the updated cache.
    """
    cfg = self.config
    h = self.tok_embeddings(token.astype(jnp.int32))[:, None]
    h, cache = llama.run_cached(cfg.stack, self.layers, h,
                                llama.table_rows(rope_table(cfg), position, 1), emb_mask,
                                cache, position)
    return self._head(h[:, 0]), cache


def init_cache(config: GPTConfig, batch: int, max_len: int, dtype: Optional[Dtype] = None):
  """Zero KV cache for `GPT.prefill/decode` (see `llama.init_stack_cache`).

  `max_len` must cover the prefix and every fed token.
  """
  return llama.init_stack_cache(config.stack, batch, max_len, dtype or config.dtype)


def dummy_condition(config: GPTConfig, batch: int = 1) -> jax.Array:
  """A zero condition of the right shape/dtype (for `init` / `eval_shape`)."""
  if config.model_type == "c2i":
    return jnp.zeros((batch,), jnp.int32)
  return jnp.zeros((batch, config.cls_token_num, config.caption_dim), jnp.float32)


def abstract_params(config: GPTConfig) -> Any:
  """Boxed (logically partitioned) abstract params via `jax.eval_shape`."""
  return layers.abstract_params(GPT(config), dummy_condition(config),
                                jnp.zeros((1, 1), jnp.int32))


def count_params(config: GPTConfig, include_frozen: bool = False) -> int:
  flat = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract_params(config)))
  frozen = ("cls_embedding", "uncond_embedding")
  return sum(int(np.prod(leaf.shape)) for path, leaf in flat
             if include_frozen or tuple(k.key for k in path) != frozen)
