"""Autoregressive sampling for the LlamaGen GPT: one jitted prefill + KV-cache decode loop.

Reproduces `autoregressive/models/generate.py`:
* CFG batches `[cond ; uncond]` (conditional rows first; the null class or the
  null caption via `force_drop`), feeds the same token to both halves and mixes
  raw logits `uncond + (cond - uncond) * cfg_scale` before temperature/top-k/top-p.
* `cfg_interval=k >= 0`: the prefill and decode steps i <= k are guided (image
  tokens 0..k+1); later steps use the conditional logits alone.
* t2i `emb_mask` hides padded caption slots in both halves.

The whole generation is one XLA program (prefill, then a `lax.fori_loop` of
single-token decodes into a static cache), compiled once per (config, batch,
static settings); cfg_scale, cfg_interval, temperature and top_p are traced.
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vwt_jax.core import sharding as sharding_lib
from vwt_jax.models import gpt as gpt_lib


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps logits >= the k-th largest (ties may keep more); k is clipped to [1, V]."""
  k = max(1, min(int(k), logits.shape[-1]))
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: Any) -> jax.Array:
  """Nucleus filter: drops tokens after the cumulative probability exceeds p.

  The drop mask is shifted right by one, so the first token crossing p stays
  and the top-1 token is always kept (the reference's rule).
  """
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  drop = cum > p
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

  `greedy` takes the argmax, else a categorical draw from `rng`; `greedy`,
  `top_k` and `use_top_p` are static, `temperature` and `top_p` may be traced
  (`use_top_p=None` means top_p < 1, which needs a concrete top_p).
  """
  filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                           use_top_p=use_top_p)
  if greedy:
    return jnp.argmax(filtered, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def guided_logits(raw: jax.Array, cfg_scale: float, cfg_interval: int = -1) -> jax.Array:
  """The logits `generate` samples from, given its raw (2B, N, V) CFG logits.

  Step t (image token t) is guided when cfg_interval < 0 or t <= cfg_interval + 1.
  """
  if cfg_scale <= 1.0:
    return raw
  batch = raw.shape[0] // 2
  cond, uncond = raw[:batch], raw[batch:]
  steps = jnp.arange(raw.shape[1])[None, :, None]
  guided = (cfg_interval < 0) | (steps <= cfg_interval + 1)
  return jnp.where(guided, uncond + (cond - uncond) * cfg_scale, cond)


def _null_flags(batch: int, cfg: bool) -> Optional[jax.Array]:
  if not cfg:
    return None
  return jnp.concatenate([jnp.zeros((batch,), bool), jnp.ones((batch,), bool)])


@functools.lru_cache(maxsize=32)
def _build(config: gpt_lib.GPTConfig, num_tokens: int, cfg: bool, top_k: int, use_top_p: bool,
           greedy: bool, return_logits: bool, mesh: Optional[Mesh],
           param_shardings: Optional["_ByIdentity"]):
  """The jitted generation program for these static settings."""
  model = gpt_lib.GPT(config)
  prefix = config.cls_token_num

  def constrain(x, spec):
    if mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  def run(params, cond, emb_mask, rng, cfg_scale, cfg_interval, temperature, top_p):
    variables = {"params": params}
    batch = cond.shape[0]
    if cfg:
      cond = jnp.concatenate([cond, cond])
      if emb_mask is not None:
        emb_mask = jnp.concatenate([emb_mask, emb_mask])
    rows = cond.shape[0]
    cache = gpt_lib.init_cache(config, rows, prefix + num_tokens)
    batch_axis = 1 if config.scan_layers else 0
    cache = jax.tree.map(
        lambda c: constrain(c, P(*([None] * batch_axis), sharding_lib.BATCH_AXES)), cache)

    def mix(logits, guided):
      if not cfg:
        return logits
      cond_l, uncond_l = logits[:batch], logits[batch:]
      mixed = uncond_l + (cond_l - uncond_l) * cfg_scale
      return jnp.where(guided, mixed, cond_l)

    def sample(logits, step):
      return sample_token(logits, jax.random.fold_in(rng, step), greedy, temperature, top_k,
                          top_p, use_top_p)

    logits, cache = model.apply(variables, cond, cache, emb_mask=emb_mask,
                                force_drop=_null_flags(batch, cfg), method=gpt_lib.GPT.prefill)
    all_logits = (jnp.zeros((rows, num_tokens, logits.shape[-1]), jnp.float32)
                  .at[:, 0].set(logits) if return_logits else None)
    token = sample(mix(logits, True), 0)
    tokens = jnp.zeros((batch, num_tokens), jnp.int32).at[:, 0].set(token)

    def body(i, carry):
      tokens, cache, token, all_logits = carry
      fed = jnp.concatenate([token, token]) if cfg else token
      logits, cache = model.apply(variables, fed, prefix + i, cache, emb_mask=emb_mask,
                                  method=gpt_lib.GPT.decode)
      if return_logits:
        all_logits = all_logits.at[:, i + 1].set(logits)
      token = sample(mix(logits, (cfg_interval < 0) | (i <= cfg_interval)), i + 1)
      tokens = tokens.at[:, i + 1].set(token)
      return tokens, cache, token, all_logits

    tokens, _, _, all_logits = jax.lax.fori_loop(
        0, num_tokens - 1, body, (tokens, cache, token, all_logits))
    return (tokens, all_logits) if return_logits else tokens

  if mesh is None:
    return jax.jit(run)
  data = NamedSharding(mesh, P(sharding_lib.BATCH_AXES))
  repl = NamedSharding(mesh, P())
  jitted = jax.jit(
      run, in_shardings=(param_shardings.tree, data, data, repl, repl, repl, repl, repl),
      out_shardings=(data, data) if return_logits else data)

  def placed(params, cond, emb_mask, *scalars):
    # Inputs committed elsewhere (e.g. a trainer's layout) are moved, not rejected.
    params = jax.device_put(params, param_shardings.tree)
    cond, emb_mask = jax.device_put((cond, emb_mask), data)
    return jitted(params, cond, emb_mask, *scalars)
  return placed


class _ByIdentity:
  """Lets a (cached, hence unique) sharding tree be an `lru_cache` key."""

  def __init__(self, tree):
    self.tree = tree


@functools.lru_cache(maxsize=8)
def _param_shardings(config: gpt_lib.GPTConfig, mesh: Mesh, rules: tuple) -> _ByIdentity:
  """NamedShardings of the params from their logical annotations."""
  return _ByIdentity(
      sharding_lib.logical_to_sharding(gpt_lib.abstract_params(config), mesh, rules))


def generate(model: gpt_lib.GPT, params: Any, cond: jax.Array, *, num_tokens: int,
             rng: jax.Array, cfg_scale: float = 1.0, cfg_interval: int = -1,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False, emb_mask: Optional[jax.Array] = None,
             mesh: Optional[Mesh] = None, rules=None, return_logits: bool = False):
  """Samples `num_tokens` image tokens per condition.

  Args:
    model: a `GPT` (only its config is used).
    params: its `params` collection.
    cond: int labels (B,) for c2i, left-padded caption embeddings
      (B, cls_token_num, caption_dim) for t2i.
    num_tokens: tokens to generate (usually `config.block_size`).
    rng: PRNG key; the result is a deterministic function of it.
    cfg_scale: > 1 enables classifier-free guidance ([cond ; uncond] batch).
    cfg_interval: k >= 0 guides only image tokens 0..k+1; -1 guides all.
    temperature, top_k, top_p: the reference's filters (top_k=0: off).
    greedy: argmax instead of sampling (the reference's `sample_logits=False`).
    emb_mask: t2i (B, cls_token_num) int/bool mask of real caption slots.
    mesh, rules: shard rows over ('data','fsdp') and params by their logical
      axes (`rules` default to `DEFAULT_LOGICAL_AXIS_RULES`); B must divide
      over the data-parallel devices.
    return_logits: also return the raw model logits of every step (prefill,
      then each decode), (rows, num_tokens, vocab) float32 with rows = B, or
      [cond ; uncond] = 2B with CFG (see `guided_logits`).

  Returns:
    int32 (B, num_tokens) tokens in raster order (and the logits if asked).
  """
  config = model.config
  use_cfg = cfg_scale > 1.0
  if use_cfg and not config.has_null_condition:
    raise ValueError("cfg_scale > 1 needs a null class: class_dropout_prob must be > 0")
  if num_tokens < 1 or num_tokens > config.block_size:
    raise ValueError(f"num_tokens={num_tokens}: expected 1..block_size={config.block_size}")
  cond = jnp.asarray(cond)
  if config.model_type == "c2i":
    cond = cond.astype(jnp.int32)
    if cond.ndim != 1:
      raise ValueError(f"c2i cond {cond.shape}: expected int labels (B,)")
  elif cond.shape[1:] != (config.cls_token_num, config.caption_dim):
    raise ValueError(f"t2i cond {cond.shape}: expected (B, {config.cls_token_num}, "
                     f"{config.caption_dim})")
  if emb_mask is not None:
    emb_mask = jnp.asarray(emb_mask).astype(bool)
    if emb_mask.shape != (cond.shape[0], config.cls_token_num):
      raise ValueError(f"emb_mask {emb_mask.shape}: expected ({cond.shape[0]}, "
                       f"{config.cls_token_num})")
  param_shardings = None
  if mesh is not None:
    rules = sharding_lib.normalize_rules(rules or sharding_lib.DEFAULT_LOGICAL_AXIS_RULES)
    dp = sharding_lib.data_parallel_size(mesh)
    if cond.shape[0] % dp:
      raise ValueError(f"batch {cond.shape[0]} must divide over the {dp} data-parallel "
                       "devices of the mesh")
    param_shardings = _param_shardings(config, mesh, rules)
    if emb_mask is None and config.model_type == "t2i":
      emb_mask = jnp.ones((cond.shape[0], config.cls_token_num), bool)
  fn = _build(config, int(num_tokens), use_cfg, int(top_k), bool(top_p < 1.0), bool(greedy),
              bool(return_logits), mesh, param_shardings)
  return fn(params, cond, emb_mask, rng, jnp.float32(cfg_scale), jnp.int32(cfg_interval),
            jnp.float32(temperature), jnp.float32(top_p))
