"""The jitted LlamaGen sampler: determinism, CFG, compile reuse, sharding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax.core import sharding
from vwt_jax.models import gpt
from vwt_jax.sampling import autoregressive as ar
from vwt_jax.sampling import decode

TINY = gpt.GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=64, block_size=16, num_classes=10,
                     scan_layers=True)


@pytest.fixture(scope="module")
def tiny():
  model = gpt.GPT(TINY)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1,), jnp.int32),
                                             jnp.zeros((1, 15), jnp.int32))["params"])
  # Larger output weights so greedy and sampled sequences are not degenerate.
  params["output"]["kernel"] = params["output"]["kernel"] * 200.0
  return model, params


def test_sampler_is_deterministic_and_compiles_once(tiny):
  model, params = tiny
  labels = jnp.array([1, 2, 3, 4])
  kw = dict(num_tokens=16, cfg_scale=2.0, top_k=20, temperature=1.0)
  a = ar.generate(model, params, labels, rng=jax.random.key(0), **kw)
  misses = ar._build.cache_info().misses
  b = ar.generate(model, params, labels, rng=jax.random.key(0), **kw)
  c = ar.generate(model, params, labels, rng=jax.random.key(1), **dict(kw, cfg_scale=3.0))
  assert ar._build.cache_info().misses == misses
  assert a.dtype == jnp.int32 and a.shape == (4, 16)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()
  assert int(a.min()) >= 0 and int(a.max()) < TINY.vocab_size


def test_greedy_equals_top_k_one(tiny):
  model, params = tiny
  labels = jnp.array([1, 2, 3, 4])
  greedy = ar.generate(model, params, labels, num_tokens=16, rng=jax.random.key(0),
                       cfg_scale=4.0, greedy=True)
  top1 = ar.generate(model, params, labels, num_tokens=16, rng=jax.random.key(5),
                     cfg_scale=4.0, top_k=1)
  np.testing.assert_array_equal(greedy, top1)


def test_greedy_tokens_are_the_argmax_of_the_guided_logits(tiny):
  model, params = tiny
  tokens, raw = ar.generate(model, params, jnp.array([1, 2]), num_tokens=16,
                            rng=jax.random.key(0), cfg_scale=3.0, cfg_interval=4, greedy=True,
                            return_logits=True)
  assert raw.shape == (4, 16, TINY.vocab_size)
  guided = decode.guided_logits(raw, 3.0, 4)
  np.testing.assert_array_equal(tokens, np.argmax(guided, axis=-1))
  # Steps after the interval follow the conditional rows alone.
  np.testing.assert_array_equal(guided[:, 6:], raw[:2, 6:])


def test_sharded_equals_unsharded(tiny):
  model, params = tiny
  mesh = sharding.create_mesh((-1, 2, 2))
  labels = jnp.array([1, 2, 3, 4])
  # The statics of the determinism test, so the unsharded program is reused.
  kw = dict(num_tokens=16, rng=jax.random.key(3), cfg_scale=2.0, cfg_interval=4, top_k=20)
  plain = ar.generate(model, params, labels, **kw)
  sharded = ar.generate(model, params, labels, mesh=mesh, **kw)
  assert sharded.sharding.spec == jax.sharding.PartitionSpec(sharding.BATCH_AXES)
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(plain))


def test_bad_inputs_raise(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match="num_tokens"):
    ar.generate(model, params, jnp.array([1]), num_tokens=17, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="labels"):
    ar.generate(model, params, jnp.zeros((1, 2), jnp.int32), num_tokens=4, rng=jax.random.key(0))
  no_null = gpt.GPT(dataclasses.replace(TINY, class_dropout_prob=0.0))
  with pytest.raises(ValueError, match="null class"):
    ar.generate(no_null, params, jnp.array([1]), num_tokens=4, rng=jax.random.key(0),
                cfg_scale=2.0)
  with pytest.raises(ValueError, match="data-parallel"):
    ar.generate(model, params, jnp.array([1, 2]), num_tokens=4, rng=jax.random.key(0),
                mesh=sharding.create_mesh((2, 2, -1)))
