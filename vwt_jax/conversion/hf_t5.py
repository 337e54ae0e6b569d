"""Hugging Face T5 / mT5 directories -> `T5Encoder` params and config.

Reads the encoder of a `T5EncoderModel`, `T5ForConditionalGeneration` or
`MT5*` directory (`config.json` + safetensors / torch weights, see
`hf_checkpoint`); the decoder and LM head are never loaded.

The embedding is `shared.weight`, else its tied copy
`encoder.embed_tokens.weight`; only block 0 holds the relative attention bias
table, which every layer uses. `families.text_encoders.load_t5_text_encoder`
adds the directory's `tokenizer.json` to run the encoder on texts.
"""

import os
import re
from typing import Any, Mapping

import jax.numpy as jnp

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.t5 import T5Encoder, T5EncoderConfig, abstract_params

# Keys of a full encoder-decoder checkpoint that the encoder does not use.
_IGNORED = re.compile(r"^(decoder\..*|lm_head\..*|encoder\.embed_tokens\.weight)$")
_ATTENTION = "encoder.block.{i}.layer.0.SelfAttention"
_FEED_FORWARD = "encoder.block.{i}.layer.1.DenseReluDense"


def convert_state_dict(state_dict: Mapping[str, Any], config: T5EncoderConfig) -> dict:
  """transformers T5 weights (encoder, optionally with decoder) -> `T5Encoder(config)` params.

  Raises `ConversionError` listing every mismatch (`torch_state.check_params`).
  """
  sd = ts.StateDictReader(state_dict)
  h, dk, d = config.num_heads, config.d_kv, config.d_model
  embed_key = "shared.weight" if "shared.weight" in sd else "encoder.embed_tokens.weight"
  params = {
      "shared": ts.embedding(sd, embed_key),
      "relative_attention_bias": sd.get(
          f"{_ATTENTION.format(i=0)}.relative_attention_bias.weight"),
      "final_norm": {"scale": sd.get("encoder.final_layer_norm.weight")},
  }
  mlp_names = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
  for i in range(config.num_layers):
    attention = {name: ts.heads_linear(sd, f"{_ATTENTION.format(i=i)}.{name}", d, h, dk,
                                       bias=False, out=name == "o") for name in "qkvo"}
    params[f"layer_{i}"] = {
        "attention_norm": {"scale": sd.get(f"encoder.block.{i}.layer.0.layer_norm.weight")},
        "attention": attention,
        "mlp_norm": {"scale": sd.get(f"encoder.block.{i}.layer.1.layer_norm.weight")},
        "mlp": {name: ts.linear(sd, f"{_FEED_FORWARD.format(i=i)}.{name}", bias=False)
                for name in mlp_names},
    }
  params = ts.prune_missing(params)
  ts.check_params(params, abstract_params(T5Encoder(config)), sd,
                  ignore_unused=[k for k in sd.unused() if _IGNORED.match(k)])
  return ts.cast_tree(params, jnp.float32)


def load_hf_t5_encoder(model_dir: str) -> tuple[T5EncoderConfig, dict]:
  """(config, float32 params) of the T5 encoder saved in `model_dir`."""
  config = T5EncoderConfig.from_hf_config(
      hf_checkpoint.read_config(model_dir), os.path.join(os.fspath(model_dir), "config.json"))
  # Only the encoder's tensors are read: a full FLAN-T5-XL checkpoint is mostly decoder.
  state_dict = {**hf_checkpoint.read_state_dict(model_dir, prefix="shared."),
                **hf_checkpoint.read_state_dict(model_dir, prefix="encoder.")}
  return config, convert_state_dict(state_dict, config)

