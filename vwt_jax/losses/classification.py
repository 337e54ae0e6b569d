"""Classification losses."""

import jax
import jax.numpy as jnp


def proxy_code_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of `logits` (..., V) against int `targets` (...).

  The stage-1 TiTok loss: proxy-code logits vs MaskGIT-VQGAN code ids, averaged
  over batch and positions (torch `CrossEntropyLoss` with mean reduction).
  """
  return jnp.mean(_token_nll(logits, targets))


def _token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-position -log softmax(logits)[target], float32 (...)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_cross_entropy(logits: jax.Array, targets: jax.Array,
                        valid: jax.Array | None = None) -> jax.Array:
  """Next-token cross-entropy of `logits` (B, L, V) against int `targets` (B, L).

  Without `valid`: the mean over all positions. With a per-sample `valid`
  (B,) weight (LlamaGen t2i), Σ(CE·valid) / max(Σvalid, 1) where both sums run
  over every position, so invalid samples contribute nothing.
  """
  if valid is None:
    return jnp.mean(_token_nll(logits, targets))
  weights = jnp.broadcast_to(jnp.asarray(valid, jnp.float32)[:, None], targets.shape)
  return masked_token_cross_entropy(logits, targets, weights)


def masked_token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                               num_tokens: jax.Array | float | None = None) -> jax.Array:
  """Σ CE·mask / num_tokens over `logits` (B, L, V), int `targets` and bool `mask` (B, L).

  `num_tokens` defaults to max(Σmask, 1), the mean over the masked tokens.
  Given the token count of a whole global batch (divided by the number of
  micro-batches), micro-batch losses average to the mean over all its
  tokens; 1 gives the sum.
  """
  mask = jnp.asarray(mask, jnp.float32)
  if num_tokens is None:
    num_tokens = jnp.maximum(jnp.sum(mask), 1.0)
  return jnp.sum(_token_nll(logits, targets) * mask) / num_tokens
