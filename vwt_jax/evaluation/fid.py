"""Feature statistics and the Frechet distance of the ADM evaluator (FID, sFID).

Statistics are float64 on the host: `mu` = mean, `sigma` = covariance with
ddof=1 (np.cov semantics). The Frechet step follows the ADM/TTUR recipe with
`scipy.linalg.sqrtm` in float64; a float32 matrix square root would move FID
in the 4th digit.
"""

import warnings
from typing import NamedTuple, Optional

import numpy as np
from scipy import linalg


class Statistics(NamedTuple):
  """Mean [D] and covariance [D, D] of a feature set."""
  mu: np.ndarray
  sigma: np.ndarray


class FeatureStatistics:
  """Streaming mean/covariance of feature rows, mergeable across hosts.

  Rows are accumulated relative to a shift (the mean of the first batch seen),
  so `sum(x x^T) - n mu mu^T` does not cancel catastrophically when the
  features have a large common offset (pool_3 activations are all positive).
  """

  def __init__(self, dim: int):
    self.dim = int(dim)
    self.count = 0
    self.shift: Optional[np.ndarray] = None
    self.sum = np.zeros([self.dim], np.float64)
    self.sum_outer = np.zeros([self.dim, self.dim], np.float64)

  def update(self, batch: np.ndarray) -> "FeatureStatistics":
    """Adds the rows of a [B, dim] batch; returns self."""
    x = np.asarray(batch, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"FeatureStatistics(dim={self.dim}) got a batch of shape {x.shape}; "
                       f"expected [B, {self.dim}]")
    if not len(x):
      return self
    if self.shift is None:
      self.shift = x.mean(axis=0)
    centred = x - self.shift
    self.count += len(x)
    self.sum += centred.sum(axis=0)
    self.sum_outer += centred.T @ centred
    return self

  def merge(self, other: "FeatureStatistics") -> "FeatureStatistics":
    """Adds another accumulator's rows (e.g. another host's partial); returns self."""
    if other.dim != self.dim:
      raise ValueError(f"cannot merge FeatureStatistics of dim {other.dim} into dim {self.dim}")
    if other.count == 0:
      return self
    if self.shift is None:
      self.shift = other.shift.copy()
    # Re-express the other's sums relative to our shift: x - s = (x - s') + d.
    d = other.shift - self.shift
    self.sum_outer += (other.sum_outer + np.outer(other.sum, d) + np.outer(d, other.sum)
                       + other.count * np.outer(d, d))
    self.sum += other.sum + other.count * d
    self.count += other.count
    return self

  @classmethod
  def from_activations(cls, activations: np.ndarray, chunk: int = 4096) -> "FeatureStatistics":
    """Statistics of a whole [N, D] array, accumulated in chunks to bound memory."""
    activations = np.asarray(activations)
    stats = cls(activations.shape[1])
    for begin in range(0, len(activations), chunk):
      stats.update(activations[begin:begin + chunk])
    return stats

  @property
  def mu(self) -> np.ndarray:
    self._require(1)
    return self.shift + self.sum / self.count

  @property
  def sigma(self) -> np.ndarray:
    self._require(2)
    centred_mean = self.sum / self.count
    return (self.sum_outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)

  def statistics(self) -> Statistics:
    return Statistics(self.mu, self.sigma)

  def _require(self, n: int) -> None:
    if self.count < n:
      raise ValueError(f"FeatureStatistics needs at least {n} rows, has {self.count}")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  """ADM's Frechet distance; pass the SAMPLE statistics first, like ADM.

  |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)). If the square root is
  not finite, eps is added to both diagonals and it is retried; a complex
  square root is accepted only when its diagonal's imaginary part is within
  1e-3 of zero.
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape:
    raise ValueError(f"FID: mean vectors have different shapes {mu1.shape} and {mu2.shape}")
  if sigma1.shape != sigma2.shape:
    raise ValueError(f"FID: covariances have different shapes {sigma1.shape} and {sigma2.shape}")
  diff = mu1 - mu2
  # Only the root matrix is used: SciPy >= 1.16 computes it the same with or
  # without `disp` (which is deprecated there), so `disp` is not passed.
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals")
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FID: sqrtm has an imaginary component of "
                       f"{np.max(np.abs(covmean.imag)):g} (> 1e-3 on the diagonal)")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
