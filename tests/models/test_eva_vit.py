"""EVA ViT-g encoder: parity with the official code, conversion errors, ViT-g shapes, bfloat16."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.conversion import eva_vit as conversion
from vwt_jax.conversion.torch_state import ConversionError
from vwt_jax.models import eva_vit
from vwt_jax.models.eva_vit import EvaViT, EvaViTConfig
from vwt_jax.tools import parity_common, parity_vriptor

# create_eva_vit_g's encoder (985,894,528 weights, counted on the official
# module) and ln_vision (2 * 1408).
VIT_G_PARAMS = 985_894_528 + 2 * 1408


@pytest.fixture(scope="module")
def vriptor_dir(fixtures_dir):
  return os.path.join(fixtures_dir, "vriptor")


@pytest.fixture(scope="module")
def fixture(vriptor_dir):
  """(config, official state dict, io arrays) of the tiny official encoder."""
  meta = parity_common.load_json(vriptor_dir, "eva_vit_config.json")
  config = EvaViTConfig.from_official(meta["vision_transformer"], meta["ln_vision_eps"])
  return (config, parity_common.load_arrays(vriptor_dir, "eva_vit_state_dict.npz"),
          parity_common.load_arrays(vriptor_dir, "eva_vit_io.npz"))


def test_matches_the_official_encoder(vriptor_dir):
  results = parity_vriptor.eva_vit_results(vriptor_dir)
  assert [r.name for r in results] == [
      "eva_vit/images", "eva_vit/block0_out", "eva_vit/features", "eva_vit/ln_vision_out",
      "eva_vit/pos_embed_interpolated"]
  assert all(r.ok for r in results), [r.line() for r in results if not r.ok]


def test_parity_reports_absent_fixtures(tmp_path):
  [result] = parity_vriptor.eva_vit_results(str(tmp_path))
  assert not result.ok and "eva_vit_" in result.name


def test_config_from_state_dict_reads_the_sizes(fixture):
  config, state_dict, _ = fixture
  assert conversion.config_from_state_dict(state_dict, num_heads=4) == config
  assert (config.grid_size, config.num_tokens, config.mlp_dim) == (3, 10, 139)
  with pytest.raises(ConversionError, match="visual_encoder.pos_embed is missing"):
    conversion.config_from_state_dict(
        {k: v for k, v in state_dict.items() if not k.endswith("pos_embed")})


def test_vriptor_checkpoint_prefixes_convert_the_same(fixture):
  config, state_dict, _ = fixture
  renamed = {"model.stllm_model." + k: v for k, v in state_dict.items()}
  # The rest of a Vriptor checkpoint is not the encoder's to read.
  renamed["model.stllm_model.query_tokens"] = np.zeros((1, 32, 768), np.float32)
  ours = conversion.convert_state_dict(renamed, config, conversion.VRIPTOR_PREFIX,
                                       conversion.VRIPTOR_LN_VISION_PREFIX)
  jax.tree.map(np.testing.assert_array_equal, ours,
               conversion.convert_state_dict(state_dict, config))


def test_conversion_names_every_missing_and_unexpected_key(fixture):
  config, state_dict, _ = fixture
  broken = {k: v for k, v in state_dict.items()
            if k not in ("visual_encoder.blocks.1.attn.q_bias", "ln_vision.bias")}
  broken["visual_encoder.blocks.0.gamma_1"] = np.ones(32, np.float32)
  broken["visual_encoder.norm.weight"] = np.ones(32, np.float32)
  broken["visual_encoder.blocks.0.mlp.fc2.bias"] = np.zeros(31, np.float32)
  with pytest.raises(ConversionError) as info:
    conversion.convert_state_dict(broken, config)
  message = str(info.value)
  for line in ("missing state-dict key: visual_encoder.blocks.1.attn.q_bias",
               "missing state-dict key: ln_vision.bias",
               "unexpected state-dict key: visual_encoder.blocks.0.gamma_1",
               "unexpected state-dict key: visual_encoder.norm.weight",
               "shape mismatch: blocks_0/fc2/bias converted (31,) vs model (32,)"):
    assert line in message, message


def test_conversion_rejects_a_qkv_weight_of_other_rows(fixture):
  config, state_dict, _ = fixture
  broken = {**state_dict, "visual_encoder.blocks.0.attn.qkv.weight": np.zeros((95, 32))}
  with pytest.raises(ConversionError, match=r"blocks.0.attn.qkv.weight has shape \(95, 32\)"):
    conversion.convert_state_dict(broken, config)


@pytest.mark.parametrize("change, message", [
    ({"init_values": 0.1}, "init_values=0.1"),
    ({"use_rel_pos_bias": True}, "use_rel_pos_bias=True"),
    ({"num_heads": 5}, "not divisible"),
])
def test_from_official_rejects_what_it_cannot_run(vriptor_dir, change, message):
  meta = parity_common.load_json(vriptor_dir, "eva_vit_config.json")
  with pytest.raises(ValueError, match=message) as info:
    EvaViTConfig.from_official({**meta["vision_transformer"], **change}, source="x.json")
  assert "x.json" in str(info.value)


def test_vit_g_shapes_and_parameter_count():
  abstract = eva_vit.abstract_params(EvaViTConfig())
  leaves = jax.tree_util.tree_leaves(abstract,
                                     is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  allowed = {"embed", "mlp", "heads", "kv", "length", "norm", None}
  assert all(set(x.names) <= allowed and len(x.names) == x.value.ndim for x in leaves)
  shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract))
  assert sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(
      x, tuple))) == VIT_G_PARAMS
  assert shapes["patch_embed"] == {"kernel": (14, 14, 3, 1408), "bias": (1408,)}
  assert shapes["pos_embed"] == (257, 1408) and shapes["cls_token"] == (1408,)
  last = shapes["blocks_38"]
  assert "blocks_39" not in shapes
  assert last["attn"]["query"] == {"kernel": (1408, 16, 88), "bias": (16, 88)}
  assert last["attn"]["key"] == {"kernel": (1408, 16, 88)}
  assert last["attn"]["out"] == {"kernel": (16, 88, 1408), "bias": (1408,)}
  assert last["fc1"]["kernel"] == (1408, 6144)
  assert shapes["ln_vision"] == {"scale": (1408,), "bias": (1408,)}


def test_rejects_images_of_another_size(fixture):
  config, state_dict, _ = fixture
  params = conversion.convert_state_dict(state_dict, config)
  with pytest.raises(ValueError, match=r"expected \(B, 42, 42, 3\)"):
    EvaViT(config).apply({"params": params}, jnp.zeros((1, 28, 28, 3)))


def test_bfloat16_compute_stays_close(fixture):
  config, state_dict, io = fixture
  params = conversion.convert_state_dict(state_dict, config)
  images = jnp.asarray(io["images"].transpose(0, 2, 3, 1))
  bf16 = dataclasses.replace(config, dtype=jnp.bfloat16)
  out = jax.jit(EvaViT(bf16).apply)({"params": params}, images)
  assert out.dtype == jnp.bfloat16
  reference = io["ln_vision_out"]
  # The patch embedding, 5 dependent dots in each of the 2 blocks and
  # ln_vision, which scales the features' errors by its gain over their spread.
  gain = float(np.abs(params["ln_vision"]["scale"]).max() / io["features"].std(-1).min())
  np.testing.assert_allclose(
      np.asarray(out, np.float32), reference,
      atol=helpers.lowp_atol(jnp.bfloat16, float(np.abs(io["features"]).max()) * gain,
                             depth=11))
