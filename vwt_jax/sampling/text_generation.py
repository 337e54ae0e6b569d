"""Batched KV-cache text generation for causal LMs (`LlamaLM`, the captioner).

One jitted program per (model functions, static settings, shapes) around the
decode loop the image GPT sampler runs too (`sampling.decode`): a prefill of
the left-padded prompt embeddings, then single-token decodes that end once
every row has produced a stop sequence or `max_new_tokens` tokens. Tokens are
drawn by `decode.sample_token` (temperature, then top-k, then top-p);
temperature 0 is greedy. An optional repetition penalty comes first, as
transformers applies its logits processors before its warpers.

The model enters as `decode`'s two logits functions, with the prompt mask as
their context:

  prefill_fn(params, inputs_embeds (B,T,D), cache, mask (B,T)) -> (logits (B,V), cache)
  decode_fn(params, token (B,), position, cache, mask (B,T)) -> (logits (B,V), cache)

`module_fns(module)` makes them from a Flax module with `LlamaLM`'s
`prefill`/`decode` methods. Compiled programs are cached by the functions'
identity, so callers should reuse one pair (`module_fns` returns the same pair
for equal modules).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import llama, llama_lm
from vwt_jax.sampling import decode as decode_lib


@functools.lru_cache(maxsize=16)
def module_fns(module: nn.Module) -> tuple[decode_lib.PrefillFn, decode_lib.DecodeFn]:
  """(prefill_fn, decode_fn) of a module's `prefill`/`decode` methods on {'params': params}."""

  def prefill_fn(params, inputs_embeds, cache, mask):
    return module.apply({"params": params}, inputs_embeds, cache, mask=mask, method="prefill")

  def decode_fn(params, token, position, cache, mask):
    return module.apply({"params": params}, token, position, cache, mask=mask, method="decode")

  return prefill_fn, decode_fn


@functools.lru_cache(maxsize=32)
def _build(prefill_fn: decode_lib.PrefillFn, decode_fn: decode_lib.DecodeFn,
           max_new_tokens: int, greedy: bool, top_k: int, use_top_p: bool,
           stops: tuple[tuple[int, ...], ...], pad_id: int, repetition_penalty: float):
  """The jitted generation program for these static settings."""
  fns = decode_lib.LogitsFns(prefill_fn, decode_fn)

  def run(params, inputs_embeds, prompt_mask, cache, key, temperature, top_p, seen):
    tokens, lengths, _ = decode_lib.decode_loop(
        fns, params, inputs_embeds, prompt_mask, cache, key, temperature, top_p,
        num_tokens=max_new_tokens, start=prompt_mask.shape[1], greedy=greedy, top_k=top_k,
        use_top_p=use_top_p, stops=stops, pad_id=pad_id,
        repetition_penalty=repetition_penalty, seen=seen)
    return tokens, lengths

  return jax.jit(run)


def _stop_tuples(stop_sequences: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
  stops = tuple(tuple(int(t) for t in s) for s in stop_sequences)
  if any(not s for s in stops):
    raise ValueError(f"empty stop sequence in {stop_sequences!r}")
  return stops


def generate(prefill_fn: decode_lib.PrefillFn, decode_fn: decode_lib.DecodeFn, params: Any,
             inputs_embeds: jax.Array, prompt_mask: Optional[jax.Array], *, cache: Any,
             max_new_tokens: int, key: Optional[jax.Array] = None, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0,
             stop_sequences: Sequence[Sequence[int]] = (), pad_id: int = 0,
             repetition_penalty: float = 1.0,
             penalized: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Continues a batch of prompts given as embeddings.

  Args:
    prefill_fn, decode_fn: the model (see the module docstring), e.g.
      `module_fns(LlamaLM(config))`.
    params: what the two functions take first.
    inputs_embeds: (B, T, D) prompt embeddings, left-padded.
    prompt_mask: (B, T) bool, False at the left padding; None = no padding.
    cache: an empty KV cache of batch B holding at least T + max_new_tokens - 1
      positions (e.g. `llama_lm.init_cache`).
    max_new_tokens: tokens to generate per row at most.
    key: PRNG key of the draws (needed when temperature > 0); the result is a
      deterministic function of it.
    temperature: 0 = greedy (argmax); else the softmax temperature.
    top_k: keep the k most likely tokens (0 = all).
    top_p: nucleus threshold (1 = off).
    stop_sequences: token-id sequences that end a row (e.g. the ids of '###'
      and `(eos_id,)`), matched on the generated tokens only.
    pad_id: what follows a row's stop sequence.
    repetition_penalty: transformers' repetition penalty (1 = off) of the
      tokens generated so far and of those `penalized` (B, V) bool marks
      (`decode.decode_loop`'s `seen`; e.g. `penalty_marks` of the prompts).

  Returns:
    tokens int32 (B, max_new_tokens) and lengths int32 (B,). A row that
    produced a stop sequence has its answer in tokens[:length], the stop
    sequence right after it (not counted in the length) and pad_id from there
    on; a row that did not has length max_new_tokens.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
  if repetition_penalty <= 0:
    raise ValueError(f"repetition_penalty={repetition_penalty}: expected > 0")
  if inputs_embeds.ndim != 3:
    raise ValueError(f"inputs_embeds {inputs_embeds.shape}: expected (B, T, D)")
  batch, prompt_len = inputs_embeds.shape[:2]
  if prompt_mask is None:
    prompt_mask = jnp.ones((batch, prompt_len), bool)
  prompt_mask = jnp.asarray(prompt_mask).astype(bool)
  if prompt_mask.shape != (batch, prompt_len):
    raise ValueError(f"prompt_mask {prompt_mask.shape}: expected ({batch}, {prompt_len})")
  needed = prompt_len + max_new_tokens - 1
  if llama.cache_length(cache) < needed:
    raise ValueError(f"the cache holds {llama.cache_length(cache)} positions; a prompt of "
                     f"{prompt_len} and {max_new_tokens} new tokens need {needed}")
  greedy = temperature <= 0
  if key is None:
    if not greedy:
      raise ValueError(f"temperature={temperature} samples: pass a PRNG key")
    key = jax.random.key(0)
  fn = _build(prefill_fn, decode_fn, int(max_new_tokens), bool(greedy), int(top_k),
              bool(top_p < 1.0), _stop_tuples(stop_sequences), int(pad_id),
              float(repetition_penalty))
  # Greedy: the argmax ignores the temperature, which must only stay positive.
  return fn(params, inputs_embeds, prompt_mask, cache, key,
            jnp.float32(1.0 if greedy else temperature), jnp.float32(top_p), penalized)


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """int32 ids (B, T) right-aligned with pad_id in front, and the bool mask of real slots."""
  if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
    raise ValueError("every prompt needs at least one token")
  length = max(len(p) for p in prompt_ids)
  ids = np.full((len(prompt_ids), length), pad_id, np.int32)
  mask = np.zeros(ids.shape, bool)
  for row, prompt in enumerate(prompt_ids):
    ids[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = True
  return ids, mask


def penalty_marks(ids: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
  """(B, vocab_size) bool marks of each row's `ids`, for `generate`'s `penalized`."""
  marks = np.zeros((len(ids), vocab_size), bool)
  for row, row_ids in enumerate(ids):
    marks[row, list(row_ids)] = True
  return marks


def generate_text(params: Any, config: llama_lm.LlamaLMConfig,
                  prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                  key: Optional[jax.Array] = None, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, stop_sequences: Sequence[Sequence[int]] = (),
                  pad_id: int = 0, repetition_penalty: float = 1.0) -> list[list[int]]:
  """`generate` for a plain `LlamaLM` on token-id prompts of any lengths.

  The prompts are left-padded into one batch. A repetition penalty counts each
  row's prompt too, as transformers does. Returns each row's generated ids up
  to (without) its stop sequence; the other arguments are `generate`'s.
  """
  model = llama_lm.LlamaLM(config)
  ids, mask = left_pad(prompt_ids, pad_id)
  embeds = model.apply({"params": params}, jnp.asarray(ids), method="embed")
  cache = llama_lm.init_cache(config, ids.shape[0], ids.shape[1] + max_new_tokens - 1)
  tokens, lengths = generate(
      *module_fns(model), params, embeds, mask, cache=cache, max_new_tokens=max_new_tokens,
      key=key, temperature=temperature, top_k=top_k, top_p=top_p,
      stop_sequences=stop_sequences, pad_id=pad_id, repetition_penalty=repetition_penalty,
      penalized=penalty_marks(prompt_ids, config.vocab_size)
      if repetition_penalty != 1.0 else None)
  tokens, lengths = jax.device_get((tokens, lengths))
  return [row[:n].tolist() for row, n in zip(tokens, lengths)]
