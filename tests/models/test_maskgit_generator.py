"""TiTok MaskGIT generators: both model types build, run under jit, convert strictly."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.conversion import torch_state
from vwt_jax.conversion.maskgit_generator import convert_generator
from vwt_jax.models.maskgit_generator import (GENERATOR_VARIANTS, MaskGitGeneratorConfig,
                                              build_generator)

ALLOWED_AXES = {"embed", "mlp", "heads", "kv", "vocab", "token", "length", "conv_in",
                "conv_out", "norm", None}
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            image_seq_len=6, condition_num_classes=5, codebook_size=12)
TOKENS = jnp.asarray([[0, 12, 3, 12, 11, 5], [12, 12, 12, 12, 12, 12]], jnp.int32)
LABELS = jnp.asarray([4, 0], jnp.int32)


def _abstract(model):
  return jax.eval_shape(model.init, jax.random.key(0), TOKENS[:, :model.config.image_seq_len],
                        LABELS)["params"]


def _random_params(model):
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype),
                                nn.unbox(_abstract(model)))


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_forward_null_class_and_dropout(model_type):
  config = MaskGitGeneratorConfig(model_type=model_type, **TINY)
  model = build_generator(config)
  params = _random_params(model)

  @jax.jit
  def run(params, rng):
    def apply(drop, train):
      return model.apply({"params": params}, TOKENS, LABELS, train=train,
                         drop_labels=jnp.full((2,), drop), rngs={"dropout": rng})
    return apply(False, False), apply(True, False), apply(False, True)[0]

  (cond, aux), (uncond, aux_u), train_1 = run(params, jax.random.key(1))
  assert cond.shape == (2, 6, config.codebook_size) and cond.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(cond)))
  np.testing.assert_array_equal(aux["condition_ids"], np.asarray(LABELS) + 13)
  np.testing.assert_array_equal(aux_u["condition_ids"], [config.null_class_id] * 2)
  assert config.null_class_id == 12 + 1 + 5 == config.vocab_size - 1
  # Another condition token, under unit-normal weights: O(1) changes, far past
  # allclose's 1e-5 (as other dropout masks below).
  assert not np.allclose(cond, uncond)
  (cond_2, _), _, train_2 = run(params, jax.random.key(2))
  np.testing.assert_array_equal(cond, cond_2)
  if model_type == "ViT":  # BERT: hidden and attention dropout in training only
    assert not np.allclose(cond, train_1) and not np.allclose(train_1, train_2)
  else:  # UViTBert has no dropout
    # Two evaluations of one formula in one program: the longest sum is the MLP's
    # 32 (and the skip's concat); 3 blocks of 6 dots, the skip, the head.
    helpers.assert_allclose_f32(train_1, cond, reduction=TINY["intermediate_size"], depth=20)


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_params_use_known_logical_axes(model_type):
  abstract = _abstract(build_generator(MaskGitGeneratorConfig(model_type=model_type, **TINY)))
  for leaf in jax.tree_util.tree_leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned)
    assert set(leaf.names) <= ALLOWED_AXES, leaf.names


@pytest.mark.parametrize("variant,millions", [("titok_l32", 177.2), ("titok_s128", 295.0)])
def test_released_sizes(variant, millions):
  config = MaskGitGeneratorConfig.from_variant(variant)
  model = build_generator(config)
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, config.image_seq_len), jnp.int32),
                            jnp.zeros((1,), jnp.int32))["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.unbox(abstract)))
  assert round(count / 1e6, 1) == millions


def test_uvit_mlp_width_follows_the_official_float_ratio():
  # UViTBert hands its blocks mlp_ratio = intermediate / hidden and they build
  # int(hidden * ratio) features: 56 * (61 / 56) is 60.99..., so the official
  # MLP is 60 wide (torch.nn.Linear(56, 60)); ImageBert uses intermediate_size.
  sizes = dict(TINY, hidden_size=56, intermediate_size=61)
  uvit = _abstract(build_generator(MaskGitGeneratorConfig(model_type="UViT", **sizes)))
  assert nn.unbox(uvit)["in_blocks_0"]["mlp"]["c_fc"]["kernel"].shape == (56, 60)
  vit = MaskGitGeneratorConfig(model_type="ViT", **sizes)
  assert vit.mlp_width == 61


def test_from_official_reads_fixture_layout():
  official = {"model": {"vq_model": {"codebook_size": 128}, "generator": {
      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "intermediate_size": 128, "dropout": 0.1, "attn_drop": 0.0, "image_seq_len": 8,
      "condition_num_classes": 10}}}
  config = MaskGitGeneratorConfig.from_official(official, "UViT")
  assert (config.model_type, config.codebook_size, config.attn_drop) == ("UViT", 128, 0.0)
  assert config.mask_token_id == 128 and config.vocab_size == 140
  with pytest.raises(ValueError, match="vq_model"):
    MaskGitGeneratorConfig.from_official({"model": {"generator": {}}})
  with pytest.raises(ValueError, match="model_type"):
    MaskGitGeneratorConfig(model_type="GPT")
  assert GENERATOR_VARIANTS["titok_b64"].image_seq_len == 64


def test_too_long_sequence_is_rejected():
  model = build_generator(MaskGitGeneratorConfig(**dict(TINY, image_seq_len=4)))
  with pytest.raises(ValueError, match="image_seq_len=4"):
    jax.eval_shape(model.init, jax.random.key(0), TOKENS, LABELS)


@pytest.fixture(scope="module")
def imagebert_fixture(fixtures_dir):
  stem = os.path.join(fixtures_dir, "titok", "generator_imagebert")
  with open(stem + "_config.json") as f:
    meta = json.load(f)
  config = MaskGitGeneratorConfig.from_official(meta["official_config"], meta["model_type"])
  return torch_state.load_state_dict(stem + "_state_dict.npz"), config


def test_converter_reports_missing_key(imagebert_fixture):
  state_dict, config = imagebert_fixture
  state_dict = dict(state_dict)
  del state_dict["model.encoder.layer.1.attention.self.key.bias"]
  with pytest.raises(torch_state.ConversionError,
                     match=r"missing state-dict key: model\.encoder\.layer\.1\.attention\.self"
                           r"\.key\.bias"):
    convert_generator(state_dict, config)


def test_converter_rejects_wrong_model_type(imagebert_fixture):
  state_dict, config = imagebert_fixture
  with pytest.raises(torch_state.ConversionError, match="unexpected state-dict key: model\\."):
    convert_generator(state_dict, dataclasses.replace(config, model_type="UViT"))


def test_converter_ignores_hf_buffers(imagebert_fixture):
  state_dict, config = imagebert_fixture
  state_dict = dict(state_dict, **{"model.embeddings.position_ids": np.arange(9)[None]})
  params = convert_generator(state_dict, config)
  assert params["layer_0"]["attention"]["query"]["kernel"].shape == (64, 4, 16)
