"""Autoregressive sampling for the LlamaGen GPT on the KV-cache loop of `sampling.decode`.

Reproduces `autoregressive/models/generate.py`:
* CFG batches `[cond ; uncond]` (conditional rows first; the null class or the
  null caption via `force_drop`), feeds the same token to both halves and mixes
  raw logits `uncond + (cond - uncond) * cfg_scale` before temperature/top-k/top-p
  (`decode.classifier_free_guidance`).
* `cfg_interval=k >= 0`: the prefill and decode steps i <= k are guided (image
  tokens 0..k+1); later steps use the conditional logits alone.
* t2i `emb_mask` hides padded caption slots in both halves.

The whole generation is one XLA program (prefill, then a fixed number of
single-token decodes into a static cache), compiled once per (config, batch,
static settings); cfg_scale, cfg_interval, temperature and top_p are traced.

`row_program` is the same program with a key and settings per row, for a
server that batches unrelated requests (`vwt_jax.serving`): row b is what
`generate` gives for that row alone with `rng=keys[b]` and its settings.
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vwt_jax.core import sharding as sharding_lib
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.sampling import decode as decode_lib


@functools.lru_cache(maxsize=32)
def _build(config: gpt_lib.GPTConfig, num_tokens: int, cfg: bool, top_k: int, use_top_p: bool,
           greedy: bool, return_logits: bool, mesh: Optional[Mesh],
           param_shardings: Optional["_ByIdentity"], per_row: bool = False):
  """The jitted generation program for these static settings.

  `per_row`: `rng` is a (B,) key array and the traced settings are (B,)
  (`row_program`); otherwise one key and scalar settings for the whole batch.
  """
  model = gpt_lib.GPT(config)
  prefix = config.cls_token_num

  def prefill_fn(params, cond, cache, emb_mask, force_drop=None):
    return model.apply({"params": params}, cond, cache, emb_mask=emb_mask,
                       force_drop=force_drop, method=gpt_lib.GPT.prefill)

  def decode_fn(params, token, position, cache, emb_mask):
    return model.apply({"params": params}, token, position, cache, emb_mask=emb_mask,
                       method=gpt_lib.GPT.decode)

  def constrain(x, spec):
    if mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  def run(params, cond, emb_mask, rng, cfg_scale, cfg_interval, temperature, top_p):
    if per_row:
      # (B, 1): each row's setting against its (B, V) logits.
      cfg_scale, cfg_interval, temperature, top_p = (
          x[:, None] for x in (cfg_scale, cfg_interval, temperature, top_p))
    fns = decode_lib.LogitsFns(prefill_fn, decode_fn)
    if cfg:
      fns = decode_lib.classifier_free_guidance(fns, cfg_scale, cfg_interval)
    if per_row and cfg:
      fns = _guide_per_row(fns, cfg_scale)
    cache = gpt_lib.init_cache(config, cond.shape[0] * (2 if cfg else 1), prefix + num_tokens)
    batch_axis = 1 if config.scan_layers else 0
    cache = jax.tree.map(
        lambda c: constrain(c, P(*([None] * batch_axis), sharding_lib.BATCH_AXES)), cache)
    tokens, _, all_logits = decode_lib.decode_loop(
        fns, params, cond, emb_mask, cache, rng, temperature, top_p, num_tokens=num_tokens,
        start=prefix, greedy=greedy, top_k=top_k, use_top_p=use_top_p,
        return_logits=return_logits, segments=decode_lib.auto_segments(num_tokens))
    return (tokens, all_logits) if return_logits else tokens

  if mesh is None:
    return jax.jit(run)
  data = NamedSharding(mesh, P(sharding_lib.BATCH_AXES))
  # The key and settings: one for all rows, or one per row, split with the rows.
  rest = data if per_row else NamedSharding(mesh, P())
  return jax.jit(
      run, in_shardings=(param_shardings.tree, data, data) + (rest,) * 5,
      out_shardings=(data, data) if return_logits else data)


def _guide_per_row(fns: decode_lib.LogitsFns, cfg_scale: jax.Array) -> decode_lib.LogitsFns:
  """`fns` whose rows with cfg_scale <= 1 (B, 1) take their conditional logits
  unmixed, as the unguided program gives them."""
  guide = fns.guide

  def per_row(logits, step):
    return jnp.where(cfg_scale > 1, guide(logits, step), logits[:cfg_scale.shape[0]])

  return fns._replace(guide=per_row)


class _ByIdentity:
  """Lets a (cached, hence unique) sharding tree be an `lru_cache` key."""

  def __init__(self, tree):
    self.tree = tree


@functools.lru_cache(maxsize=8)
def _param_shardings(config: gpt_lib.GPTConfig, mesh: Mesh, rules: tuple) -> _ByIdentity:
  """NamedShardings of the params from their logical annotations."""
  return _ByIdentity(
      sharding_lib.logical_to_sharding(gpt_lib.abstract_params(config), mesh, rules))


def _placement(config: gpt_lib.GPTConfig, mesh: Optional[Mesh],
               rules) -> Optional[_ByIdentity]:
  """The params' shardings on `mesh` by `rules` (default `DEFAULT_LOGICAL_AXIS_RULES`);
  None without a mesh."""
  if mesh is None:
    return None
  return _param_shardings(config, mesh, sharding_lib.normalize_rules(
      rules or sharding_lib.DEFAULT_LOGICAL_AXIS_RULES))


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
      [cond ; uncond] = 2B with CFG (see `decode.guided_logits`).

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
  param_shardings = _placement(config, mesh, rules)
  if mesh is not None:
    dp = sharding_lib.data_parallel_size(mesh)
    if cond.shape[0] % dp:
      raise ValueError(f"batch {cond.shape[0]} must divide over the {dp} data-parallel "
                       "devices of the mesh")
    if emb_mask is None and config.model_type == "t2i":
      emb_mask = jnp.ones((cond.shape[0], config.cls_token_num), bool)
  fn = _build(config, int(num_tokens), use_cfg, int(top_k), bool(top_p < 1.0), bool(greedy),
              bool(return_logits), mesh, param_shardings)
  if mesh is not None:
    # Inputs committed elsewhere (e.g. a trainer's layout) are moved, not rejected.
    params = jax.device_put(params, param_shardings.tree)
    cond, emb_mask = jax.device_put((cond, emb_mask),
                                    NamedSharding(mesh, P(sharding_lib.BATCH_AXES)))
  return fn(params, cond, emb_mask, rng, jnp.float32(cfg_scale), jnp.int32(cfg_interval),
            jnp.float32(temperature), jnp.float32(top_p))


def row_program(config: gpt_lib.GPTConfig, *, num_tokens: int, cfg: bool, top_k: int,
                use_top_p: bool, mesh: Optional[Mesh] = None, rules=None):
  """The generation program with a key and settings per row, and its params' layout.

  Returns (program, param_shardings). `program(params, cond, emb_mask, keys,
  cfg_scale, cfg_interval, temperature, top_p)` takes `generate`'s cond and
  emb_mask (B rows, B divisible over the mesh's data-parallel devices), a
  (B,) key array and (B,) float32, int32, float32, float32 settings, and
  returns int32 (B, num_tokens) tokens: row b is `generate`'s tokens for row b
  alone with `rng=keys[b]` and its settings, whatever the other rows hold.
  `cfg` doubles the batch for guidance (rows with cfg_scale <= 1 are not
  guided); `use_top_p` filters the rows with top_p < 1. `param_shardings`
  (None without a mesh) is the params' layout the program takes: place them
  once. Nothing is checked: the caller validates what it feeds.
  """
  param_shardings = _placement(config, mesh, rules)
  program = _build(config, int(num_tokens), bool(cfg), int(top_k), bool(use_top_p), False, False,
                   mesh, param_shardings, per_row=True)
  return program, None if param_shardings is None else param_shardings.tree
