"""Official TiTok generator state dicts (`ImageBert`, `UViTBert`) -> `vwt_jax` params.

Nothing is dropped silently: HF's `position_ids` / `token_type_ids` buffers are
not in the released state dicts, and if a checkpoint carries them they are the
only keys ignored (they equal arange / zeros, which the model hard-codes).
"""

from typing import Any, Mapping, Union

import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import torch_state as ts
from vwt_jax.models import layers
from vwt_jax.models.maskgit_generator import MaskGitGeneratorConfig, build_generator

_BERT_BUFFERS = ("model.embeddings.position_ids", "model.embeddings.token_type_ids")


def _heads_linear(sd: ts.StateDictReader, prefix: str, num_heads: int, out: bool = False) -> dict:
  """torch Linear (out,in) -> DenseGeneral kernel (in, heads, head_dim), or with
  `out` an output projection's kernel (heads, head_dim, out)."""
  w = sd.get(f"{prefix}.weight", ndim=2)
  b = sd.get(f"{prefix}.bias", ndim=None if out else 1)
  tree = {}
  if w is not None:
    tree["kernel"] = (w.T.reshape(num_heads, -1, w.shape[0]) if out
                      else w.T.reshape(w.shape[1], num_heads, -1))
  if b is not None:
    tree["bias"] = b if out else b.reshape(num_heads, -1)
  return tree


def _packed_qkv(sd: ts.StateDictReader, prefix: str, num_heads: int) -> dict:
  """UViT `qkv` (3D, D), no bias, rows [q; k; v] each split by head."""
  w = sd.get(f"{prefix}.weight", ndim=2)
  if w is None:
    return {}
  third = w.shape[0] // 3
  return {name: {"kernel": w[i * third:(i + 1) * third].T.reshape(w.shape[1], num_heads, -1)}
          for i, name in enumerate(("query", "key", "value"))}


def _mlp(sd: ts.StateDictReader, fc_in: str, fc_out: str) -> dict:
  return {"c_fc": ts.linear(sd, fc_in), "c_proj": ts.linear(sd, fc_out)}


def _image_bert(sd: ts.StateDictReader, config: MaskGitGeneratorConfig) -> dict:
  heads = config.num_attention_heads
  emb = "model.embeddings"
  params = {
      "word_embeddings": ts.embedding(sd, f"{emb}.word_embeddings.weight"),
      "position_embeddings": sd.get(f"{emb}.position_embeddings.weight"),
      "token_type_embeddings": sd.get(f"{emb}.token_type_embeddings.weight"),
      "embeddings_ln": ts.norm(sd, f"{emb}.LayerNorm"),
      "lm_head": ts.linear(sd, "model.lm_head"),
  }
  for i in range(config.num_hidden_layers):
    p = f"model.encoder.layer.{i}"
    attn = {name: _heads_linear(sd, f"{p}.attention.self.{name}", heads)
            for name in ("query", "key", "value")}
    attn["out"] = _heads_linear(sd, f"{p}.attention.output.dense", heads, out=True)
    params[f"layer_{i}"] = {
        "attention": attn,
        "attention_ln": ts.norm(sd, f"{p}.attention.output.LayerNorm"),
        "mlp": _mlp(sd, f"{p}.intermediate.dense", f"{p}.output.dense"),
        "output_ln": ts.norm(sd, f"{p}.output.LayerNorm"),
    }
  return params


def _uvit_block(sd: ts.StateDictReader, prefix: str, heads: int, skip: bool) -> dict:
  attn = _packed_qkv(sd, f"{prefix}.attn.qkv", heads)
  attn["out"] = _heads_linear(sd, f"{prefix}.attn.proj", heads, out=True)
  tree = {"norm1": ts.norm(sd, f"{prefix}.norm1"), "norm2": ts.norm(sd, f"{prefix}.norm2"),
          "attn": attn, "mlp": _mlp(sd, f"{prefix}.mlp.fc1", f"{prefix}.mlp.fc2")}
  if skip:
    tree["skip_linear"] = ts.linear(sd, f"{prefix}.skip_linear")
  return tree


def _uvit_bert(sd: ts.StateDictReader, config: MaskGitGeneratorConfig) -> dict:
  heads = config.num_attention_heads
  params = {
      "embeddings": ts.embedding(sd, "embeddings.weight"),
      "pos_embed": sd.get("pos_embed"),
      "mid_block": _uvit_block(sd, "mid_block", heads, skip=False),
      "norm": ts.norm(sd, "norm"),
      "lm_head": ts.linear(sd, "lm_head"),
  }
  for i in range(config.num_hidden_layers // 2):
    params[f"in_blocks_{i}"] = _uvit_block(sd, f"in_blocks.{i}", heads, skip=False)
    params[f"out_blocks_{i}"] = _uvit_block(sd, f"out_blocks.{i}", heads, skip=True)
  return params


def convert_generator(state_dict: Mapping[str, Any], config: MaskGitGeneratorConfig) -> dict:
  """An official `ImageBert` / `UViTBert` state dict -> `build_generator(config)` params.

  Floats are cast to `config.param_dtype`. Raises `ConversionError` listing
  every mismatch (e.g. an ImageBert checkpoint given a 'UViT' config).
  """
  sd = ts.StateDictReader(state_dict)
  convert = _image_bert if config.model_type == "ViT" else _uvit_bert
  # Missing top-level arrays come back as None; `check_params` reports them.
  params = {k: v for k, v in convert(sd, config).items() if v is not None}
  expected = layers.abstract_params(build_generator(config),
                            jnp.zeros((1, config.image_seq_len), jnp.int32),
                            jnp.zeros((1,), jnp.int32))
  ts.check_params(params, expected, sd,
                  ignore_unused=_BERT_BUFFERS if config.model_type == "ViT" else ())
  return ts.cast_tree(params, config.param_dtype)


def load_generator(path_or_state_dict: Union[str, Mapping[str, np.ndarray]],
                   config: MaskGitGeneratorConfig):
  """Checkpoint path or state dict -> (generator module, params)."""
  return build_generator(config), convert_generator(ts.as_state_dict(path_or_state_dict), config)
