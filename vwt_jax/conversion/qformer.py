"""ST-LLM / InstructBLIP Q-Former weights -> `QFormer` params (numpy only).

Reads the names `STLLMModel` (vriptor/stllm/models/st_llm.py) gives its
Q-Former: `Qformer.bert.*` (stllm/models/Qformer.py's `BertModel` inside
`BertLMHeadModel`), `query_tokens` (1, Q, D) and `llama_proj.*`. The released
Vriptor checkpoint holds them under `model.stllm_model.` (pass that as
`prefix`); `instruct_blip_vicuna7b_trimmed.pth` holds them at the top of its
`model` dict, its projection named `llm_proj.*`, which `STLLMForCausalLM.
from_config` renames to `llama_proj.*` (replacing any `llama_proj.*`), as done
here.

Only keys under `{prefix}Qformer.`, `{prefix}query_tokens`,
`{prefix}llama_proj.` and `{prefix}llm_proj.` are this model's; the rest of a
checkpoint (the vision tower, the LLM) is left to their converters. Within
those, left unread on purpose: the `embeddings.position_ids` buffer (positions
are computed) and the masked-LM head `Qformer.cls.*` (ST-LLM sets
`Qformer.cls = None`, so a checkpoint saved before that may still hold it).

Module names: `attention.self.{query,key,value}` -> `attention/{query,key,
value}` (kernels split per head), `attention.output.{dense,LayerNorm}` ->
`attention/{attention_out,attention_norm}`, the same for `crossattention`;
`intermediate(_query).dense`, `output(_query).{dense,LayerNorm}` ->
`feed_forward(_query)/{intermediate,output,output_norm}`.
"""

import re
from typing import Any, Mapping

import jax.numpy as jnp

from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.qformer import QFormerConfig, abstract_params

# STLLMModel's attribute names; anything else under `prefix` is another module's.
_OWN = ("Qformer.", "query_tokens", "llama_proj.", "llm_proj.")
_IGNORED = re.compile(r"^Qformer\.(bert\.embeddings\.position_ids|cls\..*)$")


def _select(state_dict: Mapping[str, Any], prefix: str) -> ts.StateDict:
  """The Q-Former's keys (`prefix` kept), `llm_proj.*` renamed to `llama_proj.*`."""
  own = {k: v for k, v in state_dict.items()
         if k.startswith(prefix) and k[len(prefix):].startswith(_OWN)}
  old, new = f"{prefix}llm_proj.", f"{prefix}llama_proj."
  if f"{old}weight" in own:
    own = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in own.items()
           if not k.startswith(new)}
  return ts.StateDict(own, getattr(state_dict, "path", ""))


def _attention(sd: ts.StateDictReader, at: str, config: QFormerConfig,
               context_width: int) -> dict:
  """The `BertAttention` named `at` (its keys and values read `context_width` features)."""
  d, h, hd = config.hidden_size, config.num_attention_heads, config.head_dim
  return {
      "query": ts.heads_linear(sd, f"{at}.self.query", d, h, hd),
      "key": ts.heads_linear(sd, f"{at}.self.key", context_width, h, hd),
      "value": ts.heads_linear(sd, f"{at}.self.value", context_width, h, hd),
      "attention_out": ts.heads_linear(sd, f"{at}.output.dense", d, h, hd, out=True),
      "attention_norm": ts.norm(sd, f"{at}.output.LayerNorm"),
  }


def _feed_forward(sd: ts.StateDictReader, at: str, suffix: str) -> dict:
  """`intermediate{suffix}` + `output{suffix}` of the layer named `at`."""
  return {"intermediate": ts.linear(sd, f"{at}.intermediate{suffix}.dense"),
          "output": ts.linear(sd, f"{at}.output{suffix}.dense"),
          "output_norm": ts.norm(sd, f"{at}.output{suffix}.LayerNorm")}


def convert_state_dict(state_dict: Mapping[str, Any], config: QFormerConfig,
                       prefix: str = "") -> dict:
  """ST-LLM Q-Former weights (names under `prefix`) -> float32 `QFormer(config)` params.

  Raises `ConversionError` listing every mismatch (`torch_state.check_params`).
  """
  sd = ts.StateDictReader(_select(state_dict, prefix))
  emb = f"{prefix}Qformer.bert.embeddings"
  params = {
      "word_embeddings": ts.embedding(sd, f"{emb}.word_embeddings.weight"),
      "position_embeddings": ts.embedding(sd, f"{emb}.position_embeddings.weight"),
      "embeddings_norm": ts.norm(sd, f"{emb}.LayerNorm"),
      "query_tokens": ts.reshape_checked(sd.get(f"{prefix}query_tokens", ndim=3),
                                         (config.num_query_tokens, config.hidden_size)),
      "llama_proj": ts.linear(sd, f"{prefix}llama_proj"),
  }
  for i in range(config.num_hidden_layers):
    layer = f"{prefix}Qformer.bert.encoder.layer.{i}"
    params[f"layer_{i}"] = {
        "attention": _attention(sd, f"{layer}.attention", config, config.hidden_size),
        "feed_forward": _feed_forward(sd, layer, ""),
        "feed_forward_query": _feed_forward(sd, layer, "_query"),
    }
    if config.has_cross_attention(i):
      params[f"layer_{i}"]["crossattention"] = _attention(
          sd, f"{layer}.crossattention", config, config.encoder_width)
  params = ts.prune_missing(params)
  ts.check_params(params, abstract_params(config), sd,
                  ignore_unused=[k for k in sd.unused() if _IGNORED.match(k[len(prefix):])])
  return ts.cast_tree(params, jnp.float32)
