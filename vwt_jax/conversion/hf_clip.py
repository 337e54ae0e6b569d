"""transformers CLIP vision towers -> `CLIPVisionTower` params.

Reads a directory saved by `CLIPVisionModel`, `CLIPVisionModelWithProjection`
or a full `CLIPModel` (config.json + safetensors or torch .bin, through
`hf_checkpoint`). State-dict names may carry a `vision_model.` prefix (full
CLIP models, and vision models saved by transformers < 5) or not.

Module names follow transformers' (`self_attn.{q,k,v}_proj` ->
`self_attn/{query,key,value}`, kernels split per head). Left unread on
purpose: the text tower, `logit_scale`, the projection heads (a LLaVA-style
captioner reads the tower's hidden states, not the CLIP embedding space) and
the `embeddings.position_ids` buffer older transformers saved.
"""

import os
import re
from typing import Any, Mapping

import jax.numpy as jnp

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.clip_vision import CLIPVisionConfig, abstract_params

VISION_PREFIX = "vision_model."
_IGNORED = re.compile(
    r"^(text_model\..*|logit_scale|text_projection\.weight|visual_projection\.weight"
    r"|embeddings\.position_ids)$")


def convert_state_dict(state_dict: Mapping[str, Any], config: CLIPVisionConfig) -> dict:
  """transformers CLIP (vision) weights -> float32 `CLIPVisionTower(config)` params.

  Raises `ConversionError` listing every mismatch (`torch_state.check_params`).
  """
  sd = ts.StateDictReader({k.removeprefix(VISION_PREFIX): v for k, v in state_dict.items()})
  d, h, hd = config.hidden_size, config.num_attention_heads, config.head_dim
  params = {
      "patch_embedding": ts.conv(sd, "embeddings.patch_embedding", bias=False),
      "class_embedding": sd.get("embeddings.class_embedding"),
      "position_embedding": sd.get("embeddings.position_embedding.weight"),
      "pre_layrnorm": ts.norm(sd, "pre_layrnorm"),
      "post_layernorm": ts.norm(sd, "post_layernorm"),
  }
  for i in range(config.num_hidden_layers):
    prefix = f"encoder.layers.{i}"
    attn = {ours: ts.heads_linear(sd, f"{prefix}.self_attn.{theirs}", d, h, hd, out=ours == "out")
            for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"),
                                 ("out", "out_proj"))}
    params[f"layers_{i}"] = {
        "layer_norm1": ts.norm(sd, f"{prefix}.layer_norm1"),
        "self_attn": attn,
        "layer_norm2": ts.norm(sd, f"{prefix}.layer_norm2"),
        "fc1": ts.linear(sd, f"{prefix}.mlp.fc1"),
        "fc2": ts.linear(sd, f"{prefix}.mlp.fc2"),
    }
  params = ts.prune_missing(params)
  ts.check_params(params, abstract_params(config), sd,
                  ignore_unused=[k for k in sd.unused() if _IGNORED.match(k)])
  return ts.cast_tree(params, jnp.float32)


def load_hf_clip_vision(model_dir: str, **config_overrides) -> tuple[CLIPVisionConfig, dict]:
  """(config, params) of the vision tower saved in a transformers CLIP model directory.

  `config_overrides` set `CLIPVisionConfig` fields the file does not hold
  (dtype, param_dtype); params are float32 whatever the stored dtype.
  """
  hf_config = hf_checkpoint.read_config(model_dir)
  config = CLIPVisionConfig.from_hf_config(
      hf_config, source=os.path.join(model_dir, "config.json"), **config_overrides)
  # A full CLIPModel keeps its vision tower under `vision_model.`; reading only
  # those tensors skips the text tower on disk.
  prefix = VISION_PREFIX if hf_config.get("model_type") == "clip" else ""
  state_dict = hf_checkpoint.read_state_dict(model_dir, prefix=prefix)
  return config, convert_state_dict(state_dict, config)
