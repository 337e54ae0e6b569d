"""KV-cache text generation against transformers' own `generate` on a small random LLaMA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from vwt_jax.conversion import hf_llama
from vwt_jax.models import llama_lm
from vwt_jax.sampling import text_generation as tg

NEW = 12
PAD = 0
# Two lengths, so the shorter prompt is left-padded in the batch.
PROMPTS = [[5, 17, 99, 3, 64, 21, 8], [40, 7, 120]]


@pytest.fixture(scope="module")
def hf_and_converted(tmp_path_factory):
  """(transformers model, converted config, converted params) of one random GQA LLaMA."""
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
      bos_token_id=None, eos_token_id=None, pad_token_id=PAD))
  with torch.no_grad():
    # Wide weights, so greedy continuations do not collapse to one repeated token.
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
  model_dir = tmp_path_factory.mktemp("llama")
  model.eval().save_pretrained(str(model_dir), safe_serialization=True)
  config, params = hf_llama.load_hf_llama(str(model_dir))
  return model, config, params


@pytest.fixture(scope="module")
def reference(hf_and_converted):
  """transformers' greedy continuation of each prompt, run alone (no padding)."""
  model = hf_and_converted[0]
  out = []
  for prompt in PROMPTS:
    with torch.no_grad():
      ids = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW,
                           min_new_tokens=NEW, pad_token_id=PAD)
    out.append(ids[0, len(prompt):].tolist())
  return out


def _generate(hf_and_converted, **kwargs):
  """Raw `generate` output (tokens, lengths) as numpy, for the left-padded PROMPTS."""
  _, config, params = hf_and_converted
  model = llama_lm.LlamaLM(config)
  ids, mask = tg.left_pad(PROMPTS, PAD)
  embeds = model.apply({"params": params}, jnp.asarray(ids), method="embed")
  cache = llama_lm.init_cache(config, len(PROMPTS), ids.shape[1] + NEW - 1)
  out = tg.generate(*tg.module_fns(model), params, embeds, mask, cache=cache,
                    max_new_tokens=NEW, pad_id=PAD, **kwargs)
  return jax.device_get(out)


def test_left_pad():
  ids, mask = tg.left_pad([[1, 2, 3], [4]], 9)
  np.testing.assert_array_equal(ids, [[1, 2, 3], [9, 9, 4]])
  np.testing.assert_array_equal(mask, [[True, True, True], [False, False, True]])
  with pytest.raises(ValueError, match="at least one token"):
    tg.left_pad([[1], []], 0)


def test_greedy_matches_transformers(hf_and_converted, reference):
  assert len(set(reference[0])) > 3 and len(set(reference[1])) > 3  # not degenerate
  _, config, params = hf_and_converted
  got = tg.generate_text(params, config, PROMPTS, max_new_tokens=NEW, pad_id=PAD)
  assert got == reference


def test_compiled_program_is_reused(hf_and_converted):
  _, config, params = hf_and_converted
  tg.generate_text(params, config, PROMPTS, max_new_tokens=NEW, pad_id=PAD)
  misses = tg._build.cache_info().misses  # pylint: disable=protected-access
  tg.generate_text(params, config, PROMPTS, max_new_tokens=NEW, pad_id=PAD)
  assert tg._build.cache_info().misses == misses  # pylint: disable=protected-access


def test_stop_sequence_ends_a_row_and_pads_the_rest(hf_and_converted, reference):
  # A two-token stop taken from row 0's own continuation at steps 4-5, and one
  # that never fires.
  stop = tuple(reference[0][4:6])
  stops = [stop, (127, 127, 127)]
  first = next(i for i in range(NEW - 1) if tuple(reference[0][i:i + 2]) == stop)
  other = next((i for i in range(NEW - 1) if tuple(reference[1][i:i + 2]) == stop), NEW)
  tokens, lengths = _generate(hf_and_converted, stop_sequences=stops)
  np.testing.assert_array_equal(lengths, [first, other])
  np.testing.assert_array_equal(tokens[0, :first + 2], reference[0][:first + 2])
  assert (tokens[0, first + 2:] == PAD).all()
  np.testing.assert_array_equal(tokens[1, :other], reference[1][:other])
  _, config, params = hf_and_converted
  got = tg.generate_text(params, config, PROMPTS, max_new_tokens=NEW, pad_id=PAD,
                         stop_sequences=stops)
  assert got == [reference[0][:first], reference[1][:other]]


# One compiled program for both tests: top_k and whether top_p is on are static.
SAMPLED = dict(temperature=1.0, top_k=64)


def test_sampling_is_deterministic_per_key(hf_and_converted):
  a = _generate(hf_and_converted, key=jax.random.key(1), top_p=0.95, **SAMPLED)
  b = _generate(hf_and_converted, key=jax.random.key(1), top_p=0.95, **SAMPLED)
  c = _generate(hf_and_converted, key=jax.random.key(2), top_p=0.95, **SAMPLED)
  np.testing.assert_array_equal(a[0], b[0])
  assert (a[0] != c[0]).any()
  np.testing.assert_array_equal(a[1], [NEW, NEW])


def test_tiny_top_p_is_greedy(hf_and_converted, reference):
  tokens, _ = _generate(hf_and_converted, key=jax.random.key(3), top_p=1e-6, **SAMPLED)
  np.testing.assert_array_equal(tokens, reference)


def test_rejects_short_cache_and_missing_key(hf_and_converted):
  _, config, params = hf_and_converted
  model = llama_lm.LlamaLM(config)
  embeds = jnp.zeros((1, 4, config.dim))
  with pytest.raises(ValueError, match="need 15"):
    tg.generate(*tg.module_fns(model), params, embeds, None,
                cache=llama_lm.init_cache(config, 1, 14), max_new_tokens=NEW)
  with pytest.raises(ValueError, match="PRNG key"):
    tg.generate(*tg.module_fns(model), params, embeds, None,
                cache=llama_lm.init_cache(config, 1, 15), max_new_tokens=NEW, temperature=0.7)


def test_repetition_penalty_matches_transformers(hf_and_converted, reference):
  model, config, params = hf_and_converted
  penalized = []
  for prompt in PROMPTS:
    with torch.no_grad():
      ids = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW,
                           min_new_tokens=NEW, pad_token_id=PAD, repetition_penalty=1.5)
    penalized.append(ids[0, len(prompt):].tolist())
  # The penalty changes the continuations, so the comparison below tests it.
  assert penalized != reference
  got = tg.generate_text(params, config, PROMPTS, max_new_tokens=NEW, pad_id=PAD,
                         repetition_penalty=1.5)
  assert got == penalized
  # Marks as a (B, V) array: transformers' generation from embeddings starts
  # from a BOS, which it penalizes too.
  marks = tg.penalty_marks([[1], [1, 2]], 8)
  np.testing.assert_array_equal(marks[:, :3], [[False, True, False], [False, True, True]])
