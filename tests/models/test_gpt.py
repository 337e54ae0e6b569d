"""LlamaGen GPT: sizes, sharding annotations, layer layouts, KV-cache decode, RoPE tables."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import helpers
from vwt_jax.core import sharding
from vwt_jax.models import gpt

TINY = gpt.GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=64, block_size=16, num_classes=10,
                     token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
TINY_T2I = dataclasses.replace(TINY, model_type="t2i", n_head=4, n_kv_head=2, caption_dim=8,
                               cls_token_num=3)
# Two float32 evaluations of TINY_T2I's logits: the longest sum is the FFN's
# hidden width (256 for dim 32); 6 dots a layer for 2 layers, the norm, the head.
LOGITS_TOL = dict(reduction=TINY_T2I.ffn_hidden_dim, depth=2 * 6 + 2)


def _init(config, batch=2):
  idx = jnp.zeros((batch, config.block_size - 1), jnp.int32)
  init = jax.jit(gpt.GPT(config).init)
  return nn.meta.unbox(init(jax.random.key(1), gpt.dummy_condition(config, batch), idx)["params"])


def _stack(params, n_layer):
  params = dict(params)
  layers = [params.pop(f"layers_{i}") for i in range(n_layer)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return params


def test_official_parameter_counts():
  assert gpt.count_params(gpt.GPTConfig.from_variant("B")) == 110_888_448
  assert gpt.count_params(gpt.GPTConfig.from_variant("3B")) == 3_096_659_200
  config = gpt.GPTConfig.from_variant("3B")
  assert (config.head_dim, config.ffn_hidden_dim) == (100, 8704)
  assert gpt.GPTConfig.from_variant("L").ffn_hidden_dim == 2816


@pytest.mark.parametrize("scan", [False, True])
def test_gpt_3b_shards_over_fsdp_and_tensor(scan):
  config = gpt.GPTConfig.from_variant("3B", scan_layers=scan)
  # (2, 2, 2) on 8 devices; any count that is a multiple of 4 splits both axes.
  mesh = sharding.create_mesh((-1, 2, 2))
  abstract = gpt.abstract_params(config)
  shardings = sharding.logical_to_sharding(abstract, mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES)
  shapes = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract))
  specs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  assert len(shapes) == len(specs) == 4 + 7 * (1 if scan else config.n_layer)
  leaves = [(path, (s, x.shape)) for (path, x), s in zip(shapes, specs)]
  for path, (s, shape) in leaves:
    assert isinstance(s, NamedSharding), path
    for dim, axes in zip(shape, s.spec):
      axes = (axes,) if isinstance(axes, str) else axes or ()
      assert dim % int(np.prod([mesh.shape[a] for a in axes])) == 0, (path, shape, s.spec)
  layer = shardings["layers"] if scan else shardings["layers_0"]
  lead = (None,) if scan else ()
  assert layer["attention"]["wqkv"]["kernel"].spec == P(*lead, "fsdp", "tensor", None, None)
  assert layer["attention"]["wo"]["kernel"].spec == P(*lead, "tensor", None, "fsdp")
  assert layer["feed_forward"]["w1"]["kernel"].spec == P(*lead, "fsdp", "tensor")
  assert layer["feed_forward"]["w2"]["kernel"].spec == P(*lead, "tensor", "fsdp")
  assert shardings["tok_embeddings"]["embedding"].spec == P("tensor", "fsdp")
  assert shardings["output"]["kernel"].spec == P("fsdp", "tensor")
  assert shardings["cls_embedding"]["embedding_table"]["embedding"].spec == P(None, "fsdp")
  assert shardings["norm"]["scale"].spec in (P(), P(None))


@pytest.fixture(scope="module")
def tiny_t2i():
  params = _init(TINY_T2I)
  rng = np.random.default_rng(0)
  caption = rng.normal(size=(2, 3, 8)).astype(np.float32)
  emb_mask = np.array([[0, 1, 1], [1, 1, 1]], bool)
  caption[0, 0] = 0.0
  idx = rng.integers(0, 64, (2, TINY_T2I.block_size - 1))
  return params, jnp.asarray(caption), jnp.asarray(emb_mask), jnp.asarray(idx)


def test_scan_and_remat_match_unrolled(tiny_t2i):
  params, caption, emb_mask, idx = tiny_t2i
  mask = gpt.t2i_attention_mask(emb_mask, 3 + idx.shape[1])
  ref, _ = jax.jit(gpt.GPT(TINY_T2I).apply)({"params": params}, caption, idx, attn_mask=mask)
  stacked = _stack(params, TINY_T2I.n_layer)
  for scan, remat in ((True, False), (True, True)):
    config = dataclasses.replace(TINY_T2I, scan_layers=scan, remat=remat)
    logits, _ = jax.jit(lambda p: gpt.GPT(config).apply(
        {"params": p}, caption, idx, attn_mask=mask))(stacked if scan else params)
    helpers.assert_allclose_f32(logits, ref, **LOGITS_TOL)


def test_cached_decode_equals_teacher_forcing(tiny_t2i):
  """GQA (n_kv_head < n_head), padded caption slots, n_kv-head cache."""
  params, caption, emb_mask, idx = tiny_t2i
  model, variables = gpt.GPT(TINY_T2I), {"params": params}
  mask = gpt.t2i_attention_mask(emb_mask, 3 + idx.shape[1])
  ref, _ = jax.jit(model.apply)(variables, caption, idx, attn_mask=mask)
  cache = gpt.init_cache(TINY_T2I, 2, 3 + idx.shape[1])
  assert cache[0]["k"].shape == (2, 2, 18, 8)
  logits, cache = jax.jit(lambda c: model.apply(variables, caption, c, emb_mask=emb_mask,
                                                method=gpt.GPT.prefill))(cache)
  steps = [logits]
  decode = jax.jit(lambda t, pos, c: model.apply(variables, t, pos, c, emb_mask=emb_mask,
                                                 method=gpt.GPT.decode))
  for i in range(idx.shape[1]):
    logits, cache = decode(idx[:, i], 3 + i, cache)
    steps.append(logits)
  helpers.assert_allclose_f32(np.stack(steps, 1), ref[:, 2:], **LOGITS_TOL)


def test_train_mode_dropouts_and_drop_path_scanned():
  config = dataclasses.replace(TINY, scan_layers=True, drop_path_rate=0.2,
                               token_dropout_p=0.1, resid_dropout_p=0.1, ffn_dropout_p=0.1)
  model = gpt.GPT(config)
  labels, idx = jnp.array([1, 2]), jnp.ones((2, 15), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), labels, idx)["params"]
  run = jax.jit(lambda r: model.apply({"params": params}, labels, idx, train=True,
                                      rngs={"dropout": r})[0])
  a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  # Other dropout masks change the logits by O(1), far past allclose's 1e-5.
  assert not np.allclose(a, c)
  assert a.shape == (2, 16, 64)


def test_rope_tables_have_zero_prefix_rows():
  table = gpt.rope_table_2d(4, 8, 2, 10000.0)
  assert table.shape == (18, 4, 2)
  np.testing.assert_array_equal(table[:2], 0.0)
  # token (r, c) = (1, 2): pairs 0..1 rotate by r*f_j, pairs 2..3 by c*f_j, f_j = 1e4^(-4j/8).
  f = 10000.0 ** (-4 * np.arange(2) / 8)
  # float32 angles (a rounded frequency times the position, <= 3) errs by 2u of
  # their size; cos and sin (slope <= 1) pass that on and add their rounding.
  angle_tol = helpers.f32_atol(3.0, reduction=1, depth=2)
  np.testing.assert_allclose(table[2 + 6, :, 0], np.cos(np.concatenate([1 * f, 2 * f])),
                             atol=angle_tol)
  table1 = gpt.rope_table_1d(5, 8, 1, 10000.0)
  assert table1.shape == (6, 4, 2)
  np.testing.assert_array_equal(table1[0], 0.0)
  np.testing.assert_allclose(table1[1 + 3, :, 1], np.sin(3 * 10000.0 ** (-np.arange(4) / 4)),
                             atol=angle_tol)


def test_left_padding_and_mask_rule():
  caption = jnp.arange(12, dtype=jnp.float32).reshape(1, 3, 4) + 1
  padded, mask = gpt.left_pad_captions(caption, jnp.array([[1, 1, 0]]))
  np.testing.assert_array_equal(mask, [[0, 1, 1]])
  np.testing.assert_array_equal(padded[0, 0], 0.0)
  np.testing.assert_array_equal(padded[0, 1:], caption[0, :2])
  allowed = np.asarray(gpt.t2i_attention_mask(mask, 5))[0, 0]
  expected = np.tril(np.ones((5, 5), bool))
  expected[:, 0] = False
  expected[0, 0] = True
  np.testing.assert_array_equal(allowed, expected)


def test_config_validation():
  with pytest.raises(ValueError, match="model_type"):
    gpt.GPTConfig(model_type="x")
  with pytest.raises(ValueError, match="square"):
    gpt.GPTConfig(block_size=32)
  gpt.GPTConfig(block_size=32, rope_2d=False, dim=64, n_head=4)
  with pytest.raises(ValueError, match="unknown ModelArgs"):
    gpt.GPTConfig.from_official({"dim": 64, "bogus": 1})
  with pytest.raises(ValueError, match="unknown GPT variant"):
    gpt.GPTConfig.from_variant("Q")
