"""One LLaMA block's parameters from its projection weights (`models/llama.py` layout).

Shared by the LlamaGen GPT and the Hugging Face LLaMA converters, whose
checkpoints name and split the same weights differently. torch Linear weights
are (out, in); H query heads, K kv heads, g = H/K, hd = head_dim, D = width.
"""

import dataclasses
import re
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np

from vwt_jax.conversion import torch_state as ts


def wqkv_kernel(q: Optional[np.ndarray], k: Optional[np.ndarray], v: Optional[np.ndarray],
                heads: int, kv_heads: int, head_dim: int) -> Optional[np.ndarray]:
  """q (H*hd, D), k/v (K*hd, D) -> (D, K, g + 2, hd): slot [:, j, :g] the q heads
  of kv group j, [:, j, g] k head j, [:, j, g + 1] v head j. None if any is
  missing; wrong sizes pass through transposed, for `check_params` to report."""
  if q is None or k is None or v is None:
    return None
  hd, kv = head_dim, kv_heads
  if (q.shape[0], k.shape[0], v.shape[0]) != (heads * hd, kv * hd, kv * hd) or not (
      q.shape[1] == k.shape[1] == v.shape[1]):
    return q.T
  dim = q.shape[1]
  return np.concatenate([q.reshape(kv, heads // kv, hd, dim), k.reshape(kv, 1, hd, dim),
                         v.reshape(kv, 1, hd, dim)], axis=1).transpose(3, 0, 1, 2)


def wo_kernel(w: Optional[np.ndarray], heads: int, head_dim: int) -> Optional[np.ndarray]:
  """(D, H*hd) -> (H, hd, D)."""
  if w is None or w.shape[1] != heads * head_dim:
    return None if w is None else w.T
  return w.T.reshape(heads, head_dim, w.shape[0])


class Names(NamedTuple):
  """A checkpoint's module names (after the layer prefix) of a block's other weights."""
  wo: str
  w1: str  # gate
  w2: str  # down
  w3: str  # up
  attention_norm: str
  ffn_norm: str


def block(sd: ts.StateDictReader, prefix: str, names: Names, wqkv: Optional[np.ndarray],
          heads: int, head_dim: int) -> dict:
  """The tree of the block whose modules are `{prefix}.{name}`, given its wqkv kernel."""
  module = lambda field: f"{prefix}.{getattr(names, field)}"
  return {
      "attention": {"wqkv": {"kernel": wqkv},
                    "wo": {"kernel": wo_kernel(sd.get(f"{module('wo')}.weight", ndim=2),
                                               heads, head_dim)}},
      "feed_forward": {w: ts.linear(sd, module(w), bias=False) for w in ("w1", "w2", "w3")},
      "attention_norm": {"scale": sd.get(f"{module('attention_norm')}.weight")},
      "ffn_norm": {"scale": sd.get(f"{module('ffn_norm')}.weight")},
  }


def finish(params: dict, sd: ts.StateDictReader, config: Any,
           abstract_params: Callable[[Any], Any], ignored: re.Pattern) -> dict:
  """`params` checked against the unrolled model of `config` (so that errors
  name the layer), then stacked for `scan_layers` and cast to
  `config.param_dtype`. Keys matching `ignored` may stay unread.
  """
  unrolled = dataclasses.replace(config, scan_layers=False, remat=False)
  params = ts.prune_missing(params)
  ts.check_params(params, abstract_params(unrolled), sd,
                  ignore_unused=[k for k in sd.unused() if ignored.match(k)])
  if config.scan_layers:
    stacked = [params.pop(f"layers_{i}") for i in range(config.n_layer)]
    params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *stacked)
  return ts.cast_tree(params, config.param_dtype)
