"""Improved precision/recall (Kynkaanniemi et al. 2019) as the ADM evaluator runs it.

Each set's manifold is the union of balls around its points whose SQUARED
radius is the distance to the k-th nearest neighbour (the point itself being
neighbour 0). Precision is the fraction of samples inside the reference
manifold, recall the fraction of references inside the sample manifold.

Distances follow ADM's TF `DistanceBlock`: max(|u|^2 - 2 u.v + |v|^2, 0) with
every intermediate rounded to float16, and a block with a non-finite entry
recomputed whole in float32. The rounding is emulated with `reduce_precision`
on float32 values, so XLA's excess-precision rewrites cannot remove it and an
overflow becomes inf exactly as in float16.
"""

import collections
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ADM_BATCH_SIZE = 10000
ADM_NHOOD_SIZES = (3,)


def _to_fp16(x: jax.Array) -> jax.Array:
  return jax.lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10)


def _squared_distances(u: jax.Array, v: jax.Array, half: bool) -> jax.Array:
  rnd = _to_fp16 if half else (lambda x: x)
  u, v = rnd(u), rnd(v)
  norm_u = rnd(jnp.sum(rnd(u * u), axis=1))[:, None]
  norm_v = rnd(jnp.sum(rnd(v * v), axis=1))[None, :]
  # float16 inputs are exact in every float32 matmul mode, so only the
  # accumulation order differs from TF; HIGHEST keeps TPUs off bfloat16.
  uv = rnd(jnp.dot(u, v.T, precision=jax.lax.Precision.HIGHEST))
  return jnp.maximum(rnd(rnd(norm_u - rnd(2.0 * uv)) + norm_v), 0.0)


def _distance_block(u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(distances, whether the block fell back to float32)."""
  d16 = _squared_distances(u, v, half=True)
  fallback = jnp.logical_not(jnp.all(jnp.isfinite(d16)))
  d = jax.lax.cond(fallback, lambda: _squared_distances(u, v, half=False), lambda: d16)
  return d, fallback


_pairwise_distances = jax.jit(_distance_block)


def pairwise_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """ADM `DistanceBlock.pairwise_distances`: [Nu, D] x [Nv, D] -> float32 [Nu, Nv]."""
  d, _ = _pairwise_distances(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32))
  return np.asarray(d)


def uses_float32(u: np.ndarray, v: np.ndarray) -> bool:
  """Whether ADM's distance block for (u, v) falls back to float32 (float16 overflowed)."""
  _, fallback = _pairwise_distances(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32))
  return bool(fallback)


@functools.partial(jax.jit, static_argnames="k")
def _smallest_in_block(u: jax.Array, v: jax.Array, num_v: jax.Array, k: int):
  """The k smallest distances of each row to the first `num_v` columns, ascending."""
  d, fallback = _distance_block(u, v)
  d = jnp.where(jnp.arange(v.shape[0])[None, :] < num_v, d, jnp.inf)
  return -jax.lax.top_k(-d, k)[0], fallback


@jax.jit
def _inside_block(u, radii_u, v, radii_v):
  d, fallback = _distance_block(u, v)
  d = d[:, :, None]
  u_in = jnp.any(d <= radii_v[None, :, :], axis=1)
  v_in = jnp.any(d <= radii_u[:, None, :], axis=0)
  return u_in, v_in, fallback


def _padded(x: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
  """`x` with rows of `fill` appended up to `size` rows.

  Every block then has one shape, so each jitted function compiles once per
  call. A zero row's distances are the other rows' squared norms, which
  overflow float16 only when those rows' real distances overflow too, so
  padding never changes the float16/float32 choice; its results are masked
  or dropped.
  """
  if len(x) == size:
    return x
  return np.concatenate([x, np.full((size - len(x),) + x.shape[1:], fill, x.dtype)])


def _check_features(name: str, features: np.ndarray) -> None:
  if features.ndim != 2:
    raise ValueError(f"{name} must be [N, D] features, got shape {features.shape}")


class ManifoldEstimator:
  """ADM's `ManifoldEstimator` with `clamp_to_percentile=None` (radius pruning off).

  Batch sizes only matter through the per-block float16/float32 choice; ADM
  uses 10000 rows x 10000 columns. `block_counts` counts the distance blocks
  computed in 'float16' and 'float32' (after an overflow) over all calls.
  """

  def __init__(self, row_batch_size: int = ADM_BATCH_SIZE, col_batch_size: int = ADM_BATCH_SIZE,
               nhood_sizes: Sequence[int] = ADM_NHOOD_SIZES):
    self.row_batch_size = int(row_batch_size)
    self.col_batch_size = int(col_batch_size)
    self.nhood_sizes = tuple(int(k) for k in nhood_sizes)
    self.block_counts = collections.Counter()

  def _count(self, fallback) -> None:
    self.block_counts["float32" if bool(fallback) else "float16"] += 1

  def manifold_radii(self, features: np.ndarray) -> np.ndarray:
    """Squared k-NN radius of every row for each nhood size: float32 [N, len(nhood_sizes)]."""
    features = np.asarray(features, np.float32)
    _check_features("manifold_radii features", features)
    num = len(features)
    need = max(self.nhood_sizes) + 1
    if num < need:
      raise ValueError(f"manifold_radii needs more than {need - 1} feature rows for "
                       f"nhood_sizes={self.nhood_sizes}, got {num}")
    rows_size, cols_size = min(self.row_batch_size, num), min(self.col_batch_size, num)
    k = min(need, cols_size)
    radii = np.zeros([num, len(self.nhood_sizes)], np.float32)
    for begin1 in range(0, num, rows_size):
      rows = features[begin1:begin1 + rows_size]
      u = jnp.asarray(_padded(rows, rows_size))
      # The `need` smallest of a row are among the union of each column
      # block's `need` smallest, so the full [rows, N] matrix never exists.
      candidates = []
      for begin2 in range(0, num, cols_size):
        cols = features[begin2:begin2 + cols_size]
        smallest, fallback = _smallest_in_block(u, jnp.asarray(_padded(cols, cols_size)),
                                                len(cols), k)
        self._count(fallback)
        candidates.append(np.asarray(smallest)[:len(rows)])
      nearest = np.sort(np.concatenate(candidates, axis=1), axis=1)
      radii[begin1:begin1 + len(rows)] = nearest[:, list(self.nhood_sizes)]
    return radii

  def evaluate_pr(self, features_1: np.ndarray, radii_1: np.ndarray, features_2: np.ndarray,
                  radii_2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of set 2 inside manifold 1, fraction of set 1 inside manifold 2), per k.

    With set 1 = reference and set 2 = samples this is (precision, recall).
    """
    features_1, radii_1, features_2, radii_2 = (
        np.asarray(a, np.float32) for a in (features_1, radii_1, features_2, radii_2))
    _check_features("evaluate_pr features_1", features_1)
    _check_features("evaluate_pr features_2", features_2)
    rows_size = min(self.row_batch_size, len(features_1))
    cols_size = min(self.col_batch_size, len(features_2))
    status_1 = np.zeros([len(features_1), radii_2.shape[1]], bool)
    status_2 = np.zeros([len(features_2), radii_1.shape[1]], bool)
    for b1 in range(0, len(features_1), rows_size):
      n1 = len(features_1[b1:b1 + rows_size])
      x1 = jnp.asarray(_padded(features_1[b1:b1 + n1], rows_size))
      # A -inf radius contains nothing, so padded points never count.
      r1 = jnp.asarray(_padded(radii_1[b1:b1 + n1], rows_size, -np.inf))
      for b2 in range(0, len(features_2), cols_size):
        n2 = len(features_2[b2:b2 + cols_size])
        in_1, in_2, fallback = _inside_block(
            x1, r1, jnp.asarray(_padded(features_2[b2:b2 + n2], cols_size)),
            jnp.asarray(_padded(radii_2[b2:b2 + n2], cols_size, -np.inf)))
        self._count(fallback)
        status_1[b1:b1 + n1] |= np.asarray(in_1)[:n1]
        status_2[b2:b2 + n2] |= np.asarray(in_2)[:n2]
    return status_2.astype(np.float64).mean(axis=0), status_1.astype(np.float64).mean(axis=0)


def precision_recall(ref: np.ndarray, samples: np.ndarray,
                     estimator: Optional[ManifoldEstimator] = None) -> tuple[float, float]:
  """ADM `compute_prec_recall(ref_pool3, sample_pool3)` -> (precision, recall) for k=3.

  `estimator` defaults to ADM's settings (10000/10000 blocks, k=3).
  """
  estimator = estimator or ManifoldEstimator()
  radii_ref = estimator.manifold_radii(ref)
  radii_sample = estimator.manifold_radii(samples)
  precision, recall = estimator.evaluate_pr(ref, radii_ref, samples, radii_sample)
  return float(precision[0]), float(recall[0])
