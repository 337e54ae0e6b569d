"""Official LlamaGen GPT state dicts (c2i and t2i) -> `vwt_jax.models.gpt` params.

Dropped on purpose: `freqs_cis` (the RoPE table, recomputed from the config)
and `layers.*.attention.kv_cache.*` (generation buffers that end up in
`state_dict()` after sampling). Every other key must be consumed.

`layers.{i}.attention.wqkv.weight` ((H + 2K)*hd, D), rows [q | k | v]
head-major, becomes the fused kernel of `llama_block.wqkv_kernel`.
"""

import re
from typing import Any, Mapping, Union

from vwt_jax.conversion import llama_block
from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.gpt import GPT, GPTConfig, abstract_params

_IGNORED = re.compile(r"^(freqs_cis|layers\.\d+\.attention\.kv_cache\..*)$")
_NAMES = llama_block.Names(
    wo="attention.wo", w1="feed_forward.w1", w2="feed_forward.w2", w3="feed_forward.w3",
    attention_norm="attention_norm", ffn_norm="ffn_norm")


def _layer(sd: ts.StateDictReader, i: int, config: GPTConfig) -> dict:
  p = f"layers.{i}"
  hd, heads, kv = config.head_dim, config.n_head, config.kv_heads
  w = sd.get(f"{p}.attention.wqkv.weight", ndim=2)
  if w is None or w.shape[0] != (heads + 2 * kv) * hd:
    # A wrong size is reported by `check_params` with the converted shape.
    wqkv = None if w is None else w.T
  else:
    wqkv = llama_block.wqkv_kernel(w[:heads * hd], w[heads * hd:(heads + kv) * hd],
                                   w[(heads + kv) * hd:], heads, kv, hd)
  return llama_block.block(sd, p, _NAMES, wqkv, heads, hd)


def convert_gpt(state_dict: Mapping[str, Any], config: GPTConfig) -> dict:
  """An official c2i/t2i GPT state dict -> `GPT(config)` params (see `llama_block.finish`)."""
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
  params.update({f"layers_{i}": _layer(sd, i, config) for i in range(config.n_layer)})
  return llama_block.finish(params, sd, config, abstract_params, _IGNORED)


def load_gpt(path_or_state_dict: Union[str, Mapping[str, Any]], config: GPTConfig
             ) -> tuple[GPT, dict]:
  """A checkpoint file (.pt/.bin/.safetensors/.npz, 'model' containers too) or a
  state dict -> (GPT module, params)."""
  return GPT(config), convert_gpt(ts.as_state_dict(path_or_state_dict), config)
