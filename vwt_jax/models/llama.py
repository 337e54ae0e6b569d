"""The LLaMA decoder core: RMSNorm, SwiGLU, interleaved RoPE, GQA attention, KV cache.

Shared by the LlamaGen GPT (`models/gpt.py`) and the captioner's language model
(`models/llama_lm.py`): both describe their trunk as a `StackConfig`, build it
with `build_layers` and run it with `run_layers` / `run_cached`.

Parameter layouts (chosen so tensor parallelism needs no resharding):
* `attention/wqkv/kernel` is (embed, n_kv_head, q_per_kv + 2, head_dim) with
  logical axes ('embed', 'heads', None, 'kv'): slot [:, j, :g] holds the q
  heads j*g .. j*g+g-1 that share kv head j, [:, j, g] k head j and
  [:, j, g+1] v head j, so splitting 'heads' over 'tensor' gives every shard
  matching q/k/v heads (a flat (embed, (H+2K)*hd) kernel would not); plain
  MHA (g=1) gives (embed, H, 3, hd). The official fused [q | k | v] weight
  maps onto it with a reshape (`conversion/llamagen.py`).
* `attention/wo/kernel` is (heads, head_dim, embed).
* The KV cache holds n_kv_head heads (B, n_kv_head, S_max, head_dim); the
  grouped einsum lets each serve its group of query heads in place, which
  matches LlamaGen's repeat-interleave with a cache n_head / n_kv_head smaller.
  Heads before positions is the layout the attention dots read (batch axes
  b, h leading): in a (B, S_max, heads, hd) cache every decode step would
  transpose the whole cache of every layer, twice.

Attention implementations (`StackConfig.attention`), all over the same
parameters: 'xla' writes out the einsum and the float32 softmax (the default;
reference parity, attention dropout); 'cudnn' is cuDNN's fused flash attention
via `jax.nn.dot_product_attention` (bfloat16/float16, NVIDIA GPUs); 'dot_product'
is that call on JAX's XLA implementation, so the 'cudnn' path runs and is
tested anywhere. The fused kinds apply to teacher-forced passes; KV-cache
prefill and decoding keep the einsum.
"""

import dataclasses
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import layers

Dtype = Any
KVCache = dict[str, jax.Array]

# StackConfig.attention -> `implementation` of jax.nn.dot_product_attention
# ('xla', the written-out einsum, is not in it).
FUSED_ATTENTION = {"dot_product": "xla", "cudnn": "cudnn"}
ATTENTION_KINDS = ("xla", *FUSED_ATTENTION)


def ffn_hidden_dim(dim: int, multiple_of: int = 256,
                   ffn_dim_multiplier: Optional[float] = None) -> int:
  """LLaMA's SwiGLU width: int(8*dim/3), optionally scaled, rounded up to `multiple_of`."""
  hidden = int(2 * 4 * dim / 3)
  if ffn_dim_multiplier is not None:
    hidden = int(ffn_dim_multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def rope_frequencies(num: int, head_dim: int, base: float) -> np.ndarray:
  """`base^(-2j/head_dim)` for j < num, in float32 like the reference."""
  exponents = np.arange(0, head_dim, 2, dtype=np.float32)[:num] / np.float32(head_dim)
  return (1.0 / (np.float32(base) ** exponents)).astype(np.float32)


def cos_sin(angles: np.ndarray) -> np.ndarray:
  """angles (..., P) -> (..., P, 2) with [cos, sin] computed in float32."""
  angles = angles.astype(np.float32)
  return np.stack([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)


def apply_rope(x: jax.Array, table: jax.Array) -> jax.Array:
  """Rotates adjacent pairs (x[2p], x[2p+1]) of x (B,S,H,D) by table (S or B,S, D/2, 2).

  The GPT-J / complex-multiply layout, computed in float32 and cast back.
  """
  table = table.astype(jnp.float32)
  if table.ndim == 3:
    table = table[None]
  cos, sin = table[:, :, None, :, 0], table[:, :, None, :, 1]
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  a, b = pairs[..., 0], pairs[..., 1]
  out = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps), normalised in float32, cast back, then * scale."""
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", layers.ones_init(("norm",)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * scale.astype(x.dtype)


class FeedForward(nn.Module):
  """SwiGLU: w2(silu(w1 x) * w3 x), then dropout."""
  hidden_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    gate = layers.dense(self.hidden_dim, ("embed", "mlp"), name="w1", **kw)(x)
    up = layers.dense(self.hidden_dim, ("embed", "mlp"), name="w3", **kw)(x)
    y = layers.dense(x.shape[-1], ("mlp", "embed"), name="w2", **kw)(nn.silu(gate) * up)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


def _broadcast_mask(mask: Optional[jax.Array], q_len: int, k_len: int) -> jax.Array:
  """Boolean mask (B,Sq,Sk), (B,1,Sq,Sk) or None (causal) -> (B|1, 1, 1, Sq, Sk)."""
  if mask is None:
    mask = jnp.tril(jnp.ones((q_len, k_len), bool))[None]
  if mask.ndim == 4:
    if mask.shape[1] != 1:
      raise ValueError(f"attention mask {mask.shape}: expected one head-broadcast row block")
    mask = mask[:, 0]
  if mask.ndim != 3 or mask.shape[-2:] != (q_len, k_len):
    raise ValueError(f"attention mask {mask.shape}: expected (B, {q_len}, {k_len})")
  return mask.astype(bool)[:, None, None]


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                    implementation: str) -> jax.Array:
  """q (B,S,H,D), k/v (B,Sk,K,D) -> (B,S,H,D) via `jax.nn.dot_product_attention`.

  `mask` as `Attention` (None = causal). Query head h reads kv head h // (H/K),
  the grouping of the fused wqkv layout.
  """
  if mask is None:
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation=implementation)
  allowed = _broadcast_mask(mask, q.shape[1], k.shape[1])[:, :, 0]  # (B|1, 1, S, Sk)
  return jax.nn.dot_product_attention(q, k, v, mask=allowed, implementation=implementation)


class Attention(nn.Module):
  """Causal/masked self-attention with a fused q|k|v projection, GQA and a KV cache."""
  stack: "StackConfig"

  @nn.compact
  def __call__(self, x: jax.Array, rope: jax.Array, mask: Optional[jax.Array] = None,
               cache: Optional[KVCache] = None, cache_index: Any = None, *,
               train: bool = False) -> tuple[jax.Array, Optional[KVCache]]:
    """x (B,S,D); rope (S,hd/2,2) rows of these positions.

    With `cache`, k/v are written at `cache_index` (a traced int) and the
    queries attend over the whole cache; `mask` (B,S,S_max) must then hide the
    unwritten slots. Returns (y, updated cache or None).
    """
    s = self.stack
    n_kv, head_dim = s.kv_heads, s.head_dim
    if s.n_head % n_kv:
      raise ValueError(f"n_head={s.n_head} is not a multiple of n_kv_head={n_kv}")
    group = s.n_head // n_kv
    batch, seq = x.shape[:2]
    qkv = nn.DenseGeneral(
        (n_kv, group + 2, head_dim), axis=-1, use_bias=False, dtype=s.dtype,
        param_dtype=s.param_dtype,
        kernel_init=layers.weight_init(("embed", "heads", None, "kv")),
        dot_general=layers.flat_dot_general, name="wqkv")(x)
    q = qkv[:, :, :, :group].reshape(batch, seq, s.n_head, head_dim)
    k, v = qkv[:, :, :, group], qkv[:, :, :, group + 1]
    q, k = apply_rope(q, rope), apply_rope(k, rope)

    if s.attention in FUSED_ATTENTION and cache is None:
      y = fused_attention(q, k, v, mask, FUSED_ATTENTION[s.attention])
    else:
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, S, D)
      if cache is not None:
        start = (0, 0, cache_index, 0)
        cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                                   start),
                 "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                                   start)}
        k, v = cache["k"].astype(s.dtype), cache["v"].astype(s.dtype)
      # Queries too are laid out heads before positions, (B, K, G, S, D): the two
      # products are then plain batched matrix products, which XLA:CPU runs
      # without transposing the (S, S) scores and their gradients (one layer
      # of GPT-B at batch 8, forward and backward: 117 -> 83 ms). The group
      # axis is left out for plain multi-head attention, where a size-1 axis
      # brings the transposes back.
      q = q.reshape(batch, seq, n_kv, group, head_dim).transpose(0, 2, 3, 1, 4)
      spec = "bhgqd" if group > 1 else "bhqd"
      if group == 1:
        q = q[:, :, 0]

      def attend(q, k, v, allowed):
        scores = jnp.einsum(f"{spec},bhkd->{spec[:-1]}k", q, k,
                            preferred_element_type=jnp.float32)
        scores = scores * (1.0 / np.sqrt(head_dim))
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(s.attn_dropout)(probs, deterministic=not train).astype(s.dtype)
        return jnp.einsum(f"{spec[:-1]}k,bhkd->{spec}", probs, v)

      if cache is None and mask is None and 0 < s.causal_block < seq:
        # Causal: each block of queries attends only the keys up to its last
        # query, skipping the scores above the diagonal that the softmax would
        # zero (GPT-B's attention at batch 8 over 256 positions, forward and
        # backward on a 2-core CPU: 92-124 -> 69-70 ms a layer).
        ys = []
        for start in range(0, seq, s.causal_block):
          end = min(start + s.causal_block, seq)
          allowed = np.arange(start, end)[:, None] >= np.arange(end)[None, :]
          ys.append(attend(q[..., start:end, :], k[:, :, :end], v[:, :, :end], allowed))
        y = jnp.concatenate(ys, axis=-2)
      else:
        allowed = _broadcast_mask(mask, seq, k.shape[2])
        y = attend(q, k, v, allowed[:, :, 0] if group == 1 else allowed)
      y = jnp.moveaxis(y, -2, 1).reshape(batch, seq, s.n_head, head_dim)
    y = layers.attention_out(x.shape[-1], dtype=s.dtype, param_dtype=s.param_dtype,
                             use_bias=False, name="wo")(y)
    return nn.Dropout(s.resid_dropout)(y, deterministic=not train), cache


def drop_path(module: nn.Module, x: jax.Array, rate: Any, train: bool) -> jax.Array:
  """Stochastic depth per sample; `rate` may be traced (a scanned per-layer value)."""
  if not train:
    return x
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class Block(nn.Module):
  """Pre-norm LLaMA block: h + DropPath(Attn(norm(h))); h + DropPath(FFN(norm(h)))."""
  stack: "StackConfig"

  @nn.compact
  def __call__(self, x: jax.Array, rope: jax.Array, mask: Optional[jax.Array],
               cache: Optional[KVCache], cache_index: Any, drop_rate: Any,
               train: bool) -> tuple[jax.Array, Optional[KVCache]]:
    """Positional signature so `nn.scan` / `nn.remat` can wrap it (train is static)."""
    s = self.stack
    kw = dict(dtype=s.dtype, param_dtype=s.param_dtype)
    h = RMSNorm(s.norm_eps, name="attention_norm", **kw)(x)
    h, cache = Attention(s, name="attention")(h, rope, mask, cache, cache_index, train=train)
    use_dp = s.drop_path_rate > 0 and train
    x = x + (drop_path(self, h, drop_rate, train) if use_dp else h)
    h = RMSNorm(s.norm_eps, name="ffn_norm", **kw)(x)
    h = FeedForward(s.ffn_hidden, s.ffn_dropout, name="feed_forward", **kw)(h, train=train)
    x = layers.constrain_activations(x + (drop_path(self, h, drop_rate, train) if use_dp else h))
    self.sow("intermediates", "out", x)
    return x, cache


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """A stack of `n_layer` identical `Block`s and how it is laid out.

  `scan_layers` stacks the blocks' parameters on a leading layer axis under one
  `nn.scan` module (one compiled block instead of n_layer); `remat` recomputes
  each block's activations in the backward pass. `drop_path_rate` grows
  linearly from 0 at the first block to this value at the last. `attention`
  is one of `ATTENTION_KINDS` (see the module docstring). `causal_block`: with
  'xla' attention, a causal pass without a KV cache runs its queries in blocks
  of this many positions, each over the keys up to its last query (0: all
  queries over all keys, the upper triangle masked).
  """
  n_layer: int
  n_head: int
  head_dim: int
  ffn_hidden: int
  n_kv_head: Optional[int] = None
  norm_eps: float = 1e-5
  attn_dropout: float = 0.0
  resid_dropout: float = 0.0
  ffn_dropout: float = 0.0
  drop_path_rate: float = 0.0
  scan_layers: bool = False
  remat: bool = False
  attention: str = "xla"
  causal_block: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.attention not in ATTENTION_KINDS:
      raise ValueError(f"attention={self.attention!r}: expected one of {ATTENTION_KINDS}")
    if self.causal_block < 0:
      raise ValueError(f"causal_block={self.causal_block}: expected 0 (off) or a block size")
    if self.attention in FUSED_ATTENTION and self.attn_dropout:
      raise ValueError(f"attention={self.attention!r} has no attention dropout "
                       f"(attn_dropout={self.attn_dropout}); use attention='xla'")
    if self.attention == "cudnn" and jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"attention='cudnn' needs a bfloat16 or float16 compute dtype, got "
                       f"{jnp.dtype(self.dtype).name}")

  @property
  def kv_heads(self) -> int:
    return self.n_kv_head or self.n_head

  @classmethod
  def of(cls, config: Any, **fields) -> "StackConfig":
    """The stack of a model config: its fields named as ours, then `fields`."""
    own = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
           if hasattr(config, f.name)}
    return cls(**{**own, **fields})


Layers = Union[nn.Module, list]


def build_layers(stack: StackConfig) -> Layers:
  """The blocks of `stack`, to be assigned to `self.layers` in a parent's `setup`.

  Assigned there, the list form is named `layers_{i}` and the scanned form
  `layers` (every parameter with a leading layer axis), the names the
  converters and checkpoints use.
  """
  block = Block
  if stack.remat:
    # Argument 7 (counting self) is the static `train` flag.
    block = nn.remat(block, prevent_cse=not stack.scan_layers, static_argnums=(7,))
  if stack.scan_layers:
    return nn.scan(
        block, variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, 0, nn.broadcast),
        length=stack.n_layer, metadata_params={nn.PARTITION_NAME: None})(stack)
  return [block(stack) for _ in range(stack.n_layer)]


def run_layers(stack: StackConfig, layers: Layers, h: jax.Array, rope: jax.Array,
               mask: Optional[jax.Array], cache: Any, cache_index: Any,
               train: bool) -> tuple[jax.Array, Any]:
  """Runs `build_layers`' blocks on h (B,S,D); arguments as `Attention`.

  `cache` is `init_stack_cache`'s (or None): per layer for the list form,
  stacked for the scanned one. Returns (h, updated cache or None).
  """
  rates = jnp.linspace(0.0, stack.drop_path_rate, stack.n_layer, dtype=jnp.float32)
  if stack.scan_layers:
    return layers(h, rope, mask, cache, cache_index, rates, train)
  new_cache = []
  for i, block in enumerate(layers):
    h, c = block(h, rope, mask, None if cache is None else cache[i], cache_index, rates[i],
                 train)
    new_cache.append(c)
  return h, None if cache is None else tuple(new_cache)


def init_stack_cache(stack: StackConfig, batch: int, max_len: int, dtype: Dtype) -> Any:
  """Zero KV cache for `run_layers`: per layer {'k','v'} (B, kv_heads, max_len, hd).

  A tuple over layers, or (with `scan_layers`) one dict stacked on a leading
  layer axis.
  """
  shape = (batch, stack.kv_heads, max_len, stack.head_dim)
  one = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  if stack.scan_layers:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (stack.n_layer,) + x.shape), one)
  return tuple(one for _ in range(stack.n_layer))


def cache_length(cache: Any) -> int:
  """The number of positions a KV cache holds (its S_max)."""
  return jax.tree.leaves(cache)[0].shape[-2]


def resize_cache(cache: Any, length: int) -> Any:
  """`cache` holding `length` positions: cut, or grown with empty (zero) ones."""
  def resize(c):
    if c.shape[-2] >= length:
      return c[..., :length, :]
    pad = [(0, 0)] * c.ndim
    pad[-2] = (0, length - c.shape[-2])
    return jnp.pad(c, pad)
  return jax.tree.map(resize, cache)


def table_rows(table: np.ndarray, position: Any, count: int) -> jax.Array:
  """Rows position..position+count-1 of a RoPE table (`position` may be traced)."""
  return jax.lax.dynamic_slice_in_dim(jnp.asarray(table), jnp.asarray(position, jnp.int32),
                                      count)


def run_cached(stack: StackConfig, layers: Layers, h: jax.Array, rope: jax.Array,
               prefix_mask: Optional[jax.Array], cache: Any,
               position: Any = 0) -> tuple[jax.Array, Any]:
  """`run_layers` on h (B,S,D) at positions position..position+S-1 through `cache`.

  `position` may be traced; `rope` holds the rows of those S positions
  (`table_rows`) and `prefix_mask` is as in `attention_mask`. Returns (h,
  updated cache).
  """
  pos = jnp.asarray(position, jnp.int32)
  mask = attention_mask(prefix_mask, pos + jnp.arange(h.shape[1]), cache_length(cache))
  return run_layers(stack, layers, h, rope, mask, cache, pos, False)


def attention_mask(prefix_mask: Optional[jax.Array], q_pos: jax.Array,
                   k_len: int) -> jax.Array:
  """allowed[b,i,j] = (j <= q_pos[i] and (j >= T or prefix_mask[b,j])) or j == q_pos[i].

  Causal attention in which the False slots of a padded prefix (B,T) are
  hidden from every other position; a padded slot still sees itself, so no
  row is empty. With `prefix_mask=None` it is plain causal. Returns
  (B|1, len(q_pos), k_len) bool.
  """
  j = jnp.arange(k_len)[None, None, :]
  i = jnp.asarray(q_pos)[None, :, None]
  if prefix_mask is None:
    visible = jnp.ones((1, 1, k_len), bool)
  else:
    prefix_mask = jnp.asarray(prefix_mask).astype(bool)
    pad = jnp.ones((prefix_mask.shape[0], max(k_len - prefix_mask.shape[1], 0)), bool)
    visible = jnp.concatenate([prefix_mask, pad], axis=1)[:, None, :k_len]
  return ((j <= i) & visible) | (j == i)
