"""T5 encoder: config parsing, relative-position buckets, parameters and masking.

The outputs are checked against transformers in
tests/conversion/test_hf_t5_conversion.py.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from transformers.models.t5 import modeling_t5

import helpers
from vwt_jax.models import layers
from vwt_jax.models import t5


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask)


@pytest.fixture(scope="module")
def tiny():
  """(model, random float32 params, their boxed abstract tree)."""
  config = t5.T5EncoderConfig.named("tiny", relative_attention_num_buckets=8,
                                    relative_attention_max_distance=12)
  model = t5.T5Encoder(config)
  boxed = t5.abstract_params(model)
  # Random values of the right shapes: compiling `model.init` costs seconds on CPU.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape)).astype(np.float32),
                        nn.meta.unbox(boxed))
  return model, params, boxed


@pytest.mark.parametrize("num_buckets,max_distance,length", [(32, 128, 300), (8, 12, 40),
                                                             (6, 5, 20)])
def test_buckets_match_transformers(num_buckets, max_distance, length):
  pos = torch.arange(length)
  ref = modeling_t5.T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      pos[None, :] - pos[:, None], bidirectional=True, num_buckets=num_buckets,
      max_distance=max_distance)
  ours = layers.relative_position_buckets(length, num_buckets, max_distance)
  np.testing.assert_array_equal(ours, ref.numpy())
  assert ours.max() == num_buckets - 1  # the far-away buckets are reached


@pytest.mark.parametrize("proj", ["relu", "gated-gelu", "gelu", "gated-silu", "gelu_new"])
def test_feed_forward_proj_parsed_as_transformers(proj):
  ref = transformers.T5Config(feed_forward_proj=proj)
  config = t5.T5EncoderConfig.from_hf_config(ref.to_dict())
  assert (config.activation, config.is_gated) == (ref.dense_act_fn, ref.is_gated_act)


def test_from_hf_config_reads_every_field():
  ref = transformers.T5Config(vocab_size=70, d_model=48, d_kv=16, d_ff=96, num_layers=3,
                              num_heads=2, relative_attention_num_buckets=10,
                              relative_attention_max_distance=30, layer_norm_epsilon=1e-5,
                              feed_forward_proj="gated-gelu", num_decoder_layers=5)
  assert t5.T5EncoderConfig.from_hf_config(ref.to_dict()) == t5.T5EncoderConfig(
      vocab_size=70, d_model=48, d_kv=16, d_ff=96, num_layers=3, num_heads=2,
      relative_attention_num_buckets=10, relative_attention_max_distance=30,
      layer_norm_epsilon=1e-5, feed_forward_proj="gated-gelu")


def test_absent_fields_get_the_model_type_defaults():
  sizes = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
  mt5 = t5.T5EncoderConfig.from_hf_config({"model_type": "mt5", **sizes})
  assert mt5.feed_forward_proj == transformers.MT5Config().feed_forward_proj == "gated-gelu"
  plain = t5.T5EncoderConfig.from_hf_config({"model_type": "t5", **sizes})
  ref = transformers.T5Config()
  assert (plain.feed_forward_proj, plain.relative_attention_max_distance,
          plain.layer_norm_epsilon) == ("relu", ref.relative_attention_max_distance,
                                        ref.layer_norm_epsilon)


@pytest.mark.parametrize("change,match", [
    ({"model_type": "umt5"}, "model_type='umt5'"),
    ({"feed_forward_proj": "gated-gelu-new"}, "feed_forward_proj='gated-gelu-new'"),
    ({"feed_forward_proj": "double-gelu"}, "feed_forward_proj='double-gelu'"),
    ({"feed_forward_proj": "gated-mish"}, "activation 'mish'"),
    ({"is_decoder": True}, "is_decoder"),
    ({"d_kv": None}, r"missing fields \['d_kv'\]"),
])
def test_unsupported_configs_are_refused(change, match):
  config = {**transformers.T5Config().to_dict(), **change}
  config = {k: v for k, v in config.items() if v is not None}
  with pytest.raises(ValueError, match=match):
    t5.T5EncoderConfig.from_hf_config(config)


def test_invalid_sizes_are_refused():
  with pytest.raises(ValueError, match="relative_attention_num_buckets=2"):
    t5.T5EncoderConfig(relative_attention_num_buckets=2)
  with pytest.raises(ValueError, match="relative_attention_max_distance=8"):
    t5.T5EncoderConfig(relative_attention_num_buckets=32, relative_attention_max_distance=8)
  with pytest.raises(ValueError, match="unknown T5 encoder variant 'xxl'"):
    t5.T5EncoderConfig.named("xxl")


def test_flan_t5_xl_has_the_published_encoder_size():
  config = t5.T5EncoderConfig.named("flan-t5-xl")
  assert (config.activation, config.is_gated) == ("gelu_new", True)
  params = t5.abstract_params(t5.T5Encoder(config))
  # transformers' T5EncoderModel of google/flan-t5-xl: 1,223,527,424 parameters.
  assert sum(x.size for x in jax.tree.leaves(nn.meta.unbox(params))) == 1_223_527_424


def test_params_carry_logical_axes(tiny):
  _, _, boxed = tiny
  flat = traverse_util.flatten_dict(boxed, sep="/")
  axes = {k: v.names for k, v in flat.items()}
  assert len(axes) == 3 + 2 * 9
  assert axes["shared/embedding"] == ("vocab", "embed")
  assert axes["relative_attention_bias"] == (None, "heads")
  assert axes["final_norm/scale"] == ("norm",)
  assert axes["layer_1/attention/q/kernel"] == ("embed", "heads", "kv")
  assert axes["layer_1/attention/o/kernel"] == ("heads", "kv", "embed")
  assert axes["layer_1/mlp/wi_0/kernel"] == ("embed", "mlp")
  assert axes["layer_1/mlp/wo/kernel"] == ("mlp", "embed")
  assert axes["layer_1/mlp_norm/scale"] == ("norm",)


def _padded_batch(config):
  """ids (1, 10) alone; (3, 24) rows: right-padded, left-padded, padding left unmasked."""
  rng = np.random.default_rng(1)
  ids = rng.integers(2, config.vocab_size, (1, 10))
  pads = rng.integers(0, config.vocab_size, (1, 14))  # whatever sits in the padding
  tokens = np.concatenate([np.concatenate([ids, pads], 1), np.concatenate([pads, ids], 1),
                           np.concatenate([ids, pads], 1)])
  mask = np.ones((3, 24), bool)
  mask[0, 10:] = mask[1, :14] = False
  return ids, tokens, mask


def test_padding_is_invisible_to_real_tokens(tiny):
  model, params, _ = tiny
  ids, tokens, mask = _padded_batch(model.config)
  alone, aux = _forward(model, params, ids, None)  # no mask: every token is real
  assert alone.dtype == jnp.float32 and alone.shape == (1, 10, 32) and aux == {}
  padded, _ = _forward(model, params, tokens, mask)
  # The same formula over 10 or 24 positions: the longest sum is d_ff (64);
  # 6 dots a layer for 2 layers and the final norm.
  helpers.assert_allclose_f32(padded[0, :10], alone[0], reduction=64, depth=13)
  helpers.assert_allclose_f32(padded[1, 14:], alone[0], reduction=64, depth=13)
  assert np.abs(np.asarray(padded[2, :10] - alone[0])).max() > 1e-3


def test_bfloat16_compute_stays_close(tiny):
  model, params, _ = tiny
  _, tokens, mask = _padded_batch(model.config)
  ref, _ = _forward(model, params, tokens, mask)
  low, _ = _forward(t5.T5Encoder(model.config, dtype=jnp.bfloat16), params, tokens, mask)
  assert low.dtype == jnp.float32
  err = np.abs(np.asarray(low - ref)).max()
  # 6 dots a layer for 2 layers and the final norm, in bfloat16.
  assert 0 < err < helpers.lowp_atol(jnp.bfloat16, np.abs(np.asarray(ref)).max(), depth=13)
