"""The request-batching Sampler: per-request results, padding, one compile, clear refusals."""

import dataclasses
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax import serving
from vwt_jax.core import sharding
from vwt_jax.models import gpt
from vwt_jax.sampling import autoregressive as ar
from vwt_jax.sampling import decode
from vwt_jax.serving import Request

TINY = gpt.GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=64, block_size=16, num_classes=10,
                     scan_layers=True)
TINY_T2I = dataclasses.replace(TINY, model_type="t2i", caption_dim=8, cls_token_num=4)
# Two kinds of rows, each one program of `generate` (compiling takes seconds).
GUIDED = [Request(1, seed=3, cfg_scale=2.0, top_p=0.99),
          Request(3, seed=7, cfg_scale=3.0, cfg_interval=4, top_p=0.8),
          Request(1, seed=11, cfg_scale=1.5, temperature=2.0, top_p=0.95)]
PLAIN = [Request(2, seed=5), Request(4, seed=9, temperature=0.5)]
MIXED = [GUIDED[0], PLAIN[0], GUIDED[1], PLAIN[1], GUIDED[2]]


def _params(config):
  model = gpt.GPT(config)
  params = nn.meta.unbox(jax.jit(model.init)(
      jax.random.key(0), gpt.dummy_condition(config), jnp.zeros((1, 15), jnp.int32))["params"])
  # Larger output weights so sampled sequences are not degenerate.
  params["output"]["kernel"] = params["output"]["kernel"] * 200.0
  return model, params


@pytest.fixture(scope="module")
def tiny():
  return _params(TINY)


@pytest.fixture(scope="module")
def sampler(tiny):
  s = serving.Sampler(TINY, tiny[1], batch_size=4, top_k=20, use_top_p=True)
  s.warmup()
  return s


def _alone(model, params, request, cond, emb_mask=None):
  """`generate`'s tokens for the request alone, with rng=key(seed)."""
  settings = {name: getattr(request, name) for name in serving.ROW_SETTINGS
              if getattr(request, name) is not None}
  return np.asarray(ar.generate(model, params, cond, num_tokens=16, top_k=20, emb_mask=emb_mask,
                                rng=jax.random.key(request.seed), **settings))[0]


@pytest.mark.parametrize("kind", [GUIDED, PLAIN], ids=["guided_top_p", "plain"])
def test_each_result_is_generate_of_its_request_alone(tiny, sampler, kind):
  model, params = tiny
  results = list(sampler.run(MIXED))
  assert [r.request for r in results] == MIXED
  for result in results:
    assert result.image is None and result.latency_s > 0
    if result.request in kind:
      expected = _alone(model, params, result.request, jnp.array([result.request.condition]))
      np.testing.assert_array_equal(result.tokens, expected)


def test_results_do_not_depend_on_companions_or_slot(sampler):
  base = {r.request.seed: r.tokens for r in sampler.run(MIXED)}
  # Other companions, other slots, other batch boundaries.
  shuffled = [MIXED[4], Request(7, seed=1), MIXED[2], MIXED[0], Request(0, seed=2, top_p=0.5),
              MIXED[3], MIXED[1]]
  for result in sampler.run(shuffled):
    if result.request in MIXED:
      np.testing.assert_array_equal(result.tokens, base[result.request.seed])


def test_full_batches_run_at_once_and_the_last_is_padded(sampler):
  handles = [sampler.submit(r) for r in MIXED]
  assert [h.done() for h in handles] == [True] * 4 + [False]
  last = handles[4].result()
  assert last.request == MIXED[4] and last.tokens.shape == (16,)
  sampler.flush()  # Nothing waits: no batch runs.


def test_per_row_settings_take_effect(sampler):
  cold = [Request(5, seed=s, temperature=1e-3) for s in range(3)]
  hot = [Request(5, seed=s, temperature=5.0) for s in range(3)]
  tokens = [r.tokens for r in sampler.run(cold + hot)]
  # Near zero temperature is the argmax whatever the seed; a high one is not.
  for t in tokens[1:3]:
    np.testing.assert_array_equal(t, tokens[0])
  assert len({t.tobytes() for t in tokens[3:]}) == 3
  assert all((t != tokens[0]).any() for t in tokens[3:])


def test_one_compile_for_many_batches(tiny, monkeypatch):
  traces = []
  loop = decode.decode_loop
  monkeypatch.setattr(decode, "decode_loop", lambda *a, **k: traces.append(1) or loop(*a, **k))
  # A num_tokens no other test compiles; the fewest static features, to compile fast.
  s = serving.Sampler(TINY, tiny[1], batch_size=2, num_tokens=7, cfg=False)
  results = list(s.run([Request(c, seed=c, temperature=0.5 + c / 10) for c in range(7)]))
  assert len(results) == 7 and results[0].tokens.shape == (7,)
  assert len(traces) == 1


def test_decoder_gives_each_result_its_image(tiny, sampler):
  def decode_fn(tokens):
    assert tokens.shape == (4, 16)  # Always the whole padded batch.
    return np.broadcast_to(tokens[:, :, None, None], (4, 16, 16, 3)).astype(np.uint8)

  # The statics of `sampler`: its compiled program serves this one too.
  s = serving.Sampler(TINY, tiny[1], batch_size=4, top_k=20, use_top_p=True, decode=decode_fn)
  results = list(s.run(MIXED[:3]))
  for r in results:
    assert r.image.dtype == np.uint8 and r.image.shape == (16, 16, 3)
    np.testing.assert_array_equal(r.image[:, 0, 0], r.tokens)


def test_a_failed_batch_fails_each_of_its_requests(tiny, sampler):
  def broken(tokens):
    raise RuntimeError("decoder down")

  s = serving.Sampler(TINY, tiny[1], batch_size=4, top_k=20, use_top_p=True, decode=broken)
  first, second = s.submit(MIXED[0]), s.submit(MIXED[1])
  with pytest.raises(RuntimeError, match="decoder down"):
    second.result()
  assert first.done()
  with pytest.raises(RuntimeError, match="decoder down"):
    first.result()


def _timed(tiny, max_wait_s, **kwargs):
  """A Sampler with `sampler`'s statics (its compiled program) and a timed flush."""
  return serving.Sampler(TINY, tiny[1], batch_size=4, top_k=20, use_top_p=True,
                         max_wait_s=max_wait_s, **kwargs)


def test_max_wait_runs_a_partial_batch_without_being_asked(tiny, sampler):
  s = _timed(tiny, 0.05)
  handle = s.submit(MIXED[0])
  # Nobody calls result() or flush(): the batch runs once it has waited 0.05 s.
  assert handle._finished.wait(120)  # pylint: disable=protected-access
  result = handle.result()
  assert result.latency_s >= 0.05
  np.testing.assert_array_equal(result.tokens, next(sampler.run(MIXED[:1])).tokens)


def test_max_wait_batches_concurrent_callers_together(tiny, sampler, monkeypatch):
  s = _timed(tiny, 600.0)
  calls = []
  program = s._program  # pylint: disable=protected-access
  monkeypatch.setattr(s, "_program", lambda *a: calls.append(1) or program(*a))
  results = {}

  def client(i):
    results[i] = s.submit(MIXED[i]).result(timeout=120)

  # Three front-end workers wait in one batch; the fourth request fills and runs it.
  threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
  for t in threads:
    t.start()
  deadline = time.monotonic() + 60
  while len(s._pending) < 3 and time.monotonic() < deadline:  # pylint: disable=protected-access
    time.sleep(0.01)
  assert not any(h.done() for _, h in s._pending)  # pylint: disable=protected-access
  fourth = s.submit(MIXED[3])
  for t in threads:
    t.join(120)
  assert fourth.done() and len(results) == 3 and calls == [1]
  expected = [r.tokens for r in sampler.run(MIXED[:4])]
  for i in range(3):
    np.testing.assert_array_equal(results[i].tokens, expected[i])
  with pytest.raises(TimeoutError, match="its batch has not run yet"):
    s.submit(MIXED[4]).result(timeout=0.01)
  assert [r.request for r in s.run(MIXED[:2])] == MIXED[:2]  # run() does not wait 600 s.


def test_max_wait_batch_failures_reach_their_requests(tiny, sampler):
  def broken(tokens):
    raise RuntimeError("decoder down")

  s = _timed(tiny, 0.0, decode=broken)
  for request in MIXED[:2]:  # The timer survives a failed batch.
    with pytest.raises(RuntimeError, match="decoder down"):
      s.submit(request).result(timeout=120)
  with pytest.raises(ValueError, match=r"max_wait_s=-1: expected None or seconds >= 0"):
    _timed(tiny, -1)


def test_sharded_equals_unsharded(tiny, sampler):
  mesh = sharding.create_mesh((-1, 2, 2))
  sharded = serving.Sampler(TINY, tiny[1], batch_size=4, top_k=20, use_top_p=True, mesh=mesh)
  for a, b in zip(sharded.run(MIXED), sampler.run(MIXED)):
    np.testing.assert_array_equal(a.tokens, b.tokens)
  with pytest.raises(ValueError, match="batch_size=2 must divide over the 4 data-parallel"):
    serving.Sampler(TINY, tiny[1], batch_size=2, mesh=mesh)


_FEATURES = {p: np.random.default_rng(i).normal(size=(4, 8)).astype(np.float32)
             for i, p in enumerate(("a cat", "a dog"))}
_MASKS = {"a cat": np.array([False, True, True, True]), "a dog": np.ones(4, bool)}


@pytest.fixture(scope="module")
def t2i():
  model, params = _params(TINY_T2I)

  def encode_prompts(prompts):
    return np.stack([_FEATURES[p] for p in prompts]), np.stack([_MASKS[p] for p in prompts])

  s = serving.Sampler(TINY_T2I, params, batch_size=2, top_k=20, encode_prompts=encode_prompts)
  s.warmup()
  return model, params, s


def test_t2i_prompts_and_features_equal_generate_alone(t2i):
  model, params, s = t2i
  requests = [Request("a cat", seed=1, cfg_scale=2.0), Request(_FEATURES["a dog"], seed=2,
                                                               cfg_scale=3.0),
              Request(_FEATURES["a cat"], mask=_MASKS["a cat"], seed=1, cfg_scale=2.0)]
  results = list(s.run(requests))
  # A prompt and its features give the same image.
  np.testing.assert_array_equal(results[0].tokens, results[2].tokens)
  for r, prompt in zip(results[:2], ("a cat", "a dog")):
    expected = _alone(model, params, r.request, _FEATURES[prompt][None], _MASKS[prompt][None])
    np.testing.assert_array_equal(r.tokens, expected)


def test_t2i_bad_conditions_are_refused(t2i):
  model, params, s = t2i
  with pytest.raises(ValueError, match=r"Request.condition \(3, 8\): expected a prompt or "
                     r"caption features \(4, 8\)"):
    s.submit(Request(np.zeros((3, 8))))
  with pytest.raises(ValueError, match=r"Request.mask \(3,\): expected \(4,\)"):
    s.submit(Request(np.zeros((4, 8)), mask=np.ones(3, bool)))
  without_encoder = serving.Sampler(TINY_T2I, params, batch_size=2)
  with pytest.raises(ValueError, match="no encode_prompts"):
    without_encoder.submit(Request("a cat"))


@pytest.mark.parametrize("request_, message", [
    (Request(10), r"Request.condition=10: expected a class id 0..9"),
    (Request("a cat"), r"Request.condition='a cat': expected a class id"),
    (Request(1, seed=-1), r"Request.seed=-1: expected an int 0..2147483647"),
    (Request(1, top_k=7), r"Request.top_k=7: this Sampler is compiled for top_k=20"),
    (Request(1, temperature=0.0), r"Request.temperature=0.0: expected a temperature > 0"),
    (Request(1, cfg_scale=0.5), r"Request.cfg_scale=0.5: expected a guidance scale >= 1"),
    (Request(1, cfg_interval=-2), r"Request.cfg_interval=-2: expected -1"),
    (Request(1, top_p=0.0), r"Request.top_p=0.0: expected 0 < top_p <= 1"),
    (1, r"request 1: expected a serving.Request"),
])
def test_bad_requests_are_refused_at_submit(sampler, request_, message):
  with pytest.raises(ValueError, match=message):
    sampler.submit(request_)
  assert not sampler._pending  # pylint: disable=protected-access


def test_settings_the_program_lacks_are_refused(tiny):
  s = serving.Sampler(TINY, tiny[1], batch_size=2, cfg=False)
  with pytest.raises(ValueError, match=r"Request.cfg_scale=2.0: this Sampler runs no guidance"):
    s.submit(Request(1, cfg_scale=2.0))
  with pytest.raises(ValueError, match=r"Request.top_p=0.9: this Sampler has no top-p filter"):
    s.submit(Request(1, top_p=0.9))
  with pytest.raises(ValueError, match=r"defaults.temperature=-1: expected a temperature > 0"):
    serving.Sampler(TINY, tiny[1], batch_size=2, defaults={"temperature": -1})
  with pytest.raises(ValueError, match=r"num_tokens=17: expected 1..block_size=16"):
    serving.Sampler(TINY, tiny[1], batch_size=2, num_tokens=17)
  no_null = dataclasses.replace(TINY, class_dropout_prob=0.0)
  with pytest.raises(ValueError, match="cfg=True needs a null class"):
    serving.Sampler(no_null, tiny[1], batch_size=2, cfg=True)
