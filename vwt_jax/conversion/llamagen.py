"""Official LlamaGen GPT state dicts (c2i and t2i) -> `vwt_jax.models.gpt` params.

Dropped on purpose: `freqs_cis` (the RoPE table, recomputed from the config)
and `layers.*.attention.kv_cache.*` (generation buffers that end up in
`state_dict()` after sampling). Every other key must be consumed.

Mapping (torch Linear (out,in) -> kernel (in,out)):
* `layers.{i}.attention.wqkv.weight` ((H + 2K)*hd, D), rows [q | k | v] head-major
  -> `layers_{i}/attention/wqkv/kernel` (D, K, H/K + 2, hd) (see `models/llama.py`).
* `layers.{i}.attention.wo.weight` (D, H*hd) -> `attention/wo/kernel` (H, hd, D).
* `cls_embedding.cap_proj.fc{1,2}.weight` -> `cls_embedding/fc{1,2}/kernel`;
  `cls_embedding.uncond_embedding` -> `cls_embedding/uncond_embedding`.
* RMSNorm `weight` -> `scale`; embeddings unchanged.
With `scan_layers` the per-layer trees are stacked on a leading axis under `layers`.
"""

import dataclasses
import re
from typing import Any, Mapping, Optional, Union

import numpy as np

from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.gpt import GPT, GPTConfig, abstract_params

_IGNORED = re.compile(r"^(freqs_cis|layers\.\d+\.attention\.kv_cache\..*)$")


def _wqkv(w: Optional[np.ndarray], config: GPTConfig) -> Optional[np.ndarray]:
  """((H + 2K)*hd, D) rows [q | k | v] -> (D, K, H/K + 2, hd); None stays None."""
  hd, heads, kv = config.head_dim, config.n_head, config.kv_heads
  if w is None or w.shape[0] != (heads + 2 * kv) * hd:
    # A wrong size is reported by `check_params` with the converted shape.
    return None if w is None else w.T
  dim = w.shape[1]
  group = heads // kv
  q = w[:heads * hd].reshape(kv, group, hd, dim)
  k = w[heads * hd:(heads + kv) * hd].reshape(kv, 1, hd, dim)
  v = w[(heads + kv) * hd:].reshape(kv, 1, hd, dim)
  return np.concatenate([q, k, v], axis=1).transpose(3, 0, 1, 2)


def _wo(w: Optional[np.ndarray], config: GPTConfig) -> Optional[np.ndarray]:
  if w is None or w.shape[1] != config.n_head * config.head_dim:
    return None if w is None else w.T
  return w.T.reshape(config.n_head, config.head_dim, w.shape[0])


def _layer(sd: ts.StateDictReader, i: int, config: GPTConfig) -> dict:
  p = f"layers.{i}"
  return {
      "attention": {
          "wqkv": {"kernel": _wqkv(sd.get(f"{p}.attention.wqkv.weight", ndim=2), config)},
          "wo": {"kernel": _wo(sd.get(f"{p}.attention.wo.weight", ndim=2), config)},
      },
      "feed_forward": {name: ts.linear(sd, f"{p}.feed_forward.{name}", bias=False)
                       for name in ("w1", "w2", "w3")},
      "attention_norm": {"scale": sd.get(f"{p}.attention_norm.weight")},
      "ffn_norm": {"scale": sd.get(f"{p}.ffn_norm.weight")},
  }


def convert_gpt(state_dict: Mapping[str, Any], config: GPTConfig) -> dict:
  """Converts an official c2i/t2i GPT state dict for `GPT(config)`.

  Returns the `params` collection (floats in `config.param_dtype`). Raises
  `ConversionError` listing every missing/unexpected key and shape mismatch.
  """
  sd = ts.StateDictReader(state_dict)
  params = {
      "tok_embeddings": ts.embedding(sd, "tok_embeddings.weight"),
      "norm": {"scale": sd.get("norm.weight")},
      "output": ts.linear(sd, "output", bias=False),
  }
  if config.model_type == "c2i":
    params["cls_embedding"] = {
        "embedding_table": ts.embedding(sd, "cls_embedding.embedding_table.weight")}
  else:
    params["cls_embedding"] = {
        "fc1": ts.linear(sd, "cls_embedding.cap_proj.fc1", bias=False),
        "fc2": ts.linear(sd, "cls_embedding.cap_proj.fc2", bias=False),
        "uncond_embedding": sd.get("cls_embedding.uncond_embedding"),
    }
  layers = [_layer(sd, i, config) for i in range(config.n_layer)]
  params.update({f"layers_{i}": layer for i, layer in enumerate(layers)})
  params = ts.prune_missing(params)
  ignored = [k for k in sd.unused() if _IGNORED.match(k)]
  unrolled = dataclasses.replace(config, scan_layers=False, remat=False)
  return ts.check_and_stack_layers(
      params, abstract_params(unrolled), sd, ignore_unused=ignored, n_layer=config.n_layer,
      scan_layers=config.scan_layers, param_dtype=config.param_dtype)


def load_gpt(path_or_state_dict: Union[str, Mapping[str, Any]], config: GPTConfig
             ) -> tuple[GPT, dict]:
  """A checkpoint file (.pt/.bin/.safetensors/.npz, 'model' containers too) or a
  state dict -> (GPT module, params)."""
  state_dict = (ts.load_state_dict(path_or_state_dict)
                if isinstance(path_or_state_dict, str) else path_or_state_dict)
  return GPT(config), convert_gpt(state_dict, config)
