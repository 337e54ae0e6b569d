"""Vriptor (ST-LLM) checkpoints -> `st_llm.STLLM` params, numpy only.

The released `Mutonix/Vriptor-STLLM` is the folder `STLLMForCausalLM.save_pretrained`
writes (vriptor/stllm/models/st_llm.py): a `config.json` of model_type
'st_llm_hf' (LLaMA's fields) and the weights of the whole model, the LLaMA
under `model.*` / `lm_head.*` as transformers names them, ST-LLM's own modules
under `model.stllm_model.`:

  visual_encoder.*, ln_vision.*          `conversion.eva_vit`
  Qformer.*, query_tokens, llama_proj.*  `conversion.qformer`
  down_proj.*, up_proj.*                 the 'residual' video input
  embed_tokens.weight                    the LLaMA's embedding again (the
                                         module is shared), checked equal

Every key belongs to one part, the rest is an error naming it (a model
trained with `mvm_decode` also holds `mvm_decoder.*`, which captioning does not
use and this refuses rather than drop silently). The 7B stays on the host:
each part is cast to its config's `param_dtype` as it is converted.
"""

import dataclasses
import json
import os
from typing import Any, Mapping

from etils import epath
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import eva_vit
from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import hf_llama
from vwt_jax.conversion import qformer
from vwt_jax.conversion import torch_state as ts
from vwt_jax.core import files
from vwt_jax.models import llama_lm
from vwt_jax.models.st_llm import STLLMConfig, abstract_params

STLLM_PREFIX = "model.stllm_model."
SIDECAR_FILE = "st_llm_config.json"
# ST-LLM's own modules under STLLM_PREFIX, by the part that converts them.
_VISION = ("visual_encoder.", "ln_vision.")
_QFORMER = ("Qformer.", "query_tokens", "llama_proj.", "llm_proj.")
_RESIDUAL = ("down_proj.", "up_proj.")
_SHARED_EMBEDDING = "embed_tokens.weight"


def convert_state_dict(state_dict: Mapping[str, Any], config: STLLMConfig) -> dict:
  """An `STLLMForCausalLM` state dict -> `STLLM(config)` params.

  Raises `ConversionError` naming every missing, unexpected or misshapen key.
  """
  path = getattr(state_dict, "path", "")
  own = {k[len(STLLM_PREFIX):]: v for k, v in state_dict.items() if k.startswith(STLLM_PREFIX)}
  parts = _VISION + _QFORMER + (_RESIDUAL if config.video_input == "residual" else ())
  shared = own.pop(_SHARED_EMBEDDING, None)
  if shared is not None and not np.array_equal(
      shared, state_dict.get("model.embed_tokens.weight", shared)):
    raise ts.ConversionError(f"{path}: {STLLM_PREFIX}{_SHARED_EMBEDDING} differs from "
                             "model.embed_tokens.weight (ST-LLM shares one embedding)")
  stray = sorted(STLLM_PREFIX + k for k in own if not k.startswith(parts))
  if stray:
    raise ts.ConversionError(f"{path}: unexpected ST-LLM keys (not a part of this model): "
                             f"{stray[:8]}{' ...' if len(stray) > 8 else ''}")
  own = ts.StateDict(own, path)
  params = {
      "vision": ts.cast_tree(eva_vit.convert_state_dict(
          own, config.vision, prefix=_VISION[0], ln_vision_prefix=_VISION[1]),
          config.vision.param_dtype),
      "qformer": ts.cast_tree(qformer.convert_state_dict(own, config.qformer),
                              config.qformer.param_dtype),
      "lm": hf_llama.convert_llama(ts.StateDict(
          {k: v for k, v in state_dict.items() if not k.startswith(STLLM_PREFIX)}, path),
          config.lm),
  }
  if config.video_input == "residual":
    sd = ts.StateDictReader(ts.StateDict(
        {k: v for k, v in own.items() if k.startswith(_RESIDUAL)}, path))
    residual = ts.prune_missing({"down_proj": ts.linear(sd, "down_proj"),
                                 "up_proj": ts.linear(sd, "up_proj")})
    expected = nn.meta.unbox(abstract_params(config))
    ts.check_params(residual, {k: expected[k] for k in ("down_proj", "up_proj")}, sd)
    params.update(ts.cast_tree(residual, config.lm.param_dtype))
  return params


def load_vriptor(model_dir: str, *, dtype: Any = None, param_dtype: Any = None,
                 **lm_overrides) -> tuple[STLLMConfig, dict]:
  """A released-layout folder (config.json + weights) -> (config, params).

  The LLaMA's sizes and RoPE come from config.json. The vision encoder, the
  Q-Former and the video input are not in it: they are the released stage-2
  model's, or those of the folder's `st_llm_config.json` (`STLLMConfig.to_dict()`
  without 'lm'), which a model of other sizes carries. `dtype` and
  `param_dtype` (compute and storage, None = float32) apply to every part;
  `lm_overrides` set other LlamaLMConfig layout fields (scan_layers, remat).
  """
  hf_config = hf_checkpoint.read_config(model_dir)
  dtypes = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
  lm = llama_lm.LlamaLMConfig.from_hf_config(
      hf_config, os.path.join(model_dir, "config.json"), **dtypes, **lm_overrides)
  sidecar = os.path.join(model_dir, SIDECAR_FILE)
  parts = (json.loads(files.read_text(sidecar)) if epath.Path(sidecar).is_file()
           else STLLMConfig().to_dict())
  for part in ("vision", "qformer"):
    parts[part] = {**parts[part], **{k: jnp.dtype(v).name for k, v in dtypes.items()}}
  # `llama_proj` maps onto the LLM's width, whatever it is.
  parts["qformer"]["llm_hidden_size"] = lm.dim
  try:
    config = STLLMConfig.from_dict({**parts, "lm": dataclasses.asdict(lm)})
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{sidecar}: {e}") from None
  try:
    return config, convert_state_dict(hf_checkpoint.read_state_dict(model_dir), config)
  except ts.ConversionError as e:
    raise ts.ConversionError(f"{model_dir}: {e}") from None
