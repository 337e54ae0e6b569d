"""The KV-cache decode loop of the autoregressive samplers (image GPT, captioner / LLM).

A model enters as logits functions that take the params first, so that the
params are arguments of the compiled program rather than constants baked into it:

  prefill_fn(params, inputs, cache, context) -> (logits (R, V), cache)
  decode_fn(params, token (B,), position, cache, context) -> (logits (R, V), cache)

`inputs` is the prompt (class labels, caption or prompt embeddings), `context`
what both functions take besides (a padding mask, or None) and `position` the
cache index the fed token is written at. `decode_loop` prefills and draws
token 0 from the prefill's logits; step s >= 1 then feeds token s-1 at
position `start + s - 1` and draws token s with the key `fold_in(rng, s)`.
The functions return the logits of the B rows drawn from (R = B), unless a
`guide` maps their R rows to those B, as `classifier_free_guidance` does.

Tokens are drawn by `sample_token`: temperature, then top-k, then top-p, or
the argmax when greedy; a repetition penalty (`penalize_repeats`) may come
first. The decode steps may run as several loops over
growing caches (`segments`), so that attention reads only the filled part.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vwt_jax.models import llama

PrefillFn = Callable[[Any, Any, Any, Any], tuple[jax.Array, Any]]
DecodeFn = Callable[[Any, jax.Array, Any, Any, Any], tuple[jax.Array, Any]]
GuideFn = Callable[[jax.Array, Any], jax.Array]


class LogitsFns(NamedTuple):
  """A model as `decode_loop` sees it (see the module docstring)."""
  prefill: PrefillFn
  decode: DecodeFn
  # (logits (R, V), step) -> the (B, V) logits token `step` is drawn from.
  guide: Optional[GuideFn] = None


def kth_largest(x: jax.Array, k: int) -> jax.Array:
  """The k-th largest float32 of each row of x (..., V), as (..., 1); 1 <= k <= V.

  A bitwise search instead of a sort: the floats map to unsigned keys in the
  same order, and the key of the k-th largest is the largest t with at least
  k keys >= t, found one bit at a time from the top (32 counting passes, each
  one compare and sum over the row). On CPU this is several times faster than
  `lax.top_k`'s sort of a 16k vocabulary, and exactly its k-th value.
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  sign = jnp.uint32(1 << 31)
  # Negative floats order backwards as integers: flip them whole; lift the others.
  keys = jnp.where(bits >= sign, ~bits, bits | sign)
  t = jnp.zeros(x.shape[:-1] + (1,), jnp.uint32)
  for bit in range(31, -1, -1):
    candidate = t | jnp.uint32(1 << bit)
    enough = jnp.sum(keys >= candidate, axis=-1, keepdims=True, dtype=jnp.int32) >= k
    t = jnp.where(enough, candidate, t)
  return jax.lax.bitcast_convert_type(jnp.where(t >= sign, t & ~sign, ~t), jnp.float32)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps logits >= the k-th largest (ties may keep more); k is clipped to [1, V]."""
  k = max(1, min(int(k), logits.shape[-1]))
  return jnp.where(logits < kth_largest(logits, k), -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: Any) -> jax.Array:
  """Nucleus filter: drops tokens after the cumulative probability exceeds p.

  The drop mask is shifted right by one, so the first token crossing p stays
  and the top-1 token is always kept (the reference's rule). p >= 1 keeps
  every token, even where the float32 cumulative sum passes 1.
  """
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  drop = (cum > p) & (p < 1.0)
  drop = jnp.concatenate([jnp.zeros_like(drop[..., :1]), drop[..., :-1]], axis=-1)
  drop_orig = jnp.take_along_axis(drop, jnp.argsort(order, axis=-1), axis=-1)
  return jnp.where(drop_orig, -jnp.inf, logits)


def filter_logits(logits: jax.Array, *, temperature: Any = 1.0, top_k: int = 0,
                  top_p: Any = 1.0, use_top_p: Optional[bool] = None) -> jax.Array:
  """logits / max(temperature, 1e-5), then top-k (if k > 0), then top-p (if p < 1)."""
  logits = logits.astype(jnp.float32) / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-5)
  if top_k > 0:
    logits = top_k_filter(logits, top_k)
  if use_top_p if use_top_p is not None else top_p < 1.0:
    logits = top_p_filter(logits, top_p)
  return logits


def sample_token(logits: jax.Array, rng: jax.Array, greedy: bool, temperature: Any, top_k: int,
                 top_p: Any, use_top_p: Optional[bool] = None) -> jax.Array:
  """One int32 token per row of `logits` (..., V) after `filter_logits`.

  `greedy` takes the argmax, else a categorical draw from `rng`, or for
  logits (B, V) and (B,) typed keys, row b's draw from `rng[b]` (exactly
  what a batch of row b alone draws from that key). Settings may be (B, 1)
  arrays, one per row. `greedy`,
  `top_k` and `use_top_p` are static, `temperature` and `top_p` may be traced
  (`use_top_p=None` means top_p < 1, which needs a concrete top_p).
  """
  filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                           use_top_p=use_top_p)
  if greedy:
    return jnp.argmax(filtered, axis=-1).astype(jnp.int32)
  if per_row_keys(rng):
    return jax.vmap(jax.random.categorical)(rng, filtered).astype(jnp.int32)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def penalize_repeats(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
  """transformers' `RepetitionPenaltyLogitsProcessor`: the logits (B, V) of the
  tokens `seen` (B, V) bool are divided by `penalty` where positive and
  multiplied by it where negative."""
  return jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)


def per_row_keys(rng: jax.Array) -> bool:
  """Whether `rng` is a (B,) array of typed keys, one per row, rather than one key."""
  return jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.ndim == 1


def guided_logits(logits: jax.Array, cfg_scale: Any, cfg_interval: Any = -1,
                  step: Any = None) -> jax.Array:
  """Classifier-free guidance of [cond ; uncond] logits: uncond + (cond - uncond) * cfg_scale.

  Token t is guided when cfg_interval < 0 or t <= cfg_interval + 1; the other
  tokens are drawn from the conditional logits alone.

  Args:
    logits: (2B, V) logits of token `step`, or (2B, N, V) logits of tokens
      0..N-1 when `step` is None (what the GPT sampler's `return_logits` gives).
    cfg_scale: the guidance scale. A Python number <= 1 means an unguided
      batch of B rows, returned as it is.
    cfg_interval: k >= 0 guides tokens 0..k+1 only; a negative one, every token.
    step: the index of the token drawn from `logits`.

  Returns:
    The (B, V) or (B, N, V) logits the tokens are drawn from.
  """
  if not isinstance(cfg_scale, jax.Array) and cfg_scale <= 1.0:
    return logits
  if step is None:
    step = jnp.arange(logits.shape[1])[:, None]
  batch = logits.shape[0] // 2
  cond, uncond = logits[:batch], logits[batch:]
  guided = (cfg_interval < 0) | (step <= cfg_interval + 1)
  return jnp.where(guided, uncond + (cond - uncond) * cfg_scale, cond)


def classifier_free_guidance(fns: LogitsFns, cfg_scale: Any, cfg_interval: Any) -> LogitsFns:
  """The logits functions of a [cond ; uncond] batch, guided by `guided_logits`.

  The returned functions take the B conditional rows: they run `fns` on both
  halves (inputs and context repeated, the same token fed to both), and their
  guide mixes the 2B rows of logits into B. The cache must hold 2B rows.

  Args:
    fns: the model's functions; its prefill takes one more argument, bool (2B,)
      flags of the rows that run with the null condition.
    cfg_scale, cfg_interval: as `guided_logits` (may be traced).
  """
  # An array even when given a Python number: these 2B rows are always mixed.
  cfg_scale = jnp.asarray(cfg_scale, jnp.float32)

  def double(tree):
    return jax.tree.map(lambda x: jnp.concatenate([x, x]), tree)

  def prefill(params, inputs, cache, context):
    batch = jax.tree.leaves(inputs)[0].shape[0]
    null = jnp.concatenate([jnp.zeros((batch,), bool), jnp.ones((batch,), bool)])
    return fns.prefill(params, double(inputs), cache, double(context), null)

  def decode(params, token, position, cache, context):
    return fns.decode(params, double(token), position, cache, double(context))

  def guide(logits, step):
    return guided_logits(logits, cfg_scale, cfg_interval, step)

  return LogitsFns(prefill, decode, guide)


def _track_stops(stops: tuple[tuple[int, ...], ...], step: Any, token: jax.Array,
                 window: jax.Array, lengths: jax.Array,
                 done: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(window, lengths, done) once token `step` (pad_id in finished rows) is drawn."""
  longest = window.shape[1]
  window = jnp.concatenate([window[:, 1:], token[:, None]], axis=1)
  stop_len = jnp.zeros(token.shape, jnp.int32)
  for stop in stops:
    hit = jnp.all(window[:, longest - len(stop):] == jnp.asarray(stop, jnp.int32), axis=1)
    # Several stops ending here: the longest one is cut.
    stop_len = jnp.maximum(stop_len, jnp.where(hit, len(stop), 0))
  stopped = ~done & (stop_len > 0)
  lengths = jnp.where(stopped, step + 1 - stop_len, lengths)
  return window, lengths, done | stopped


def segment_runs(num_tokens: int, segments: int) -> list[tuple[int, int]]:
  """(first, end) steps of up to `segments` equal runs of decode steps 1..num_tokens-1."""
  steps = num_tokens - 1
  n = max(1, min(segments, steps))
  bounds = [1 + -(-k * steps // n) for k in range(n + 1)]
  return [(first, end) for first, end in zip(bounds[:-1], bounds[1:]) if end > first]


def auto_segments(num_tokens: int) -> int:
  """Decode segments for `num_tokens` steps: one per 64 tokens, 1 to 8.

  With n segments attention reads on average (1 + 1/n) / 2 of the cache,
  against all of it in one loop; each segment adds one copy of the decode
  step to the compiled program.
  """
  return max(1, min(8, round(num_tokens / 64)))


def decode_loop(fns: LogitsFns, params: Any, inputs: Any, context: Any, cache: Any,
                rng: jax.Array, temperature: Any, top_p: Any, *, num_tokens: int, start: int,
                greedy: bool, top_k: int, use_top_p: bool,
                stops: tuple[tuple[int, ...], ...] = (), pad_id: int = 0,
                return_logits: bool = False, segments: int = 1,
                repetition_penalty: float = 1.0, seen: Optional[jax.Array] = None
                ) -> tuple[jax.Array, jax.Array, Optional[jax.Array]]:
  """Generates up to `num_tokens` tokens per row; traced inside the caller's jitted program.

  Args:
    fns: the model (see the module docstring).
    params, inputs, context: what `fns` take.
    cache: an empty KV cache of R rows holding at least start + num_tokens - 1
      positions (with several `segments`, any length: it is cut and grown here).
    rng: PRNG key of the draws, or (B,) typed keys, one per row: row b then
      draws with `fold_in(rng[b], step)`, as a batch of row b alone with
      `rng[b]`. The result is a deterministic function of it.
    temperature, top_p: `sample_token`'s (may be traced).
    num_tokens: tokens to draw per row.
    start: the position of the first fed token (the prompt length).
    greedy, top_k, use_top_p: `sample_token`'s (static).
    stops: token-id sequences that end a row; the loop stops once every row
      has produced one. Without any it runs all `num_tokens` steps.
    pad_id: what follows a row's stop sequence (and fills the tokens not drawn).
    return_logits: also return the logits of every step as `fns` return them.
    segments: runs the decode steps as up to this many loops, each over a cache
      just long enough for its steps (grown with zeros in between), so that
      attention reads the filled part of the cache rather than all of it.
      Each loop is compiled apart: more segments, less attention work, longer
      compilation (see `auto_segments`).
    repetition_penalty: `penalize_repeats` before each draw (static; 1 = off)
      of every token drawn so far and of those `seen` marks.
    seen: (B, V) bool, the tokens penalized from the first draw on: what
      transformers' generation starts from (the prompt ids, or the BOS it puts
      in front of a prompt given as embeddings); None = none.

  Returns:
    tokens int32 (B, num_tokens); lengths int32 (B,): the number of tokens
    before a row's first stop sequence, num_tokens for a row without one; the logits
    float32 (R, num_tokens, V) of the prefill then each decode, or None.
  """

  fold_in = jax.vmap(jax.random.fold_in, (0, None)) if per_row_keys(rng) else jax.random.fold_in

  penalize = repetition_penalty != 1.0

  def draw(step, logits, seen):
    if fns.guide is not None:
      logits = fns.guide(logits, step)
    if penalize:
      logits = penalize_repeats(logits, seen, repetition_penalty)
    return sample_token(logits, fold_in(rng, step), greedy, temperature, top_k, top_p,
                        use_top_p)

  def record(step, token, logits, carry):
    """Writes token `step` (and its logits) and advances the rows' stop state."""
    carry = dict(carry)
    if stops:
      token = jnp.where(carry["done"], pad_id, token)
      carry["window"], carry["lengths"], carry["done"] = _track_stops(
          stops, step, token, carry["window"], carry["lengths"], carry["done"])
    carry["tokens"] = carry["tokens"].at[:, step].set(token)
    if penalize:
      carry["seen"] = carry["seen"].at[jnp.arange(token.shape[0]), token].set(True)
    if return_logits:
      carry["logits"] = carry["logits"].at[:, step].set(logits)
    carry["token"] = token
    return carry

  def body(step, carry):
    logits, cache = fns.decode(params, carry["token"], start + step - 1, carry["cache"], context)
    return record(step, draw(step, logits, carry.get("seen")), logits, dict(carry, cache=cache))

  runs = segment_runs(num_tokens, segments)

  def fit(cache, end):
    # Step s writes position start + s - 1: the steps before `end` need start + end - 1.
    return llama.resize_cache(cache, start + end - 1) if len(runs) > 1 else cache

  logits, cache = fns.prefill(params, inputs, fit(cache, runs[0][1] if runs else 1), context)
  if penalize and seen is None:
    rows = logits.shape[0] if fns.guide is None else fns.guide(logits, 0).shape[0]
    seen = jnp.zeros((rows, logits.shape[-1]), bool)
  token = draw(0, logits, seen)
  batch = token.shape[0]
  carry = dict(cache=cache, tokens=jnp.full((batch, num_tokens), pad_id, jnp.int32))
  if penalize:
    carry["seen"] = seen
  if return_logits:
    carry["logits"] = jnp.zeros((logits.shape[0], num_tokens, logits.shape[-1]), jnp.float32)
  if stops:
    # The last generated tokens; -1 (no token id) before the first ones, so a
    # stop never matches across the prompt.
    carry["window"] = jnp.full((batch, max(len(s) for s in stops)), -1, jnp.int32)
    carry["lengths"] = jnp.full((batch,), num_tokens, jnp.int32)
    carry["done"] = jnp.zeros((batch,), bool)
  carry = record(0, token, logits, carry)

  for first, end in runs:
    carry["cache"] = fit(carry["cache"], end)
    if stops:
      carry = jax.lax.while_loop(
          lambda c, end=end: (c["step"] < end) & ~jnp.all(c["done"]),
          lambda c: dict(body(c["step"], c), step=c["step"] + 1),
          dict(carry, step=jnp.int32(first)))
      del carry["step"]
    else:
      carry = jax.lax.fori_loop(first, end, body, carry)
  lengths = carry["lengths"] if stops else jnp.full((batch,), num_tokens, jnp.int32)
  return carry["tokens"], lengths, carry.get("logits")
