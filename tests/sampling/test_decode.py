"""The shared decode loop: token filters, draws, stop sequences and classifier-free guidance."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax.models import gpt
from vwt_jax.sampling import decode

VOCAB = 16
DRAW = dict(greedy=True, top_k=0, use_top_p=False)


def test_top_k_keeps_ties_and_clips_k():
  logits = jnp.array([[1.0, 3.0, 2.0, 2.0, 0.0]])
  kept = np.isfinite(np.asarray(decode.top_k_filter(logits, 2)))
  np.testing.assert_array_equal(kept, [[False, True, True, True, False]])
  assert np.isfinite(np.asarray(decode.top_k_filter(logits, 99))).all()
  np.testing.assert_array_equal(np.isfinite(np.asarray(decode.top_k_filter(logits, -3))),
                                [[False, True, False, False, False]])


def test_kth_largest_is_the_sorted_kth_value():
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(6, 1000)).astype(np.float32) * np.float32(30)
  rows[1, :500] = rows[1, 500:]  # every value twice
  rows[2, ::7] = -np.inf  # filtered logits
  rows[3] = np.round(rows[3])  # many ties, zeros among them
  rows[4, :10] = np.float32(3.4e38)  # the largest floats
  rows[5] = -np.abs(rows[5])  # all negative
  expected = -np.sort(-rows, axis=-1)
  for k in (1, 2, 7, 500, 999, 1000):
    np.testing.assert_array_equal(np.asarray(decode.kth_largest(jnp.asarray(rows), k)),
                                  expected[:, k - 1:k], err_msg=f"k={k}")


def test_top_p_keeps_first_crossing_token_and_top1():
  probs = np.array([0.05, 0.5, 0.15, 0.3])
  logits = jnp.log(jnp.asarray(probs))[None]
  kept = lambda p: np.isfinite(np.asarray(decode.top_p_filter(logits, p)))[0].tolist()
  assert kept(0.6) == [False, True, False, True]   # 0.5, then 0.8 crosses and stays
  assert kept(0.85) == [False, True, True, True]
  assert kept(0.4) == [False, True, False, False]  # top-1 always kept
  assert kept(1.0) == [True, True, True, True]


def test_filter_logits_order_and_temperature():
  logits = jnp.array([[0.0, 1.0, 2.0, 3.0]])
  out = decode.filter_logits(logits, temperature=0.5, top_k=3, top_p=0.9)
  # /0.5 -> [0, 2, 4, 6]; top-3 drops index 0; top-p keeps 6 (p=.87) and 4 (crossing).
  # Small integers divided by a power of 2: exact (the default rtol 1e-7 is moot).
  np.testing.assert_allclose(np.asarray(out), [[-np.inf, -np.inf, 4.0, 6.0]])


def test_guided_logits_interval():
  raw = jnp.stack([jnp.full((4, 3), 2.0), jnp.full((4, 3), 1.0)])  # cond ; uncond, 4 steps
  mixed = np.asarray(decode.guided_logits(raw, 3.0, cfg_interval=1))
  # uncond + 3 * (cond - uncond) on small integers: exact.
  np.testing.assert_allclose(mixed[0, :, 0], [4.0, 4.0, 4.0, 2.0])
  assert decode.guided_logits(raw, 1.0) is raw


def test_guided_logits_of_one_step_match_all_steps():
  raw = jax.random.normal(jax.random.key(0), (4, 5, VOCAB))
  scale, interval = jnp.float32(2.5), jnp.int32(1)
  every = decode.guided_logits(raw, scale, interval)
  for step in range(5):
    np.testing.assert_array_equal(decode.guided_logits(raw[:, step], scale, interval, step),
                                  every[:, step])


def _peaks(first, cond_rows):
  """Logits 1 at `first`, and 0.9 at first + 1 on conditional rows."""
  return (jax.nn.one_hot(first % VOCAB, VOCAB)
          + 0.9 * cond_rows[:, None] * jax.nn.one_hot((first + 1) % VOCAB, VOCAB))


def _prefill(params, inputs, cache, context, null=None):
  assert context.shape == inputs.shape
  cond_rows = jnp.ones(inputs.shape, bool) if null is None else ~null
  # The "cache" remembers which rows are conditional.
  return params * _peaks(inputs, cond_rows), cond_rows


def _decode(params, token, position, cache, context):
  del position
  assert context.shape == token.shape == cache.shape
  return params * _peaks(token + 1, cache), cache


TOY = decode.LogitsFns(_prefill, _decode)


def _loop(fns, inputs, seed=0, **kw):
  inputs = jnp.asarray(inputs, jnp.int32)
  return decode.decode_loop(fns, jnp.float32(1.0), inputs, jnp.zeros_like(inputs), None,
                            jax.random.key(seed), jnp.float32(1.0), jnp.float32(1.0),
                            num_tokens=6, start=3, **dict(DRAW, **kw))


def test_runs_every_step_with_the_key_of_each_step():
  tokens, lengths, logits = _loop(TOY, [0, 2, 5], seed=4, greedy=False, return_logits=True)
  np.testing.assert_array_equal(lengths, [6, 6, 6])
  assert logits.shape == (3, 6, VOCAB)
  for step in range(6):
    drawn = decode.sample_token(logits[:, step], jax.random.fold_in(jax.random.key(4), step),
                                False, 1.0, 0, 1.0)
    np.testing.assert_array_equal(tokens[:, step], drawn)
  # Each decode is fed the previous token: its logits peak right after it.
  np.testing.assert_array_equal(np.argmax(logits[:, 1:], -1), tokens[:, :-1] + 1)


def test_stop_sequences_end_rows_and_pad():
  # Greedy: row r counts up from inputs[r]; (3, 4) stops rows 0 and 1, never row 2.
  tokens, lengths, logits = _loop(TOY, [0, 2, 5], stops=((3, 4), (9, 9, 9)), pad_id=15)
  np.testing.assert_array_equal(lengths, [3, 1, 6])
  np.testing.assert_array_equal(tokens, [[0, 1, 2, 3, 4, 15], [2, 3, 4, 15, 15, 15],
                                         [5, 6, 7, 8, 9, 10]])
  assert logits is None
  plain, lengths, _ = _loop(TOY, [0, 2, 5])
  np.testing.assert_array_equal(plain, [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7],
                                        [5, 6, 7, 8, 9, 10]])
  np.testing.assert_array_equal(lengths, [6, 6, 6])


def test_classifier_free_guidance_doubles_rows_and_guides_the_interval():
  # Guided, the 0.9 peak of the conditional rows wins (0.9 * 2 > 1): +2 per token, else +1.
  guided = decode.classifier_free_guidance(TOY, jnp.float32(2.0), jnp.int32(1))
  tokens, _, raw = _loop(guided, [0, 4], return_logits=True)
  np.testing.assert_array_equal(tokens, [[1, 3, 5, 6, 7, 8], [5, 7, 9, 10, 11, 12]])
  assert raw.shape == (4, 6, VOCAB)
  np.testing.assert_array_equal(np.argmax(decode.guided_logits(raw, 2.0, 1), -1), tokens)
  always, _, _ = _loop(decode.classifier_free_guidance(TOY, 2.0, -1), [0, 4])
  np.testing.assert_array_equal(always, [[1, 3, 5, 7, 9, 11], [5, 7, 9, 11, 13, 15]])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_segments_attend_the_filled_cache_with_the_same_results(scan_layers):
  config = gpt.GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=64, block_size=16,
                         num_classes=10, scan_layers=scan_layers)
  model = gpt.GPT(config)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1,), jnp.int32),
                                    jnp.zeros((1, 15), jnp.int32))["params"])
  params["output"]["kernel"] = params["output"]["kernel"] * 200.0  # varied greedy tokens
  fns = decode.LogitsFns(
      lambda p, cond, cache, ctx: model.apply({"params": p}, cond, cache, method="prefill"),
      lambda p, tok, pos, cache, ctx: model.apply({"params": p}, tok, pos, cache,
                                                  method="decode"))
  labels = jnp.array([1, 2, 3], jnp.int32)

  # One compiled program per run; run eagerly, each of the loops' operations compiles
  # on its own.
  @functools.partial(jax.jit, static_argnums=(0, 1))
  def run(segments, stops=()):
    cache = gpt.init_cache(config, 3, 1 + 16)
    return decode.decode_loop(fns, params, labels, None, cache, jax.random.key(0),
                              jnp.float32(1.0), jnp.float32(1.0), num_tokens=16, start=1,
                              stops=stops, return_logits=True, segments=segments, **DRAW)

  whole, _, whole_logits = run(1)
  # Every segment is shorter than the whole cache: a wrong position would show.
  tokens, _, logits = run(5)
  np.testing.assert_array_equal(tokens, whole)
  # The slots cut off hold exp(-inf) = 0 of the softmax: only summation order differs.
  np.testing.assert_allclose(logits, whole_logits, rtol=1e-5, atol=1e-5)
  # A stop drawn in a later segment ends row 0 there, as in one loop.
  stop = (int(whole[0, 9]), int(whole[0, 10]))
  stopped, lengths, _ = run(5, stops=(stop,))
  expected = run(1, stops=(stop,))
  np.testing.assert_array_equal(stopped, expected[0])
  np.testing.assert_array_equal(lengths, expected[1])
  assert int(lengths[0]) <= 9


def test_segment_runs_cover_every_step_once():
  for num_tokens in (1, 2, 3, 16, 256, 576):
    for segments in (1, 3, 4, 8, 1000):
      runs = decode.segment_runs(num_tokens, segments)
      steps = [s for first, end in runs for s in range(first, end)]
      assert steps == list(range(1, num_tokens)), (num_tokens, segments)
      assert len(runs) <= segments
