"""Vriptor (ST-LLM) parts against the official code: the EVA ViT-g vision
encoder and the Q-Former (tests/fixtures/README.md, `vriptor/`).

`run_vriptor` compares both. `eva_vit_results` reads `eva_vit_{config.json,state_dict.npz,io.npz}`: the
official `VisionTransformer` arguments, its weights with `ln_vision` under the
BLIP-2 model's key names, and two normalised images (NCHW) with the first
block's output, the last block's (`features`) and `ln_vision`'s. The
`pos_embed_interpolated` array is the official `interpolate_pos_embed` of the
fixture's positions to `interpolated_img_size`, compared with the converter's
resize.

`qformer_results` reads `qformer_{config.json,state_dict.npz,io.npz}`: the
`BertConfig` fields `init_Qformer` sets and `llama_proj`'s output width,
ST-LLM's key names, and as inputs the text ids and mask, the image features
and an image mask; as outputs the embeddings and the states after layer 0
over all Q + T positions, the last layer's query positions and their
`llama_proj`, with every image feature visible (as ST-LLM) and under the
image mask.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import eva_vit as eva_vit_conversion
from vwt_jax.conversion import qformer as qformer_conversion
from vwt_jax.models.eva_vit import EvaViT, EvaViTConfig
from vwt_jax.models.qformer import QFormer, QFormerConfig
from vwt_jax.tools.parity_common import (ACTIVATION_TOL, Result, compare_io, load_arrays,
                                         load_json, missing_files, tolerance_table)

_EVA_VIT_INPUTS = ("images",)
_QFORMER_INPUTS = ("input_ids", "attention_mask", "image_features", "image_mask")


def run_vriptor(fixture_dir: str) -> list[Result]:
  """Every array of the vision encoder's and the Q-Former's fixtures."""
  return eva_vit_results(fixture_dir) + qformer_results(fixture_dir)


def eva_vit_results(fixture_dir: str) -> list[Result]:
  """One `Result` per array of `eva_vit_io.npz`."""
  if absent := missing_files(fixture_dir, "eva_vit_",
                             ("config.json", "state_dict.npz", "io.npz")):
    return absent
  meta = load_json(fixture_dir, "eva_vit_config.json")
  config = EvaViTConfig.from_official(meta["vision_transformer"], meta["ln_vision_eps"],
                                      source="eva_vit_config.json")
  state_dict = load_arrays(fixture_dir, "eva_vit_state_dict.npz")
  params = eva_vit_conversion.convert_state_dict(state_dict, config)
  io = load_arrays(fixture_dir, "eva_vit_io.npz")

  images = jnp.asarray(io["images"].transpose(0, 2, 3, 1))
  with jax.default_matmul_precision("highest"):
    forward = jax.jit(functools.partial(EvaViT(config).apply, mutable=["intermediates"]))
    out, state = forward({"params": params}, images)
  inter = state["intermediates"]
  ours = {"ln_vision_out": out, "features": inter["features"][0],
          "block0_out": inter["block0_out"][0]}

  if "pos_embed_interpolated" in io:
    resized = EvaViTConfig.from_official(
        {**meta["vision_transformer"], "img_size": meta["interpolated_img_size"]},
        meta["ln_vision_eps"], source="eva_vit_config.json")
    ours["pos_embed_interpolated"] = np.asarray(
        eva_vit_conversion.convert_state_dict(state_dict, resized)["pos_embed"])[None]
  return compare_io("eva_vit", io, ours, _EVA_VIT_INPUTS, tolerance_table(ACTIVATION_TOL))


def _qformer_outputs(model: QFormer, params, io) -> dict[str, np.ndarray]:
  forward = jax.jit(functools.partial(model.apply, {"params": params}))
  ids, mask = jnp.asarray(io["input_ids"]), jnp.asarray(io["attention_mask"])
  image = jnp.asarray(io["image_features"])
  tokens, aux = forward(ids, mask, image)
  masked_tokens, masked_aux = forward(ids, mask, image, jnp.asarray(io["image_mask"]))
  return {"embeddings": aux["hidden_states"][0], "hidden_states_layer0": aux["hidden_states"][1],
          "query_output": aux["query_output"], "llama_proj": tokens,
          "query_output_image_masked": masked_aux["query_output"],
          "llama_proj_image_masked": masked_tokens}


def qformer_results(fixture_dir: str) -> list[Result]:
  """One `Result` per array of `qformer_io.npz` (inputs declared)."""
  if absent := missing_files(fixture_dir, "qformer_",
                             ("config.json", "state_dict.npz", "io.npz")):
    return absent
  meta = load_json(fixture_dir, "qformer_config.json")
  config = QFormerConfig.from_bert_config(meta["bert_config"], meta["llm_hidden_size"],
                                          source=f"{fixture_dir}/qformer_config.json")
  params = qformer_conversion.convert_state_dict(
      load_arrays(fixture_dir, "qformer_state_dict.npz"), config)
  io = load_arrays(fixture_dir, "qformer_io.npz")
  with jax.default_matmul_precision("highest"):
    ours = _qformer_outputs(QFormer(config), params, io)
  return compare_io("qformer", io, ours, _QFORMER_INPUTS, tolerance_table(ACTIVATION_TOL))
