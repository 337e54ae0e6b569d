"""The captioner: visual tokens at the visual slots, its LM part against transformers, loading."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import helpers
from vwt_jax.conversion import hf_clip, hf_llama
from vwt_jax.families import captioner as captioner_family
from vwt_jax.models import captioner
from vwt_jax.models.clip_vision import CLIPVisionConfig
from vwt_jax.models.llama_lm import LlamaLMConfig

HF_LLAMA = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-6,
                max_position_embeddings=64)
HF_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 image_size=32, patch_size=8)
SEQ = 12
# Row 0: the 4 visual slots in one run after two tokens; row 1: split in two runs.
VISUAL = np.zeros((2, SEQ), bool)
VISUAL[0, 2:6] = True
VISUAL[1, [1, 2, 7, 8]] = True


def _randomised(model):
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  torch.manual_seed(0)
  llm = _randomised(transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_LLAMA)))
  llm_dir = tmp_path_factory.mktemp("llama")
  llm.save_pretrained(str(llm_dir))
  vision = _randomised(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**HF_VISION)))
  vision_dir = tmp_path_factory.mktemp("clip")
  vision.save_pretrained(str(vision_dir))
  return str(llm_dir), str(vision_dir), llm


@pytest.fixture(scope="module")
def config():
  lm = LlamaLMConfig.from_hf_config(transformers.LlamaConfig(**HF_LLAMA).to_dict())
  return captioner.CaptionerConfig(
      vision=CLIPVisionConfig.from_variant("tiny"), lm=lm, num_queries=2, projector_layers=1,
      projector_heads=4, num_frames=2)


@pytest.fixture(scope="module")
def loaded(hf_dirs, config):
  """(random projector params, all params: the HF decoder and tower + that projector)."""
  llm_dir, vision_dir, _ = hf_dirs
  rng = np.random.default_rng(0)
  shapes = nn.meta.unbox(captioner.abstract_params(config)["projector"])
  projector = jax.tree.map(lambda s: 0.2 * rng.normal(size=s.shape).astype(np.float32), shapes)
  return projector, captioner_family.load_pretrained(config, llm_dir, vision_dir,
                                                     {"projector": projector})


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  frames = rng.normal(size=(2, 2, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(0, HF_LLAMA["vocab_size"], (2, SEQ)).astype(np.int32)
  return jnp.asarray(frames), jnp.asarray(ids), jnp.asarray(VISUAL)


def _apply(config, params, *args, method=None, **kwargs):
  model = captioner.Captioner(config)
  return model.apply({"params": params}, *args,
                     method=None if method is None else getattr(model, method), **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, frames, ids, visual):
  """(logits, embed_inputs, encode_frames) in one compiled function."""
  logits, _ = _apply(config, params, frames, ids, visual)
  return (logits, _apply(config, params, frames, ids, visual, method="embed_inputs"),
          _apply(config, params, frames, method="encode_frames"))


def test_config_sizes_and_json_round_trip(config):
  assert (config.vision_tokens, config.tokens_per_frame, config.num_visual_tokens()) == (16, 2, 4)
  assert config.num_visual_tokens(3) == 6
  assert captioner.CaptionerConfig.from_json(config.to_json()) == config
  with pytest.raises(ValueError, match="projector='pool'"):
    dataclasses.replace(config, projector="pool")


def test_load_pretrained_fills_lm_and_vision_only(hf_dirs, config, loaded):
  llm_dir, vision_dir, _ = hf_dirs
  projector, params = loaded
  assert sorted(params) == ["lm", "projector", "vision"]
  jax.tree.map(np.testing.assert_array_equal, params["lm"], hf_llama.load_hf_llama(llm_dir)[1])
  jax.tree.map(np.testing.assert_array_equal, params["vision"],
               hf_clip.load_hf_clip_vision(vision_dir)[1])
  assert params["projector"] is projector
  only = captioner_family.load_pretrained(config, vision_dir=vision_dir)
  assert sorted(only) == ["vision"]


def test_load_pretrained_refuses_another_model(hf_dirs, config):
  llm_dir, _, _ = hf_dirs
  wider = dataclasses.replace(config, lm=dataclasses.replace(config.lm, ffn_hidden=128))
  with pytest.raises(ValueError, match=r"llama.*ffn_hidden=96 \(captioner: 128\)"):
    captioner_family.load_pretrained(wider, llm_dir)
  # The context may be extended: more positions, linearly scaled RoPE.
  longer = dataclasses.replace(config, lm=dataclasses.replace(
      config.lm, max_positions=128, rope_linear_factor=2.0))
  assert sorted(captioner_family.load_pretrained(longer, llm_dir)) == ["lm"]


def test_embed_inputs_puts_visual_tokens_at_the_visual_slots(config, loaded, inputs):
  _, params = loaded
  frames, ids, visual = inputs
  _, embeds, tokens = map(np.asarray, _forward(config, params, frames, ids, visual))
  table = np.asarray(params["lm"]["embed_tokens"]["embedding"])
  assert embeds.shape == (2, SEQ, 64) and tokens.shape == (2, 4, 64)
  for b in range(2):
    np.testing.assert_array_equal(embeds[b, VISUAL[b]], tokens[b])
    np.testing.assert_array_equal(embeds[b, ~VISUAL[b]], table[np.asarray(ids)[b, ~VISUAL[b]]])
  # Frame t's resampled tokens are [t*Q, (t+1)*Q): changing frame 1 leaves frame 0's.
  other = np.asarray(_forward(config, params, frames.at[:, 1].set(0.0), ids, visual)[2])
  np.testing.assert_array_equal(other[:, :2], tokens[:, :2])
  # A zeroed frame changes its tokens by O(1), far past allclose's 1e-5.
  assert not np.allclose(other[:, 2:], tokens[:, 2:])


def test_a_wrong_number_of_visual_slots_is_refused(config, loaded, inputs):
  _, params = loaded
  frames, ids, _ = inputs
  visual = VISUAL.copy()
  visual[1, 8] = False
  with pytest.raises(ValueError, match=r"rows \[1\] have \[3\] visual slots.*4 visual tokens"):
    _apply(config, params, frames, ids, jnp.asarray(visual), method="embed_inputs")


def test_logits_are_the_transformers_llama_on_the_spliced_embeddings(hf_dirs, config, loaded,
                                                                      inputs):
  _, _, hf_model = hf_dirs
  _, params = loaded
  logits, embeds, _ = _forward(config, params, *inputs)
  with torch.no_grad():
    ref = hf_model(inputs_embeds=torch.from_numpy(np.array(embeds))).logits.numpy()
  assert logits.dtype == jnp.float32
  # The same LM on the same embeddings, ours vs transformers: the longest sum is
  # the MLP's 96; 6 dots a layer for 2 layers, the final norm and the head.
  helpers.assert_allclose_f32(np.asarray(logits), ref, reduction=HF_LLAMA["intermediate_size"],
                              depth=2 * 6 + 2)
