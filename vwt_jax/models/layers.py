"""Shared Linen building blocks for the tokenizers and generators.

Every parameter is created through `nn.with_logical_partitioning` so the mesh
rules in `vwt_jax.core.sharding` decide its placement.
"""

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
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


def dense(features, names: Axes, *, dtype: Dtype, param_dtype: Dtype,
          use_bias: bool = True, name: Optional[str] = None) -> nn.Dense:
  """A Linear layer with logical names `names` = (in_axis, out_axis)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=weight_init(names), bias_init=zeros_init(names[-1:]), name=name)


def layer_norm(*, dtype: Dtype, param_dtype: Dtype, epsilon: float = 1e-5,
               name: Optional[str] = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
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


class MultiHeadAttention(nn.Module):
  """Bidirectional (or causal) multi-head self-attention with q/k/v/out biases."""
  num_heads: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, is_causal: bool = False) -> jax.Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads

    def project(name):
      return nn.DenseGeneral(
          (self.num_heads, head_dim), axis=-1, use_bias=self.use_bias,
          dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=weight_init(("embed", "heads", "kv")),
          bias_init=zeros_init(("heads", "kv")), name=name)(x)

    q, k, v = project("query"), project("key"), project("value")
    y = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal)
    return nn.DenseGeneral(
        width, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=weight_init(("heads", "kv", "embed")),
        bias_init=zeros_init(("embed",)), name="out")(y)


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
