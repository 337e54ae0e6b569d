"""GPT attention kinds: the fused jax.nn.dot_product_attention path vs the einsum."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.models import gpt
from vwt_jax.models import llama

# Grouped-query attention (2 query heads per kv head) over a 4x4 grid.
TINY = gpt.GPTConfig(dim=32, n_layer=1, n_head=4, n_kv_head=2, vocab_size=64, block_size=16,
                     num_classes=10, token_dropout_p=0.0, resid_dropout_p=0.0,
                     ffn_dropout_p=0.0)
TINY_T2I = dataclasses.replace(TINY, model_type="t2i", caption_dim=8, cls_token_num=3)


def _inputs(config, batch=2):
  rng = np.random.default_rng(0)
  idx = jnp.asarray(rng.integers(0, config.vocab_size, (batch, config.block_size - 1)), jnp.int32)
  if config.model_type == "c2i":
    return jnp.asarray([3, 7], jnp.int32), idx, {}
  caption = jnp.asarray(rng.normal(size=(batch, config.cls_token_num, config.caption_dim)),
                        jnp.float32)
  # Row 0 has one real caption token, row 1 all three: padded slots are masked.
  emb_mask = jnp.asarray([[0, 0, 1], [1, 1, 1]], bool)
  seq = config.cls_token_num + config.block_size - 1
  return caption, idx, {"attn_mask": gpt.t2i_attention_mask(emb_mask, seq)}


def _random_params(model, cond, idx, kwargs):
  # Random values of the right shapes: compiling `model.init` would cost seconds.
  abstract = jax.eval_shape(model.init, jax.random.key(0), cond, idx, **kwargs)["params"]
  rng = np.random.default_rng(2)
  return jax.tree.map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype),
                      nn.meta.unbox(abstract))


@pytest.mark.parametrize("config", [TINY, TINY_T2I], ids=["c2i_causal", "t2i_masked"])
def test_dot_product_attention_matches_the_einsum(config):
  cond, idx, kwargs = _inputs(config)
  model = gpt.GPT(config)
  fused = gpt.GPT(dataclasses.replace(config, attention="dot_product"))
  params = _random_params(model, cond, idx, kwargs)

  def loss(m, p, mask_kwargs):
    logits, _ = m.apply({"params": p}, cond, idx, **mask_kwargs)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  @jax.jit
  def both(p):
    grad = lambda m, kw: jax.value_and_grad(lambda q: loss(m, q, kw), has_aux=True)(p)
    unmasked = {k: jnp.ones_like(v) for k, v in kwargs.items()}
    return grad(model, kwargs), grad(fused, kwargs), loss(fused, p, unmasked)[1]

  ((ref_loss, ref_logits), ref_grads), ((out_loss, out_logits), out_grads), unmasked = both(
      params)
  # Fused vs einsum attention: the longest sum is the FFN's 256 (dim 32); the
  # logits pass 6 dots, the norm and the head; the loss adds the 64-way
  # log-softmax and the mean; the gradients come back through as many again
  # and are held to their own magnitude.
  ffn = config.ffn_hidden_dim
  helpers.assert_allclose_f32(out_logits, ref_logits, reduction=ffn, depth=8)
  helpers.assert_allclose_f32(out_loss, ref_loss, reduction=ffn, depth=10)
  for ref, out in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(out_grads)):
    helpers.assert_allclose_f32(out, ref, reduction=ffn, depth=18, scale=np.abs(ref).max())
  if kwargs:
    # Without the caption mask the logits differ: the fused path applies it.
    assert np.max(np.abs(np.asarray(unmasked) - np.asarray(out_logits))) > 1e-3


@pytest.mark.parametrize("n_kv_head", [2, None], ids=["grouped", "multi_head"])
def test_causal_blocks_match_the_whole_causal_pass(n_kv_head):
  # 16 positions in blocks of 5: three whole blocks and one of a single query.
  whole = dataclasses.replace(TINY, n_kv_head=n_kv_head, causal_block=0)
  blocked = dataclasses.replace(whole, causal_block=5)
  cond, idx, _ = _inputs(whole)
  params = _random_params(gpt.GPT(whole), cond, idx, {})

  @jax.jit
  def logits_and_grads(p):
    def run(config):
      def loss(q):
        logits, _ = gpt.GPT(config).apply({"params": q}, cond, idx)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits
      return jax.value_and_grad(loss, has_aux=True)(p)
    return run(whole), run(blocked)

  ((_, ref_logits), ref_grads), ((_, out_logits), out_grads) = logits_and_grads(params)
  # The blocks leave out only scores the mask sets to -inf (exp = 0): the sums
  # differ at most in their order. Tolerances as in the fused-attention test.
  ffn = whole.ffn_hidden_dim
  helpers.assert_allclose_f32(out_logits, ref_logits, reduction=ffn, depth=8)
  for ref, out in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(out_grads)):
    helpers.assert_allclose_f32(out, ref, reduction=ffn, depth=18, scale=np.abs(ref).max())
  # One layer: 2 attention products per block, 4 blocks instead of 1.
  dots = lambda c: str(jax.make_jaxpr(gpt.GPT(c).apply)({"params": params}, cond, idx)).count(
      "dot_general")
  assert dots(blocked) - dots(whole) == 6
  # A query never reads a later position: changing the last token moves only the last logits.
  changed = idx.at[:, -1].set((idx[:, -1] + 1) % whole.vocab_size)
  before = gpt.GPT(blocked).apply({"params": params}, cond, idx)[0]
  after = gpt.GPT(blocked).apply({"params": params}, cond, changed)[0]
  np.testing.assert_array_equal(after[:, :-1], before[:, :-1])
  assert np.max(np.abs(np.asarray(after[:, -1] - before[:, -1]))) > 1e-3


def test_fused_attention_groups_query_heads_like_the_wqkv_layout():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 5, 4, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 5, 2, 8)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, 5, 2, 8)), jnp.float32)
  out = llama.fused_attention(q, k, v, None, "xla")
  # Query head h reads kv head h // 2; position i sees positions 0..i.
  for h in range(4):
    scores = q[0, :, h] @ k[0, :, h // 2].T / np.sqrt(8)
    scores = jnp.where(jnp.tril(jnp.ones((5, 5), bool)), scores, -jnp.inf)
    # Scores over head_dim 8, the softmax's 5-term sum, the weighted sum of 5.
    helpers.assert_allclose_f32(out[0, :, h], jax.nn.softmax(scores) @ v[0, :, h // 2],
                                reduction=8, depth=3)


def test_attention_settings_are_checked():
  with pytest.raises(ValueError, match="attention='flash': expected one of"):
    dataclasses.replace(TINY, attention="flash")
  with pytest.raises(ValueError, match="causal_block=-1: expected 0"):
    dataclasses.replace(TINY, causal_block=-1)
  with pytest.raises(ValueError, match="has no attention dropout"):
    dataclasses.replace(TINY, attention="cudnn", attn_dropout_p=0.1, dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="'cudnn' needs a bfloat16 or float16 compute dtype"):
    dataclasses.replace(TINY, attention="cudnn")
  assert dataclasses.replace(TINY, attention="cudnn", dtype=jnp.bfloat16).stack.attention == (
      "cudnn")
