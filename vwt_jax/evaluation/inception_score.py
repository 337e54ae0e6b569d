"""Inception Score as the ADM evaluator computes it (improved-gan recipe).

The class probabilities come from pool_3 times the graph's 2048x1008
`softmax/logits` weight WITHOUT its bias, then a softmax. Scoring runs in the
dtype of the probabilities (float32 in ADM) with no epsilon in the logs.
"""

import jax
import jax.numpy as jnp
import numpy as np

ADM_SPLIT_SIZE = 5000


@jax.jit
def _softmax_unbiased(pool: jax.Array, weight: jax.Array) -> jax.Array:
  logits = jnp.dot(pool, weight, precision=jax.lax.Precision.HIGHEST)
  return jax.nn.softmax(logits, axis=-1)


def class_probabilities(pool: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """softmax(pool @ weight) in float32: [N, 2048] x [2048, C] -> [N, C]."""
  pool, weight = np.asarray(pool, np.float32), np.asarray(weight, np.float32)
  if pool.ndim != 2 or weight.ndim != 2 or pool.shape[1] != weight.shape[0]:
    raise ValueError(f"class_probabilities: pool {pool.shape} and weight {weight.shape} "
                     "do not multiply as [N, D] x [D, C]")
  return np.asarray(_softmax_unbiased(pool, weight))


def inception_score(probs: np.ndarray, split_size: int = ADM_SPLIT_SIZE) -> float:
  """Mean over consecutive `split_size` chunks (the last may be short) of
  exp(mean_i KL(p_i || mean_j p_j)); the std over splits is not reported."""
  probs = np.asarray(probs)
  if probs.ndim != 2 or not len(probs):
    raise ValueError(f"inception_score expects [N, classes] probabilities, got {probs.shape}")
  if split_size < 1:
    raise ValueError(f"inception_score: split_size must be positive, got {split_size}")
  scores = []
  for begin in range(0, len(probs), split_size):
    part = probs[begin:begin + split_size]
    marginal = np.mean(part, axis=0, keepdims=True)
    kl = np.sum(part * (np.log(part) - np.log(marginal)), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores))
