"""Classification losses."""

import jax
import jax.numpy as jnp


def proxy_code_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of `logits` (..., V) against int `targets` (...).

  The stage-1 TiTok loss: proxy-code logits vs MaskGIT-VQGAN code ids, averaged
  over batch and positions (torch `CrossEntropyLoss` with mean reduction).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)
  return -jnp.mean(picked)
