"""BERT/MPNet text encoders: config parsing, MPNet buckets, padding, pooling, logical axes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

import helpers
from vwt_jax.models import layers
from vwt_jax.models import text_encoders
from vwt_jax.models.text_encoders import TextEncoder, TextEncoderConfig

BERT = TextEncoderConfig(family="bert", vocab_size=50, hidden_size=24, num_layers=2, num_heads=3,
                         intermediate_size=40, layer_norm_eps=1e-7, max_position_embeddings=32,
                         type_vocab_size=2)
MPNET = TextEncoderConfig(family="mpnet", vocab_size=50, hidden_size=24, num_layers=2,
                          num_heads=3, intermediate_size=40, layer_norm_eps=1e-5,
                          max_position_embeddings=34)


def test_from_hf_config_reads_the_sizes():
  cfg = TextEncoderConfig.from_hf_config({
      "model_type": "mpnet", "vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12,
      "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
      "layer_norm_eps": 1e-05, "max_position_embeddings": 514,
      "relative_attention_num_buckets": 32})
  assert (cfg.family, cfg.num_layers, cfg.head_dim, cfg.layer_norm_eps) == ("mpnet", 12, 64, 1e-5)
  assert cfg.max_length == 512  # positions 2..513: RoBERTa-style offset by padding_idx + 1


@pytest.mark.parametrize("change, message", [
    ({"model_type": "roberta"}, "model_type='roberta'"),
    ({"position_embedding_type": "relative_key"}, "only 'absolute'"),
    ({"hidden_act": "mish"}, "hidden_act='mish'"),
    ({"num_attention_heads": 5}, "not divisible"),
])
def test_from_hf_config_rejects_what_it_cannot_run(change, message):
  config = {"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}
  with pytest.raises(ValueError, match=message):
    TextEncoderConfig.from_hf_config({**config, **change}, "x/config.json")


def test_mpnet_buckets_equal_transformers():
  length = 300  # reaches past max_distance 128 on both sides
  rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  ref = MPNetEncoder.relative_position_bucket(rel, num_buckets=32, max_distance=128).numpy()
  np.testing.assert_array_equal(layers.relative_position_buckets(
      length, text_encoders.MPNET_RELATIVE_BUCKETS, text_encoders.MPNET_RELATIVE_MAX_DISTANCE), ref)


@pytest.fixture(scope="module", params=[BERT, MPNET], ids=["bert", "mpnet"])
def encoder(request):
  cfg = request.param
  module = TextEncoder(cfg)
  ids = jnp.full((1, 8), 5, jnp.int32)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))
  return module, variables


def test_every_param_has_logical_axes(encoder):
  module, variables = encoder
  leaves = jax.tree_util.tree_leaves(variables["params"],
                                     is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  allowed = {"embed", "mlp", "heads", "kv", "vocab", "length", "norm", None}
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(set(x.names) <= allowed and len(x.names) == x.value.ndim for x in leaves)
  params = nn.meta.unbox(variables["params"])
  assert params["layer_1"]["query"]["kernel"].shape == (24, 3, 8)
  assert params["layer_0"]["attention_out"]["kernel"].shape == (3, 8, 24)
  family_only = "token_type_embeddings" if module.config.family == "bert" else (
      "relative_attention_bias")
  assert family_only in params


def test_padding_does_not_change_the_embedding(encoder):
  module, variables = encoder
  pad = 1 if module.config.family == "mpnet" else 0
  tokens = [0, 7, 9, 11, 2]
  short = jnp.array([tokens], jnp.int32)
  padded = jnp.array([tokens + [pad] * 11], jnp.int32)
  mask = (jnp.arange(16) < 5).astype(jnp.int32)[None]
  apply = jax.jit(module.apply)
  emb_short, aux_short = apply(variables, short, jnp.ones_like(short))
  emb_padded, aux_padded = apply(variables, padded, mask)
  # The same formula over 5 or 16 positions: the longest sum is the FFN's 40;
  # 6 dots a layer for 2 layers, then the pooling and the normalisation (whose
  # output has the scale of its entries).
  tol = dict(reduction=40, depth=2 * 6 + 2)
  helpers.assert_allclose_f32(emb_padded, emb_short, **tol, scale=np.abs(emb_short).max())
  helpers.assert_allclose_f32(aux_padded["token_embeddings"][:, :5], aux_short["token_embeddings"],
                              **tol)
  # Normalised in float32, its norm taken in float32: two sums of 24 squares.
  helpers.assert_allclose_f32(np.linalg.norm(emb_short, axis=-1), [1.0], reduction=24, depth=2)


def test_pooling_modes_follow_the_token_states(encoder):
  module, variables = encoder
  ids = jnp.array([[0, 7, 9, 11, 2, 3], [0, 4, 2, 3, 3, 3]], jnp.int32)
  mask = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], jnp.int32)

  @jax.jit
  def pool_all(variables):
    tokens = module.apply(variables, ids, mask)[1]["token_embeddings"]
    return tokens, {mode: module.clone(pooling=mode, normalize=False).apply(variables, ids, mask)[0]
                    for mode in text_encoders.POOLING_MODES}

  tok, pooled = pool_all(variables)
  tok = np.asarray(tok)
  m = np.asarray(mask, np.float32)[..., None]
  expected = {
      "mean": (tok * m).sum(1) / m.sum(1),
      "mean_sqrt_len_tokens": (tok * m).sum(1) / np.sqrt(m.sum(1)),
      "cls": tok[:, 0],
      "max": np.where(m > 0, tok, -np.inf).max(1),
  }
  assert set(expected) == set(pooled)
  # Float32 sums over <= 6 tokens, jitted vs numpy; cls and max are exact.
  tol = helpers.f32_atol(np.abs(tok).max(), reduction=6)
  for mode, ref in expected.items():
    np.testing.assert_allclose(pooled[mode], ref, rtol=0, atol=tol, err_msg=mode)


def test_too_long_input_is_refused(encoder):
  module, variables = encoder
  ids = jnp.zeros((1, 40), jnp.int32)
  with pytest.raises(ValueError, match="exceeds the 3[02] positions"):
    module.apply(variables, ids, jnp.ones_like(ids))
