"""Masked-token objective of TiTok's MaskGIT generator training.

Official recipe (`configs/training/generator/maskgit.yaml`, `maskgit.py:195-206`,
`losses.py:358-376`): per sample a masking ratio from the arccos schedule at
`t ~ U(0,1)`, masked ids set to the mask token, a forward with class-label
dropout 0.1 (CFG), and a label-smoothed cross-entropy against the original
tokens weighted 1 on masked and 0.1 on unmasked positions.

The official model draws the label dropout inside its `forward`; here
`label_drop_mask` draws it and the model takes it as `drop_labels`, so that
the model stays a pure function of its inputs.
"""

import jax
import jax.numpy as jnp

from vwt_jax.models.maskgit_generator import arccos_mask_ratio

CLASS_LABEL_DROPOUT = 0.1
LABEL_SMOOTHING = 0.1
UNMASKED_TOKEN_WEIGHT = 0.1
_MIN_MASK_RATIO = 1e-6
_WEIGHT_EPS = 1e-8


def mask_tokens(rng: jax.Array, tokens: jax.Array,
                mask_token_id: int) -> tuple[jax.Array, jax.Array]:
  """Masks a random arccos-scheduled subset of each sequence of `tokens` (B, L).

  Returns (masked_tokens (B, L) int32, holding `mask_token_id` (the codebook
  size) at the masked positions, mask (B, L) bool). Row b has exactly
  `max(1, round(L * clip(arccos(t_b) / (pi/2), 1e-6, 1)))` masked positions.
  """
  batch, length = tokens.shape
  t_rng, perm_rng = jax.random.split(rng)
  ratio = jnp.clip(arccos_mask_ratio(jax.random.uniform(t_rng, (batch,))), _MIN_MASK_RATIO, 1.0)
  num_masked = jnp.maximum(jnp.round(length * ratio), 1.0)
  # A uniformly random permutation per row (as the official code): exactly
  # `num_masked` positions hold a value below `num_masked`.
  perm = jnp.argsort(jax.random.uniform(perm_rng, (batch, length)), axis=-1)
  mask = perm < num_masked[:, None]
  return jnp.where(mask, mask_token_id, tokens.astype(jnp.int32)), mask


def label_drop_mask(rng: jax.Array, batch_size: int,
                    drop_prob: float = CLASS_LABEL_DROPOUT) -> jax.Array:
  """(B,) bool: which class labels become the null class (the model's `drop_labels`)."""
  return jax.random.uniform(rng, (batch_size,)) < drop_prob


def masked_token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, *,
                      label_smoothing: float = LABEL_SMOOTHING,
                      unmasked_weight: float = UNMASKED_TOKEN_WEIGHT
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted label-smoothed cross-entropy (the official `MLMLoss`).

  Args:
    logits: (B, L, K) generator logits.
    targets: (B, L) original (unmasked) token ids.
    mask: (B, L) bool, True where the input was masked.
    label_smoothing: torch `CrossEntropyLoss(label_smoothing=...)` semantics
      (mass spread uniformly over all K classes, the target included).
    unmasked_weight: per-token weight of unmasked positions (masked ones get 1).

  Returns:
    (loss, metrics) with metrics `loss` and `correct_tokens` (per-sample
    accuracy on masked positions, averaged over the batch).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  per_token = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
  weights = mask.astype(jnp.float32)
  token_weights = (1.0 - weights) * unmasked_weight + weights
  loss = jnp.sum(per_token * token_weights) / (jnp.sum(token_weights) + _WEIGHT_EPS)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
  accuracy = jnp.sum(correct, axis=1) / (jnp.sum(weights, axis=1) + _WEIGHT_EPS)
  return loss, {"loss": loss, "correct_tokens": jnp.mean(accuracy)}
