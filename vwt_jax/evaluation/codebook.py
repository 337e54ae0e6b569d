"""How much of a tokenizer's codebook its codes use.

Usage is the fraction of codebook entries that occur at least once; perplexity
is exp(entropy) of the code histogram (1 for a collapsed codebook, K for
uniform use). Both are over all code positions of all images evaluated, unlike
the per-batch values the quantizer reports during training.
"""

import numpy as np


def code_histogram(codes: np.ndarray, codebook_size: int) -> np.ndarray:
  """Counts (codebook_size,) int64 of each code id in `codes` (any shape)."""
  codes = np.asarray(codes).reshape(-1)
  if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
    raise ValueError(f"code ids span [{codes.min()}, {codes.max()}], outside a codebook "
                     f"of {codebook_size} entries")
  return np.bincount(codes.astype(np.int64), minlength=codebook_size)


def usage_stats(counts: np.ndarray) -> dict[str, float]:
  """{'codebook_usage': fraction of entries used, 'codebook_perplexity': exp(H)}."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  if total <= 0:
    raise ValueError("codebook usage of an empty code histogram")
  p = counts[counts > 0] / total
  return {"codebook_usage": float(np.mean(counts > 0)),
          "codebook_perplexity": float(np.exp(-np.sum(p * np.log(p))))}
