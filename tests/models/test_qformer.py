"""Vriptor's Q-Former: parity with ST-LLM, conversion, released size, text padding."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.conversion import qformer as qformer_conversion
from vwt_jax.conversion.torch_state import ConversionError
from vwt_jax.models import qformer
from vwt_jax.models.qformer import QFormer, QFormerConfig
from vwt_jax.tools import parity_common
from vwt_jax.tools.parity_vriptor import qformer_results

# Parameters of ST-LLM's Q-Former for EVA ViT-g and Vicuna-7B, counted in a
# scratch environment (transformers 4.28.0) on the official classes: a
# `BertLMHeadModel` of stllm/models/Qformer.py built as `init_Qformer` does
# from a local bert-base-uncased `BertConfig` (encoder_width 1408,
# cross_attention_freq 2, query_length 32), `resize_token_embeddings(30523)`,
# without `cls`, plus `query_tokens` (1, 32, 768) and `llama_proj` 768 -> 4096.
RELEASED_PARAM_COUNT = 188_834_560


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  """(config, official state dict, converted params, io arrays) of the vriptor fixture."""
  path = os.path.join(fixtures_dir, "vriptor")
  meta = parity_common.load_json(path, "qformer_config.json")
  config = QFormerConfig.from_bert_config(meta["bert_config"], meta["llm_hidden_size"])
  state_dict = dict(parity_common.load_arrays(path, "qformer_state_dict.npz"))
  params = qformer_conversion.convert_state_dict(state_dict, config)
  return config, state_dict, params, parity_common.load_arrays(path, "qformer_io.npz")


def test_parity_with_the_official_qformer(fixtures_dir):
  results = qformer_results(os.path.join(fixtures_dir, "vriptor"))
  assert [r.line() for r in results if not r.ok] == []
  names = {r.name for r in results}
  assert {"qformer/query_output", "qformer/llama_proj", "qformer/hidden_states_layer0"} <= names


def test_missing_fixture_files_fail(tmp_path):
  (result,) = qformer_results(str(tmp_path))
  assert not result.ok and "qformer_" in result.name


def test_converter_names_every_mismatch(fixture):
  config, state_dict, _, _ = fixture
  broken = dict(state_dict)
  del broken["Qformer.bert.encoder.layer.2.crossattention.self.key.weight"]
  del broken["llama_proj.bias"]
  # Layer 1 has no cross-attention at cross_attention_freq 2; layer 4 does not exist.
  broken["Qformer.bert.encoder.layer.1.crossattention.self.query.weight"] = np.zeros((32, 32))
  broken["Qformer.bert.encoder.layer.4.output.dense.bias"] = np.zeros(32)
  broken["Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"] = np.zeros((65, 32))
  with pytest.raises(ConversionError) as info:
    qformer_conversion.convert_state_dict(broken, config)
  message = str(info.value)
  for expected in (
      "missing state-dict key: Qformer.bert.encoder.layer.2.crossattention.self.key.weight",
      "missing state-dict key: llama_proj.bias",
      "unexpected state-dict key: Qformer.bert.encoder.layer.1.crossattention.self.query.weight",
      "unexpected state-dict key: Qformer.bert.encoder.layer.4.output.dense.bias",
      "shape mismatch: layer_0/feed_forward_query/intermediate/kernel converted (32, 65)"):
    assert expected in message


def test_converter_reads_a_prefixed_checkpoint_and_skips_other_modules(fixture):
  config, state_dict, params, _ = fixture
  prefix = "model.stllm_model."
  checkpoint = {prefix + k: v for k, v in state_dict.items()}
  # Left unread on purpose: buffers, the masked-LM head, other modules.
  checkpoint.update({
      f"{prefix}Qformer.bert.embeddings.position_ids": np.arange(64)[None],
      f"{prefix}Qformer.cls.predictions.bias": np.zeros(100, np.float32),
      f"{prefix}visual_encoder.cls_token": np.zeros((1, 1, 24), np.float32),
      "model.layers.0.self_attn.q_proj.weight": np.zeros((48, 48), np.float32),
      "lm_head.weight": np.zeros((100, 48), np.float32)})
  converted = qformer_conversion.convert_state_dict(checkpoint, config, prefix=prefix)
  jax.tree.map(np.testing.assert_array_equal, converted, params)
  with pytest.raises(ConversionError, match=f"missing state-dict key: {prefix}query_tokens"):
    del checkpoint[f"{prefix}query_tokens"]
    qformer_conversion.convert_state_dict(checkpoint, config, prefix=prefix)


def test_llm_proj_is_renamed_to_llama_proj(fixture):
  config, state_dict, params, _ = fixture
  renamed = {k.replace("llama_proj.", "llm_proj."): v for k, v in state_dict.items()}
  converted = qformer_conversion.convert_state_dict(renamed, config)
  np.testing.assert_array_equal(converted["llama_proj"]["kernel"], params["llama_proj"]["kernel"])
  # As `STLLMForCausalLM.from_config`, `llm_proj.*` replaces a `llama_proj.*` next to it.
  both = {**state_dict, **renamed, "llama_proj.weight": np.zeros((48, 32), np.float32)}
  converted = qformer_conversion.convert_state_dict(both, config)
  np.testing.assert_array_equal(converted["llama_proj"]["kernel"], params["llama_proj"]["kernel"])


def test_released_size_and_logical_axes():
  abstract = qformer.abstract_params(QFormerConfig())
  leaves = jax.tree_util.tree_leaves(abstract, is_leaf=lambda x: isinstance(
      x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim
             for x in leaves)
  assert sum(int(np.prod(x.value.shape)) for x in leaves) == RELEASED_PARAM_COUNT
  params = nn.meta.unbox(abstract)
  assert [i for i in range(12) if "crossattention" in params[f"layer_{i}"]] == [0, 2, 4, 6, 8, 10]
  assert params["layer_0"]["crossattention"]["key"]["kernel"].shape == (1408, 12, 64)
  assert params["llama_proj"]["kernel"].shape == (768, 4096)


def test_text_padding_does_not_change_the_query_outputs(fixture):
  config, _, params, io = fixture
  ids, mask = io["input_ids"][1], io["attention_mask"][1]
  length = int(mask.sum())
  image = jnp.asarray(io["image_features"][1:])

  @jax.jit
  def queries(ids, mask):
    return QFormer(config).apply({"params": params}, ids[None], mask[None], image)[1][
        "query_output"]

  alone = queries(jnp.asarray(ids[:length]), jnp.ones(length, jnp.int32))
  for padded_length in (ids.shape[0], 20):
    padded = np.zeros(padded_length, np.int64)
    padded[:length] = ids[:length]
    got = queries(jnp.asarray(padded), jnp.asarray(np.arange(padded_length) < length))
    # The same formula over 8 + 4 or more keys: the longest sum is the FFN's
    # 64; 6 dots a layer (7 with cross-attention) for 4 layers, then the norm.
    helpers.assert_allclose_f32(got, alone, reduction=64, depth=4 * 7 + 1)


@pytest.fixture(scope="module")
def bert_config(fixtures_dir):
  meta = parity_common.load_json(os.path.join(fixtures_dir, "vriptor"), "qformer_config.json")
  return meta["bert_config"]


@pytest.mark.parametrize("change, message", [
    ({"position_embedding_type": "relative_key"}, "only 'absolute'"),
    ({"add_cross_attention": False}, "add_cross_attention=False"),
    ({"num_attention_heads": 5}, "not divisible"),
    ({"cross_attention_freq": 0}, "cross_attention_freq=0"),
])
def test_from_bert_config_rejects_what_it_cannot_run(bert_config, change, message):
  with pytest.raises(ValueError, match=message) as info:
    QFormerConfig.from_bert_config({**bert_config, **change}, 48, "x/config.json")
  assert "x/config.json" in str(info.value)


def test_from_bert_config_names_missing_fields(bert_config):
  without = {k: v for k, v in bert_config.items() if k != "encoder_width"}
  with pytest.raises(ValueError, match=r"missing fields \['encoder_width'\]"):
    QFormerConfig.from_bert_config(without, 48)
