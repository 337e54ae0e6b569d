"""Vriptor (ST-LLM) against the official code: the EVA ViT-g vision encoder,
the Q-Former and the whole captioner (tests/fixtures/README.md, `vriptor/`).

`run_vriptor` compares all three. `eva_vit_results` reads `eva_vit_{config.json,state_dict.npz,io.npz}`: the
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

`stllm_results` reads `stllm_*`: the whole model as the official demo's
`Chat` runs it, converted from `STLLMForCausalLM`'s state dict (with the LLaMA
`config.json` it saves): the Q-Former's instruction ids from the BERT vocabulary,
every stage from the frames to the video tokens, the logits over [video;
question], and two greedy generations with their per-step logits, with the
repetition penalty the demo forces (1.5) and without.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import eva_vit as eva_vit_conversion
from vwt_jax.conversion import qformer as qformer_conversion
from vwt_jax.conversion import st_llm as st_llm_conversion
from vwt_jax.data import text_tokenizer
from vwt_jax.models.eva_vit import EvaViT, EvaViTConfig
from vwt_jax.models import llama_lm
from vwt_jax.models import st_llm
from vwt_jax.models.qformer import QFormer, QFormerConfig
from vwt_jax.sampling import decode
from vwt_jax.sampling import text_generation
from vwt_jax.tools.parity_common import (ACTIVATION_TOL, Result, compare_io, load_arrays,
                                         load_json, missing_files, tolerance_table)

_EVA_VIT_INPUTS = ("images",)
_QFORMER_INPUTS = ("input_ids", "attention_mask", "image_features", "image_mask")


def run_vriptor(fixture_dir: str) -> list[Result]:
  """Every array of the vision encoder's, the Q-Former's and the whole model's fixtures."""
  return eva_vit_results(fixture_dir) + qformer_results(fixture_dir) + stllm_results(fixture_dir)


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


_STLLM_FILES = ("config.json", "llm_config.json", "bert_vocab.txt", "state_dict.npz", "io.npz")
_STLLM_INPUTS = ("frames", "question_ids")
# Derived from the compared step scores: the gap between the two best tokens.
_STLLM_DESCRIPTIONS = ("margins_penalty_1_5", "margins_penalty_1_0")


def stllm_config(fixture_dir: str) -> st_llm.STLLMConfig:
  """The `STLLMConfig` of the `stllm_*` fixture."""
  meta = load_json(fixture_dir, "stllm_config.json")
  vision = EvaViTConfig.from_official(meta["vision"], meta["vision"]["ln_vision_eps"],
                                      source="stllm_config.json")
  llm = load_json(fixture_dir, "stllm_llm_config.json")
  return st_llm.STLLMConfig(
      vision=vision,
      qformer=QFormerConfig.from_bert_config(meta["bert_config"], llm["hidden_size"],
                                             source="stllm_config.json"),
      lm=llama_lm.LlamaLMConfig.from_hf_config(llm, "stllm_llm_config.json"),
      video_input=meta["video_input"], residual_size=meta["residual_size"],
      residual_hidden=meta["residual_hidden"])


def _stllm_generate(model, params, embeds, penalty, bos, steps):
  """Greedy tokens and each step's raw and penalized logits, as transformers'
  `generate(inputs_embeds=...)` whose BOS the penalty counts."""
  fns = decode.LogitsFns(*text_generation.module_fns(model))
  seen = jnp.zeros((1, model.config.lm.vocab_size), bool).at[:, bos].set(True)

  def run(params, embeds):
    cache = llama_lm.init_cache(model.config.lm, 1, embeds.shape[1] + steps - 1)
    tokens, _, logits = decode.decode_loop(
        fns, params, embeds, None, cache, jax.random.key(0), 1.0, 1.0, num_tokens=steps,
        start=embeds.shape[1], greedy=True, top_k=0, use_top_p=False, return_logits=True,
        repetition_penalty=penalty, seen=seen)
    return tokens, logits

  tokens, logits = jax.jit(run)(params, embeds)
  tokens, logits = np.asarray(tokens), np.asarray(logits)
  # The tokens seen before each step: the BOS and the tokens drawn so far.
  marks = np.zeros(logits.shape, bool)
  marks[:, :, bos] = True
  for step in range(1, steps):
    marks[0, step:, tokens[0, step - 1]] = True
  scores = np.asarray(decode.penalize_repeats(jnp.asarray(logits), marks, penalty))
  return np.concatenate([[[bos]], tokens], axis=1), logits, scores


def stllm_results(fixture_dir: str) -> list[Result]:
  """One `Result` per array of `stllm_io.npz`."""
  if absent := missing_files(fixture_dir, "stllm_", _STLLM_FILES):
    return absent
  meta = load_json(fixture_dir, "stllm_config.json")
  config = stllm_config(fixture_dir)
  params = st_llm_conversion.convert_state_dict(
      load_arrays(fixture_dir, "stllm_state_dict.npz"), config)
  io = load_arrays(fixture_dir, "stllm_io.npz")
  bert = text_tokenizer.load_qformer_tokenizer(
      os.path.join(fixture_dir, "stllm_bert_vocab.txt"),
      meta["bert_tokenizer"]["max_bert_txt_len"])
  num_frames = len(io["frames"])
  encoded = bert.encode_batch([meta["prompt"]] * num_frames)
  text_ids = np.array([e.ids for e in encoded], np.int32)
  text_mask = np.array([e.attention_mask for e in encoded], np.int32)
  model = st_llm.STLLM(config)
  frames = jnp.asarray(io["frames"].transpose(0, 2, 3, 1))[None]
  bos = load_json(fixture_dir, "stllm_llm_config.json")["bos_token_id"]

  def stages(module, frames, ids, mask, question):
    features = module.vision(frames[0])
    _, aux = module.qformer(ids, mask, features)
    video = module.encode_video(frames, ids[:1], mask[:1])
    embeds = jnp.concatenate([video, module.embed(question)], axis=1)
    return (features, aux["query_output"], module.encode_frames(frames, ids[:1], mask[:1])[0],
            video, embeds, module.lm(inputs_embeds=embeds)[0])

  variables = {"params": params}
  with jax.default_matmul_precision("highest"):
    features, queries, frame_tokens, video, embeds, logits = jax.jit(
        functools.partial(model.apply, method=stages))(
            variables, frames, jnp.asarray(text_ids), jnp.asarray(text_mask),
            jnp.asarray(io["question_ids"]))
    ours = {"qformer_input_ids": text_ids, "qformer_attention_mask": text_mask,
            "image_embeds": features, "query_output": queries, "frame_tokens": frame_tokens,
            "residual_index": st_llm.residual_index(config.residual_size, num_frames),
            "video_tokens": video, "inputs_embeds": embeds, "logits": logits}
    steps = io["greedy_penalty_1_5"].shape[1] - 1
    for penalty, suffix in ((1.5, "1_5"), (1.0, "1_0")):
      tokens, raw, scores = _stllm_generate(model, params, embeds, penalty, bos, steps)
      ours.update({f"greedy_penalty_{suffix}": tokens,
                   f"raw_step_logits_penalty_{suffix}": raw,
                   f"scores_penalty_{suffix}": scores})
      if penalty != 1.0:
        ours["answer_output_token"] = tokens[0, 1:]
  results = compare_io("stllm", {k: v for k, v in io.items() if k not in _STLLM_DESCRIPTIONS},
                       ours, _STLLM_INPUTS, tolerance_table(ACTIVATION_TOL))
  return results + [Result.declared(f"stllm/{name}", "description")
                    for name in _STLLM_DESCRIPTIONS if name in io]
