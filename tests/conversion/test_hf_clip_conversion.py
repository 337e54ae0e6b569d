"""transformers CLIP vision towers -> CLIPVisionTower: same outputs as `CLIPVisionModel`."""

import jax
import numpy as np
import pytest
import torch
import transformers

import helpers
from vwt_jax.conversion import hf_checkpoint, hf_clip
from vwt_jax.conversion.torch_state import ConversionError
from vwt_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionTower

TINY = CLIPVisionConfig.from_variant("tiny")
HF_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 image_size=32, patch_size=8)
HF_TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
               eos_token_id=1, pad_token_id=1)
# Ours against transformers in float32: the longest sum is the 8x8x3 patch
# embedding; the patch embedding, then 6 dots a layer for 2 layers, then the
# pooled token's LayerNorm. Every compared output is held to the deepest.
TOL = dict(reduction=8 * 8 * 3, depth=14)


def _perturbed(model):
  """Adds noise to every weight so LayerNorm scales/biases are not the identity."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


@jax.jit
def _forward(params, images):
  return CLIPVisionTower(TINY, feature_layer=-1).apply({"params": params}, images)


@pytest.fixture(scope="module")
def pixels():
  return np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)


def _reference(vision_model, pixels):
  with torch.no_grad():
    out = vision_model(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
  return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states], (
      out.pooler_output.numpy())


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = _perturbed(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**HF_VISION)))
  path = tmp_path_factory.mktemp("clip_vision")
  model.save_pretrained(path)
  return path, model


def test_vision_model_matches_transformers(vision_dir, pixels):
  path, model = vision_dir
  config, params = hf_clip.load_hf_clip_vision(path)
  assert config == TINY
  last, states, pooled = _reference(model, pixels)
  feats, aux = _forward(params, pixels.transpose(0, 2, 3, 1))
  helpers.assert_allclose_f32(feats, last, **TOL)
  assert len(aux["hidden_states"]) == len(states) == 3
  for ours, theirs in zip(aux["hidden_states"], states):
    helpers.assert_allclose_f32(ours, theirs, **TOL)
  helpers.assert_allclose_f32(aux["pooled"], pooled, **TOL)


def test_full_clip_model_dir_loads_its_vision_tower(tmp_path, pixels):
  torch.manual_seed(1)
  config = transformers.CLIPConfig(vision_config=HF_VISION, text_config=HF_TEXT,
                                   projection_dim=8)
  model = _perturbed(transformers.CLIPModel(config))
  model.save_pretrained(tmp_path)
  loaded_config, params = hf_clip.load_hf_clip_vision(tmp_path)
  assert loaded_config == TINY
  last, _, pooled = _reference(model.vision_model, pixels)
  feats, aux = _forward(params, pixels.transpose(0, 2, 3, 1))
  helpers.assert_allclose_f32(feats, last, **TOL)
  helpers.assert_allclose_f32(aux["pooled"], pooled, **TOL)


def test_prefixed_names_and_position_ids_buffer(vision_dir):
  """transformers < 5 saved CLIPVisionModel under `vision_model.`, with the position_ids buffer."""
  path, _ = vision_dir
  state_dict = hf_checkpoint.read_state_dict(path)
  old = {f"vision_model.{k}": v for k, v in state_dict.items()}
  old["vision_model.embeddings.position_ids"] = np.arange(17)[None]
  expected = hf_clip.convert_state_dict(state_dict, TINY)
  converted = hf_clip.convert_state_dict(old, TINY)
  jax.tree.map(np.testing.assert_array_equal, converted, expected)


def test_wrong_keys_fail_naming_them(vision_dir):
  path, _ = vision_dir
  state_dict = hf_checkpoint.read_state_dict(path)
  del state_dict["encoder.layers.1.mlp.fc2.bias"]
  state_dict["encoder.layers.2.mlp.fc1.weight"] = np.zeros((64, 32), np.float32)
  state_dict["embeddings.position_embedding.weight"] = np.zeros((10, 32), np.float32)
  with pytest.raises(ConversionError) as info:
    hf_clip.convert_state_dict(state_dict, TINY)
  message = str(info.value)
  assert "missing state-dict key: encoder.layers.1.mlp.fc2.bias" in message
  assert "unexpected state-dict key: encoder.layers.2.mlp.fc1.weight" in message
  assert "shape mismatch: position_embedding converted (10, 32) vs model (17, 32)" in message
