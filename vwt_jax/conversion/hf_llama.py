"""Hugging Face `LlamaForCausalLM` weights (LLaMA, Vicuna) -> `models.llama_lm` params.

`self_attn.{q,k,v}_proj` fill the fused `attention/wqkv` kernel
(`llama_block.wqkv_kernel`) after the q and k rows are permuted from
rotate-half to interleaved RoPE (`_interleave_rope_rows`); the other modules
map one to one (`_NAMES`). Left unread on purpose: `rotary_emb.inv_freq`
buffers (recomputed from the config).
"""

import re
from typing import Any, Mapping

import numpy as np

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import llama_block
from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.llama_lm import LlamaLMConfig, abstract_params

_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_NAMES = llama_block.Names(
    wo="self_attn.o_proj", w1="mlp.gate_proj", w2="mlp.down_proj", w3="mlp.up_proj",
    attention_norm="input_layernorm", ffn_norm="post_attention_layernorm")


def _interleave_rope_rows(w: np.ndarray, heads: int, hd: int) -> np.ndarray:
  """Per head, rows [x_0..x_{hd/2-1} | x_{hd/2}..x_{hd-1}] -> [x_0, x_{hd/2}, x_1, ...].

  transformers' rotate-half RoPE rotates the pair (x_p, x_{p+hd/2}) by angle
  pos*f_p; `llama.apply_rope` rotates (x_{2p}, x_{2p+1}) by the same angle.
  After this permutation of the q and k output rows, our pair p holds exactly
  the two components HF rotates together, so every rotated q and k is the HF one
  with its components reordered by the same permutation within each head. A
  q.k dot product is a sum over components, which that shared reordering
  leaves unchanged, so the attention scores (and everything after) are equal.
  """
  dim = w.shape[1]
  return w.reshape(heads, 2, hd // 2, dim).transpose(0, 2, 1, 3).reshape(heads * hd, dim)


def _layer(sd: ts.StateDictReader, i: int, config: LlamaLMConfig) -> dict:
  p = f"model.layers.{i}"
  hd, heads, kv = config.attention_head_dim, config.n_head, config.kv_heads
  q, k, v = (sd.get(f"{p}.self_attn.{n}_proj.weight", ndim=2) for n in "qkv")
  if q is not None and k is not None and q.shape[0] == heads * hd and k.shape[0] == kv * hd:
    q, k = _interleave_rope_rows(q, heads, hd), _interleave_rope_rows(k, kv, hd)
  return llama_block.block(sd, p, _NAMES, llama_block.wqkv_kernel(q, k, v, heads, kv, hd),
                           heads, hd)


def convert_llama(state_dict: Mapping[str, Any], config: LlamaLMConfig) -> dict:
  """A `LlamaForCausalLM` state dict -> `LlamaLM(config)` params (see `llama_block.finish`)."""
  sd = ts.StateDictReader(state_dict)
  params = {
      "embed_tokens": ts.embedding(sd, "model.embed_tokens.weight"),
      "norm": {"scale": sd.get("model.norm.weight")},
  }
  if not config.tie_embeddings:
    params["lm_head"] = ts.linear(sd, "lm_head", bias=False)
  params.update({f"layers_{i}": _layer(sd, i, config) for i in range(config.n_layer)})
  if config.tie_embeddings and "lm_head.weight" in sd:
    # Some tied checkpoints store the shared matrix twice; it must be the embedding.
    lm_head, embedding = sd.get("lm_head.weight"), params["embed_tokens"]["embedding"]
    if embedding is not None and not np.array_equal(lm_head, embedding):
      raise ts.ConversionError("tie_word_embeddings is set but lm_head.weight differs from "
                               "model.embed_tokens.weight")
  return llama_block.finish(params, sd, config, abstract_params, _IGNORED)


def load_hf_llama(model_dir: str, **overrides) -> tuple[LlamaLMConfig, dict]:
  """A transformers LLaMA directory (config.json + weights) -> (config, params).

  `overrides` set config fields the checkpoint does not fix (scan_layers,
  remat, dtype, param_dtype).
  """
  hf_config = hf_checkpoint.read_config(model_dir)
  config = LlamaLMConfig.from_hf_config(hf_config, f"{model_dir}/config.json", **overrides)
  state_dict = hf_checkpoint.read_state_dict(model_dir)
  try:
    return config, convert_llama(state_dict, config)
  except ts.ConversionError as e:
    raise ts.ConversionError(f"{model_dir}: {e}") from None
