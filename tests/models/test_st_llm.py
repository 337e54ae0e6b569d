"""ST-LLM (the released Vriptor's architecture): parity with the official captioner,
the released checkpoint layout, sizes, the video inputs, the Q-Former's tokenizer."""

import dataclasses
import json
import os
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from jax.sharding import PartitionSpec as P
import transformers

import helpers
from vwt_jax.conversion import st_llm as st_llm_conversion
from vwt_jax.conversion.torch_state import ConversionError
from vwt_jax.data import text_tokenizer
from vwt_jax.core import sharding
from vwt_jax.models import eva_vit, llama_lm, qformer, st_llm
from vwt_jax.tools import parity_common, parity_vriptor
from vwt_jax.training import optimizer as optimizer_lib

# The released Mutonix/Vriptor-STLLM: EVA ViT-g with ln_vision 985,897,344, the
# Q-Former with query tokens and llama_proj 188,834,560, Vicuna-7B with the
# added [PAD] (32001 ids) 6,738,423,808, the residual projections
# 4096x1024 + 1024 and 1024x4096 + 4096. In bfloat16 that is the 15.84 GB of
# its two weight files (9.98 + 5.87 GB).
RELEASED_PARAMS = 985_897_344 + 188_834_560 + 6_738_423_808 + 4_195_328 + 4_198_400

TINY = st_llm.STLLMConfig(
    vision=eva_vit.EvaViTConfig(image_size=28, width=32, depth=1, num_heads=4, mlp_dim=48),
    qformer=qformer.QFormerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32, encoder_width=32,
                                  num_query_tokens=4, llm_hidden_size=64),
    lm=llama_lm.LlamaLMConfig.from_variant("tiny", max_positions=64, rope_dynamic_factor=4.0),
    residual_size=4, residual_hidden=16)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_released_size():
  params = nn.meta.unbox(st_llm.abstract_params(st_llm.STLLMConfig()))
  assert _count(params) == RELEASED_PARAMS
  assert sorted(params) == ["down_proj", "lm", "qformer", "up_proj", "vision"]


def test_residual_index_is_the_official_one():
  # `get_residual_index` of stllm/conversation/conversation.py on these sizes.
  assert st_llm.residual_index(4, 6).tolist() == [0, 2, 3, 4]
  assert st_llm.residual_index(64, 64).tolist() == list(range(64))
  assert st_llm.residual_index(3, 10).tolist() == [1, 4, 8]
  # Past the last frame, where the official indexing fails; the model reads the last.
  assert st_llm.residual_index(4, 2).tolist() == [0, 0, 1, 2]
  assert st_llm.residual_index(64, 30).tolist()[-3:] == [29, 29, 30]


@pytest.mark.parametrize("video_input, tokens", [("residual", 16), ("mean", 4), ("all", 24)])
def test_video_inputs(video_input, tokens):
  config = dataclasses.replace(TINY, video_input=video_input)
  model = st_llm.STLLM(config)
  frames = jax.random.normal(jax.random.key(0), (2, 6, 28, 28, 3))
  ids, mask = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32)
  params = model.init(jax.random.key(1), frames, ids, mask, method=model.encode_video)["params"]
  video = model.apply({"params": params}, frames, ids, mask, method=model.encode_video)
  assert video.shape == (2, tokens, 64) == (2, config.num_video_tokens(6), 64)
  per_frame = model.apply({"params": params}, frames, ids, mask, method=model.encode_frames)
  if video_input == "mean":
    np.testing.assert_allclose(video, per_frame.mean(1), rtol=1e-6, atol=1e-6)
  elif video_input == "residual":
    # up_proj starts at zero: an untrained residual input is the kept frames alone.
    np.testing.assert_array_equal(video.reshape(2, 4, 4, 64), per_frame[:, [0, 2, 3, 4]])
    # Two frames for four residual slots: the last index (2) reads frame 1.
    two = model.apply({"params": params}, frames[:, :2], ids, mask, method=model.encode_video)
    np.testing.assert_allclose(two.reshape(2, 4, 4, 64), per_frame[:, [0, 0, 1, 1]],
                               rtol=1e-5, atol=1e-5)
  else:
    # Every frame reads the same instruction: its tokens do not depend on the others.
    alone = model.apply({"params": params}, frames[:, 1:2], ids, mask,
                        method=model.encode_frames)
    np.testing.assert_allclose(alone[:, 0], per_frame[:, 1], rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_checks():
  config = dataclasses.replace(TINY, lm=dataclasses.replace(TINY.lm, dtype=jnp.bfloat16))
  assert st_llm.STLLMConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="video_input='frames'"):
    dataclasses.replace(TINY, video_input="frames")
  with pytest.raises(ValueError, match="qformer.encoder_width=32 but the vision encoder is 48"):
    dataclasses.replace(TINY, vision=dataclasses.replace(TINY.vision, width=48, mlp_dim=96))
  with pytest.raises(ValueError, match="llm_hidden_size=64 but the LLM is 128 wide"):
    dataclasses.replace(TINY, lm=dataclasses.replace(TINY.lm, dim=128))


@pytest.fixture(scope="module")
def vriptor_dir(fixtures_dir):
  return os.path.join(fixtures_dir, "vriptor")


def test_parity_with_the_official_captioner(vriptor_dir):
  """Frames to video tokens, logits and greedy generations (repetition penalty 1.5 and 1)."""
  results = parity_vriptor.stllm_results(vriptor_dir)
  assert [r.line() for r in results if not r.ok] == []
  assert {"stllm/video_tokens", "stllm/logits", "stllm/greedy_penalty_1_5",
          "stllm/qformer_input_ids"} <= {r.name for r in results}


def test_a_released_layout_folder_loads(vriptor_dir, tmp_path):
  config = parity_vriptor.stllm_config(vriptor_dir)
  state_dict = parity_common.load_arrays(vriptor_dir, "stllm_state_dict.npz")
  shutil.copy(os.path.join(vriptor_dir, "stllm_llm_config.json"), tmp_path / "config.json")
  safetensors.numpy.save_file(dict(state_dict), str(tmp_path / "model.safetensors"))
  # Without st_llm_config.json the parts are the released model's, which these weights are not.
  with pytest.raises(ConversionError, match="missing state-dict key: visual_encoder.blocks.2"):
    st_llm_conversion.load_vriptor(str(tmp_path))
  sizes = {k: v for k, v in config.to_dict().items() if k != "lm"}
  (tmp_path / st_llm_conversion.SIDECAR_FILE).write_text(json.dumps(sizes))
  loaded, params = st_llm_conversion.load_vriptor(str(tmp_path), param_dtype=jnp.bfloat16)
  bf16 = dict(param_dtype=jnp.bfloat16)
  assert loaded == dataclasses.replace(
      config, vision=dataclasses.replace(config.vision, **bf16),
      qformer=dataclasses.replace(config.qformer, **bf16),
      lm=dataclasses.replace(config.lm, **bf16))
  assert loaded.lm.rope_dynamic_factor == 4.0 and loaded.lm.max_positions == 8192
  assert params["lm"]["embed_tokens"]["embedding"].dtype == jnp.bfloat16
  assert params["vision"]["cls_token"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      params["up_proj"]["kernel"],
      state_dict["model.stllm_model.up_proj.weight"].T.astype(jnp.bfloat16))


def test_converter_refuses_keys_of_no_part(vriptor_dir):
  config = parity_vriptor.stllm_config(vriptor_dir)
  state_dict = dict(parity_common.load_arrays(vriptor_dir, "stllm_state_dict.npz"))
  with pytest.raises(ConversionError, match=r"unexpected ST-LLM keys.*mvm_decoder\.head\.weight"):
    st_llm_conversion.convert_state_dict(
        {**state_dict, "model.stllm_model.mvm_decoder.head.weight": np.zeros((4, 4))}, config)
  shared = "model.stllm_model.embed_tokens.weight"
  with pytest.raises(ConversionError, match="differs from model.embed_tokens.weight"):
    st_llm_conversion.convert_state_dict({**state_dict, shared: state_dict[shared] + 1}, config)
  del state_dict["model.stllm_model.down_proj.bias"]
  with pytest.raises(ConversionError, match="down_proj.bias"):
    st_llm_conversion.convert_state_dict(state_dict, config)


@pytest.mark.parametrize("text", [
    "Describe the video in detail (Duration: [0.0, 12.5]s, Sample Rate: 0.20s/frame).",
    "Voiceover:\"Héllo, WORLD!\". Based on the video and voiceover, describe it.",
    "tabs\tand  spaces, ünïcödé, 日本語 and emoji 🙂",
])
def test_qformer_tokenizer_equals_transformers_bert(tmp_path, text):
  words = sorted({w for w in re.findall(r"[a-z]+", text.lower())})
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,:!\"()[]", *"0123456789",
           *words, "##s", "##ll", "he", "describe"]
  (tmp_path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
  ours = text_tokenizer.load_qformer_tokenizer(str(tmp_path), 12)
  reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), truncation_side="left")
  reference.add_special_tokens({"bos_token": "[DEC]"})
  expected = reference([text, "short"], padding="longest", truncation=True, max_length=12)
  got = ours.encode_batch([text, "short"])
  assert [e.ids for e in got] == expected["input_ids"]
  assert [e.attention_mask for e in got] == expected["attention_mask"]
  assert ours.token_to_id("[DEC]") == len(reference) - 1


def test_the_released_size_fine_tunes_split_over_eight_devices():
  """Parameters and AdamW moments of the 7.9B under FSDP 4 x tensor 2 (8 fake
  devices), the vision encoder and the Q-Former frozen as ST-LLM's recipes
  freeze them (`llama_proj`, the residual projections and the LLM train)."""
  boxed = st_llm.abstract_params(st_llm.STLLMConfig())
  frozen = ("^vision/", "^qformer/(?!llama_proj/)")
  tx, _ = optimizer_lib.make_optimizer(helpers.load_config("vriptor.py", "stage2").optimizer,
                                       nn.meta.unbox(boxed), 1000, frozen)
  state = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, boxed)
  mesh = sharding.create_mesh((1, 4, 2))
  # The 32001-row vocabulary splits over fsdp alone.
  shardings = sharding.logical_to_sharding(state, mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES)
  assert shardings["params"]["lm"]["lm_head"]["kernel"].spec == P("fsdp", None)

  def per_device(tree, specs):
    return sum(int(np.prod(s.shard_shape(x.shape))) for x, s in
               zip(jax.tree.leaves(nn.meta.unbox(tree)), jax.tree.leaves(specs)))

  params = per_device(state["params"], shardings["params"])
  moments = per_device(state["opt_state"], shardings["opt_state"])
  # Every weight is split 8 ways but the embedding and lm_head (4 ways: 32001
  # rows do not split in 2) and the norms and biases (whole, under 1 %).
  vocab = 2 * 32001 * 4096
  assert RELEASED_PARAMS / 8 <= params < (1.01 * RELEASED_PARAMS + vocab) / 8
  trainable = RELEASED_PARAMS - 985_897_344 - (188_834_560 - 768 * 4096 - 4096)
  # Two moments of each trainable weight, none of the frozen ones.
  assert 2 * trainable / 8 <= moments < 2 * (1.01 * trainable + vocab) / 8
  # float32 weights and moments: 11 GB of each device's memory, against 86 GB on one.
  assert 4 * (params + moments) < 11.2e9
