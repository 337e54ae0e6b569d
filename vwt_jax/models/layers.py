"""Shared Linen building blocks for the tokenizers and generators.

Every parameter is created through `nn.with_logical_partitioning` so the mesh
rules in `vwt_jax.core.sharding` decide its placement.
"""

import dataclasses
import math
import typing
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
# The fields of a config dataclass that hold dtypes (by name in JSON).
DTYPE_FIELDS = ("dtype", "param_dtype")
Axes = Sequence[Optional[str]]

# transformers' ACT2FN names used by the BERT/MPNet, T5 and CLIP configs we read.
HF_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": nn.silu,
    "swish": nn.silu,
}


def check_sizes(config: Any, width: str, heads: str, activation: Optional[str] = None) -> None:
  """Config check: field `heads` divides field `width`, field `activation` is known."""
  owner = type(config).__name__
  if getattr(config, width) % getattr(config, heads):
    raise ValueError(f"{owner}: {width}={getattr(config, width)} is not divisible by "
                     f"{heads}={getattr(config, heads)}")
  if activation and getattr(config, activation) not in HF_ACTIVATIONS:
    raise ValueError(f"{owner}.{activation}={getattr(config, activation)!r}: expected one of "
                     f"{sorted(HF_ACTIVATIONS)}")


def variant(table: Mapping[str, Any], name: str, what: str) -> Any:
  """`table[name]`, else a ValueError listing the known `what` variants."""
  if name not in table:
    raise ValueError(f"unknown {what} variant {name!r}; expected one of {sorted(table)}")
  return table[name]


def config_to_dict(config: Any) -> dict[str, Any]:
  """A (nested) config dataclass's fields, JSON-ready: dtypes by name."""
  out = {}
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if dataclasses.is_dataclass(value):
      value = config_to_dict(value)
    elif f.name in DTYPE_FIELDS:
      value = jnp.dtype(value).name
    out[f.name] = value
  return out


def config_from_dict(cls, values: Mapping[str, Any]) -> Any:
  """`cls` from `config_to_dict` output: nested dataclasses and dtypes read back."""
  hints = typing.get_type_hints(cls)
  fields = {}
  for key, value in values.items():
    if dataclasses.is_dataclass(hints.get(key)):
      value = config_from_dict(hints[key], value)
    elif key in DTYPE_FIELDS:
      value = jnp.dtype(value)
    fields[key] = value
  return cls(**fields)


def require_fields(config: Mapping[str, Any], names: Sequence[str], source: str) -> None:
  """Raises ValueError naming the `names` that `config` (read from `source`) lacks."""
  absent = [k for k in names if k not in config]
  if absent:
    raise ValueError(f"{source}: missing fields {absent}")


# torch's trunc_normal_(std=0.02) truncates at +-2 *absolute*, i.e. ~100 std,
# so the official init is effectively an untruncated normal.
WEIGHT_STDDEV = 0.02


class _Named(nn.LogicallyPartitioned):
  """Logical axis names whose sharding constraint waits for the value's final rank.

  `nn.DenseGeneral` creates a multi-axis kernel or bias flat and unboxes it
  once before reshaping; under a mesh, a constraint with the final names
  would then be applied to the flat value and fail.
  """

  def unbox(self, apply_constraint=True):
    return super().unbox(apply_constraint and jnp.ndim(self.value) == len(self.names))


def _named(init, names: Axes):
  return lambda *args, **kwargs: _Named(init(*args, **kwargs), tuple(names))


def weight_init(names: Axes):
  return _named(nn.initializers.normal(WEIGHT_STDDEV), names)


def zeros_init(names: Axes):
  return _named(nn.initializers.zeros_init(), names)


def ones_init(names: Axes):
  return _named(nn.initializers.ones_init(), names)


def scaled_normal_init(scale: float, names: Axes):
  """`scale * randn`, the init of class/positional embeddings and latent tokens."""
  return _named(nn.initializers.normal(scale), names)


# Logical names of a transformer's (batch, length, width) activations; the
# config's rules map them onto the mesh (`core/sharding.py`).
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def constrain_activations(x: jax.Array) -> jax.Array:
  """States the layout of a block's (B, L, D) output: rows over the data axes.

  Without it, FSDP or tensor-parallel parameter shardings leave XLA to guess
  the activations' layout from the weights; outside a mesh it is a no-op.
  """
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


def flat_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                     preferred_element_type=None) -> jax.Array:
  """`lax.dot_general` of a layer's input and kernel, as one 2-D product.

  The input's leading (batch, length, ...) axes are merged into one, and so
  are the contracted and the output axes of the kernel. The forward product
  is the same either way, but the weight gradient differs: from a 3-D input
  it contracts two axes, and XLA:CPU then writes the output gradient out
  transposed (a strided copy that took a quarter of GPT-B's training step on
  CPU); from the 2-D one it is a plain transposed-operand product. Anything
  that is not an input-times-kernel product goes to `lax.dot_general` as is.
  """
  (lhs_contract, rhs_contract), batch = dimension_numbers
  n = len(lhs_contract)
  kept = lhs.ndim - n
  if (any(batch) or kept < 2 or tuple(lhs_contract) != tuple(range(kept, lhs.ndim))
      or tuple(rhs_contract) != tuple(range(n))):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  contracted = math.prod(rhs.shape[:n])
  y = jax.lax.dot_general(lhs.reshape(-1, contracted), rhs.reshape(contracted, -1),
                          (((1,), (0,)), ((), ())), precision=precision,
                          preferred_element_type=preferred_element_type)
  return y.reshape(lhs.shape[:kept] + rhs.shape[n:])


def dense(features, names: Axes, *, dtype: Dtype, param_dtype: Dtype,
          use_bias: bool = True, name: Optional[str] = None) -> nn.Dense:
  """A Linear layer with logical names `names` = (in_axis, out_axis)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=weight_init(names), bias_init=zeros_init(names[-1:]),
      dot_general=flat_dot_general, name=name)


def conv(features: int, kernel: int, names: Axes, *, dtype: Dtype, param_dtype: Dtype,
         **kwargs) -> nn.Conv:
  """A square nn.Conv with logical names `names` = (h, w, in_axis, out_axis)."""
  return nn.Conv(features, (kernel, kernel), dtype=dtype, param_dtype=param_dtype,
                 kernel_init=weight_init(names), bias_init=zeros_init(names[-1:]), **kwargs)


def layer_norm(*, dtype: Dtype, param_dtype: Dtype, epsilon: float = 1e-5,
               name: Optional[str] = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
      scale_init=ones_init(("norm",)),
      bias_init=zeros_init(("norm",)), name=name)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[L, L] bidirectional bucket id of key position k seen from query position q.

  Keys after the query use the upper half of the buckets. Within a half,
  offsets below a quarter of `num_buckets` get their own bucket; larger ones
  share log-spaced buckets up to `max_distance`, beyond which all fall into
  the last. The log branch runs in float32 like the reference's torch ops, so
  ids at the log boundaries agree exactly.
  """
  pos = np.arange(length)
  offset = pos[None, :] - pos[:, None]  # key - query
  half = num_buckets // 2
  max_exact = half // 2
  distance = np.abs(offset)
  scaled = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(half - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return (offset > 0).astype(np.int64) * half + np.where(distance < max_exact, distance, large)


def project_qkv(x: jax.Array, context: jax.Array, num_heads: int, head_dim: int, *,
                dtype: Dtype, param_dtype: Dtype, use_bias: bool = True,
                names: Sequence[str] = ("query", "key", "value")):
  """q from `x`, k and v from `context`: (B, L, heads, head_dim) each.

  Created in the calling module, so the parameters `names` sit directly under it.
  """
  def project(name, y):
    return nn.DenseGeneral(
        (num_heads, head_dim), axis=-1, use_bias=use_bias, dtype=dtype,
        param_dtype=param_dtype, kernel_init=weight_init(("embed", "heads", "kv")),
        bias_init=zeros_init(("heads", "kv")), dot_general=flat_dot_general, name=name)(y)

  return project(names[0], x), project(names[1], context), project(names[2], context)


def attention_out(width: int, *, dtype: Dtype, param_dtype: Dtype, use_bias: bool = True,
                  name: str = "out") -> nn.DenseGeneral:
  """The projection (B, L, heads, head_dim) -> (B, L, width) after attention."""
  return nn.DenseGeneral(
      width, axis=(-2, -1), use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=weight_init(("heads", "kv", "embed")), bias_init=zeros_init(("embed",)),
      dot_general=flat_dot_general, name=name)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
                     bias: Optional[jax.Array] = None, *, scaled: bool = True) -> jax.Array:
  """transformers' eager attention with float32 logits, a bias and a (B, L) key mask.

  Logits / sqrt(head_dim) unless not `scaled` (T5 folds that into its init);
  padded keys get the most negative float; probabilities are cast to v's dtype.
  """
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  if scaled:
    scores = scores / math.sqrt(q.shape[-1])
  if bias is not None:
    scores = scores + bias
  scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          is_causal: bool = False) -> jax.Array:
  """q (B, L, H, D) over k, v (B, N, H, D) -> (B, L, H, D), as the XLA
  implementation of `jax.nn.dot_product_attention` computes it: float32
  logits scaled by 1/sqrt(D), a float32 softmax, probabilities cast to v's
  dtype.

  The heads are moved before the positions first, so that both products are
  plain batched matrix products: XLA:CPU otherwise transposes the (L, N)
  logits and their gradients (12 heads of 64, 8 × 256 tokens, 2-core CPU:
  51 -> 27 ms forward, 105 -> 84 ms with the backward pass).
  """
  q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(1.0 / math.sqrt(q.shape[-1]))
  if is_causal:
    allowed = jnp.tril(jnp.ones(logits.shape[-2:], bool))
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", probs, v), 1, 2)


def relative_position_bias(module: nn.Module, table_size: int, num_heads: int,
                           buckets: np.ndarray) -> jax.Array:
  """[1, heads, L, L] bias of [L, L] `buckets` from `module`'s 'relative_attention_bias'."""
  table = module.param(
      "relative_attention_bias",
      nn.with_logical_partitioning(nn.initializers.normal(WEIGHT_STDDEV), (None, "heads")),
      (table_size, num_heads), jnp.float32)
  return jnp.transpose(table[buckets], (2, 0, 1))[None]


class MultiHeadAttention(nn.Module):
  """Multi-head attention with q/k/v/out biases: self- (optionally causal) or cross-."""
  num_heads: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: Optional[jax.Array] = None, *,
               is_causal: bool = False) -> jax.Array:
    """Queries from x (B, L, D), keys and values from `context` (B, N, D), else x."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias)
    q, k, v = project_qkv(x, x if context is None else context, self.num_heads,
                          width // self.num_heads, **kw)
    y = dot_product_attention(q, k, v, is_causal=is_causal)
    return attention_out(width, **kw)(y)


class Mlp(nn.Module):
  """Dense -> exact (erf) GELU -> Dense, as open_clip / ViT."""
  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.hidden_dim, ("embed", "mlp"), name="c_fc", **kw)(x)
    h = nn.gelu(h, approximate=False)
    return dense(x.shape[-1], ("mlp", "embed"), name="c_proj", **kw)(h)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  ln_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    h = layer_norm(epsilon=self.ln_epsilon, name="ln_1", **kw)(x)
    x = x + MultiHeadAttention(self.num_heads, name="attn", **kw)(h)
    h = layer_norm(epsilon=self.ln_epsilon, name="ln_2", **kw)(x)
    return constrain_activations(x + Mlp(int(width * self.mlp_ratio), name="mlp", **kw)(h))


def abstract_params(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
  """The boxed parameter tree of `module.init(key, *args, **kwargs)`, by shape only."""
  return jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)["params"]


def abstract_text_encoder_params(module: nn.Module, length: int = 8) -> Any:
  """The boxed parameter tree of `module`(input_ids, attention_mask), by shape only."""
  ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
  return abstract_params(module, ids, ids)
