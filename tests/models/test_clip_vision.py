"""CLIP vision tower: config parsing, named variants, outputs, logical axes, bfloat16."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.models import clip_vision
from vwt_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionTower

TINY = CLIPVisionConfig.from_variant("tiny")
# A transformers CLIPVisionConfig.to_dict() of ViT-L/14@336px, as LLaVA-1.5 ships it.
VIT_L_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
             "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336,
             "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-5,
             "hidden_act": "quick_gelu", "attention_dropout": 0.0, "projection_dim": 768}


def test_from_hf_config_reads_a_vision_config():
  cfg = CLIPVisionConfig.from_hf_config(VIT_L_336)
  assert cfg == CLIPVisionConfig.from_variant("ViT-L/14@336px")
  assert (cfg.num_patches, cfg.head_dim) == (576, 64)


def test_from_hf_config_takes_the_vision_part_of_a_clip_config():
  clip = {"model_type": "clip", "projection_dim": 768,
          "text_config": {"model_type": "clip_text_model", "hidden_size": 768},
          "vision_config": {**VIT_L_336, "image_size": [224, 224]}}
  assert CLIPVisionConfig.from_hf_config(clip) == CLIPVisionConfig.from_variant("ViT-L/14")
  # transformers builds the tower from a legacy `vision_config_dict` alone when present.
  legacy = {**clip, "vision_config_dict": {"hidden_size": 48, "intermediate_size": 64}}
  assert CLIPVisionConfig.from_hf_config(legacy) == CLIPVisionConfig(
      hidden_size=48, intermediate_size=64, num_hidden_layers=12, num_attention_heads=12,
      patch_size=32)


def test_from_hf_config_fills_transformers_defaults():
  # Older transformers wrote only the fields that differ from the defaults.
  cfg = CLIPVisionConfig.from_hf_config({"model_type": "clip_vision_model", "patch_size": 16,
                                         "hidden_act": "gelu"})
  assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.image_size, cfg.patch_size,
          cfg.hidden_act) == (768, 12, 224, 16, "gelu")


@pytest.mark.parametrize("change, message", [
    ({"model_type": "siglip_vision_model"}, "model_type='siglip_vision_model'"),
    ({"hidden_act": "mish"}, "hidden_act='mish'"),
    ({"image_size": [336, 224]}, r"image_size=\[336, 224\]"),
    ({"attention_dropout": 0.1}, "attention_dropout=0.1"),
    ({"num_attention_heads": 5}, "not divisible"),
    ({"patch_size": 15}, "patch_size=15"),
])
def test_from_hf_config_rejects_what_it_cannot_run(change, message):
  with pytest.raises(ValueError, match=message) as info:
    CLIPVisionConfig.from_hf_config({**VIT_L_336, **change}, "x/config.json")
  assert "x/config.json" in str(info.value)


def test_unknown_variant():
  with pytest.raises(ValueError, match="ViT-L/14@336px"):
    CLIPVisionConfig.from_variant("ViT-H/14")


@pytest.fixture(scope="module")
def tower():
  """Random params (no compiled init), images and the outputs of two taps, in one jit."""
  rng = np.random.default_rng(0)
  abstract = clip_vision.abstract_params(TINY)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype),
                        nn.meta.unbox(abstract))
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)

  def run(params, images):
    variables = {"params": params}
    default = CLIPVisionTower(TINY).apply(variables, images)
    first_patches, _ = CLIPVisionTower(TINY, feature_layer=0, drop_cls=True).apply(
        variables, images)
    return default, first_patches

  return abstract, params, images, jax.device_get(jax.jit(run)(params, images))


def _layer_norm(x, norm_params, eps=TINY.layer_norm_eps):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * norm_params["scale"] + norm_params["bias"]


def test_outputs_follow_feature_layer_and_drop_cls(tower):
  _, params, _, ((feats, aux), first_patches) = tower
  states = aux["hidden_states"]
  assert len(states) == TINY.num_hidden_layers + 1
  assert all(s.shape == (2, 17, 32) for s in states)
  np.testing.assert_array_equal(feats, states[-2])
  # One LayerNorm of the same float32 input, ours and numpy's: mean and variance
  # over the 32 features.
  helpers.assert_allclose_f32(aux["pooled"], _layer_norm(states[-1][:, 0],
                                                         params["post_layernorm"]),
                              reduction=32, depth=2)
  np.testing.assert_array_equal(first_patches, states[0][:, 1:])


def test_patches_are_embedded_in_raster_order(tower):
  _, params, images, ((_, aux), _) = tower
  patch = images[0, 8:16, 16:24]  # row 1, column 2 of the 4x4 grid: patch 1 * 4 + 2 = 6
  embedded = (np.einsum("hwc,hwcd->d", patch, params["patch_embedding"]["kernel"])
              + params["position_embedding"][1 + 6])
  # The 8x8x3 patch sum (conv vs einsum), then the LayerNorm's mean and variance.
  helpers.assert_allclose_f32(aux["hidden_states"][0][0, 1 + 6],
                              _layer_norm(embedded, params["pre_layrnorm"]),
                              reduction=8 * 8 * 3, depth=3)


@pytest.mark.parametrize("kwargs, images_shape, message", [
    (dict(feature_layer=3), (1, 32, 32, 3), "feature_layer=3"),
    (dict(), (1, 24, 24, 3), r"expected \(N, 32, 32, 3\)"),
])
def test_rejects_bad_layer_and_image_size(tower, kwargs, images_shape, message):
  _, params, _, _ = tower
  with pytest.raises(ValueError, match=message):
    CLIPVisionTower(TINY, **kwargs).apply({"params": params}, jnp.zeros(images_shape))


def test_every_param_has_logical_axes(tower):
  abstract, params, _, _ = tower
  leaves = jax.tree_util.tree_leaves(abstract,
                                     is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  allowed = {"embed", "mlp", "heads", "kv", "length", "norm", None}
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(set(x.names) <= allowed and len(x.names) == x.value.ndim for x in leaves)
  assert params["layers_1"]["self_attn"]["query"]["kernel"].shape == (32, 4, 8)
  assert params["layers_0"]["fc1"]["kernel"].shape == (32, 64)
  assert params["patch_embedding"]["kernel"].shape == (8, 8, 3, 32)
  assert "bias" not in params["patch_embedding"]


def test_bfloat16_compute_stays_close(tower):
  _, params, images, ((reference, _), _) = tower
  bf16 = dataclasses.replace(TINY, dtype=jnp.bfloat16)
  feats, aux = jax.jit(CLIPVisionTower(bf16).apply)({"params": params}, images)
  assert feats.dtype == aux["pooled"].dtype == jnp.bfloat16
  scale = float(np.abs(reference).max())
  # The penultimate layer's output: the patch embedding and 6 dots of layer 0.
  np.testing.assert_allclose(np.asarray(feats, np.float32), reference,
                             atol=helpers.lowp_atol(jnp.bfloat16, scale, depth=7))
