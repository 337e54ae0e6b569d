"""The bridge from per-frame vision features to LLM input tokens.

features (B, T, N, Dv) (T frames of N vision tokens each) -> tokens
(B, T * Q, out_dim), frame-major, so the LLM reads the frames in order:
* 'linear': one dense per vision token (Q = N), LLaVA-1's projector.
* 'mlp': dense -> exact GELU -> dense (Q = N), LLaVA-1.5's `mlp2x_gelu`.
* 'resampler': a Q-Former-like query resampler (Q = num_queries): learned
  queries (Q, Dv) cross-attend to each frame's N tokens through `num_layers`
  pre-LN blocks, then a final LayerNorm and a dense to out_dim. With
  `temporal_embedding` a learned per-frame vector (up to `max_frames`) is
  added to the queries, so a frame's tokens know its index.

Logical axes: 'embed' is the vision width Dv, as in the tower; the LLM width
out_dim is named 'mlp' as the output of the first dense (column-parallel),
and the square second dense of 'mlp' is ('mlp', None): one name cannot shard
two axes of a kernel.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers

Dtype = Any
KINDS = ("linear", "mlp", "resampler")


class ResamplerBlock(nn.Module):
  """q + attn(LN(q), LN(context)); q + MLP(LN(q))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, context: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.layer_norm(name="ln_query", **kw)(queries)
    context = layers.layer_norm(name="ln_context", **kw)(context)
    queries = queries + layers.MultiHeadAttention(self.num_heads, name="cross_attn", **kw)(
        h, context)
    h = layers.layer_norm(name="ln_mlp", **kw)(queries)
    return queries + layers.Mlp(int(queries.shape[-1] * self.mlp_ratio), name="mlp", **kw)(h)


class Projector(nn.Module):
  """Per-frame vision features (B, T, N, Dv) -> LLM tokens (B, T * Q, out_dim).

  Returns `(tokens, {})`; `tokens_per_frame(N)` gives Q.
  """
  kind: str
  out_dim: int
  num_queries: int = 32
  num_layers: int = 2
  num_heads: int = 8
  max_frames: int = 64
  temporal_embedding: bool = True
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def tokens_per_frame(self, num_vision_tokens: int) -> int:
    """Q: the LLM tokens one frame of `num_vision_tokens` features becomes."""
    return self.num_queries if self.kind == "resampler" else num_vision_tokens

  @nn.compact
  def __call__(self, features: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    if self.kind not in KINDS:
      raise ValueError(f"Projector.kind={self.kind!r}: expected one of {KINDS}")
    if features.ndim != 4:
      raise ValueError(f"features {features.shape}: expected (B, T, N, Dv)")
    batch, frames, num_tokens, width = features.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = features.astype(self.dtype)

    if self.kind == "linear":
      x = layers.dense(self.out_dim, ("embed", "mlp"), name="proj", **kw)(x)
    elif self.kind == "mlp":
      x = layers.dense(self.out_dim, ("embed", "mlp"), name="fc1", **kw)(x)
      x = nn.gelu(x, approximate=False)
      x = layers.dense(self.out_dim, ("mlp", None), name="fc2", **kw)(x)
    else:
      x = self._resample(x.reshape(batch * frames, num_tokens, width), frames)
    q = self.tokens_per_frame(num_tokens)
    return x.reshape(batch, frames * q, self.out_dim), {}

  def _resample(self, context: jax.Array, frames: int) -> jax.Array:
    """context (B*T, N, Dv), frame-major within each batch row -> (B*T, Q, out_dim)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = context.shape[-1]
    queries = self.param("queries", layers.weight_init(("length", "embed")),
                         (self.num_queries, width), self.param_dtype)
    queries = jnp.broadcast_to(queries.astype(self.dtype), (frames, self.num_queries, width))
    if self.temporal_embedding:
      if frames > self.max_frames:
        raise ValueError(f"{frames} frames exceed the {self.max_frames} of the temporal "
                         "embedding (Projector.max_frames)")
      table = self.param("frame_embedding", layers.weight_init(("length", "embed")),
                         (self.max_frames, width), self.param_dtype)
      queries = queries + table[:frames, None].astype(self.dtype)
    batch = context.shape[0] // frames
    x = jnp.tile(queries, (batch, 1, 1))  # row b * T + t holds frame t's queries
    for i in range(self.num_layers):
      x = ResamplerBlock(self.num_heads, self.mlp_ratio, name=f"blocks_{i}", **kw)(x, context)
    x = layers.layer_norm(name="ln_out", **kw)(x)
    return layers.dense(self.out_dim, ("embed", "mlp"), name="proj", **kw)(x)
