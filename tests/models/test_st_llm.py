"""ST-LLM (the released Vriptor's architecture): sizes, the video inputs, config files."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax.models import eva_vit, llama_lm, qformer, st_llm

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
  if video_input == "residual":
    two = model.apply({"params": params}, frames[:, :2], ids, mask, method=model.encode_video)
    two_frames = model.apply({"params": params}, frames[:, :2], ids, mask,
                             method=model.encode_frames)
    np.testing.assert_array_equal(two.reshape(2, 4, 4, 64), two_frames[:, [0, 0, 1, 1]])
  # Every frame reads the same instruction: a frame's tokens do not depend on the others.
  alone = model.apply({"params": params}, frames[:, 1:2], ids, mask, method=model.encode_frames)
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
