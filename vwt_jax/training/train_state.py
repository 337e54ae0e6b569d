"""Sharding of a train state and the pieces every jitted train step shares."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vwt_jax.core import sharding as sharding_lib
from vwt_jax.training import optimizer as optimizer_lib


def init_params(module: nn.Module, rng, *args, mesh, rules, **kwargs):
  """Abstract (boxed) params, their NamedShardings and an init producing them.

  The init function runs under `jax.jit(out_shardings=...)`, so each device
  only ever materialises its own shard of the parameters.
  """
  def init(rng):
    return module.init(rng, *args, **kwargs)["params"]

  with nn.logical_axis_rules(tuple(rules)):
    boxed = jax.eval_shape(init, rng)
  shardings = sharding_lib.logical_to_sharding(boxed, mesh, rules)
  return boxed, shardings, lambda rng: nn.meta.unbox(init(rng))


def abstract_state(init_state: Callable, shardings: Any) -> Any:
  """ShapeDtypeStructs of `init_state(rng)`, each carrying its sharding (for restore)."""
  shapes = jax.eval_shape(init_state, jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def restart_from(state: dict, params: Any, tx: optax.GradientTransformation,
                 state_shardings: dict) -> dict:
  """`state` with loaded `params`: placed, fresh optimizer moments, EMA reset to them."""
  params = jax.device_put(params, state_shardings["params"])
  state["params"] = params
  state["opt_state"] = jax.jit(tx.init, out_shardings=state_shardings["opt_state"])(params)
  if "ema_params" in state:
    state["ema_params"] = jax.tree.map(jnp.copy, params)
  return state


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params: Any,
                        param_shardings: Any, mesh) -> Any:
  """Optimizer moments shard like their parameters; counters are replicated.

  An optimizer-state leaf belongs to the parameter whose path ends its own
  path (`.../mu/encoder/ln_pre/scale`), which holds through every optax
  wrapper (chains, masks, multi_transform).
  """
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  flat_shardings = jax.tree.leaves(param_shardings)
  by_path = {optimizer_lib.path_keys(path): (leaf.shape, sharding)
             for (path, leaf), sharding in zip(flat_params, flat_shardings)}

  def pick(path, leaf):
    keys = optimizer_lib.path_keys(path)
    for start in range(len(keys)):
      match = by_path.get(keys[start:])
      if match is not None and match[0] == leaf.shape:
        return match[1]
    return sharding_lib.replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def accumulate_gradients(loss_and_grad: Callable, params: Any, batch: Any, rng,
                         num_micro_batches: int):
  """Runs `loss_and_grad` over micro-batches with a `lax.scan`.

  `loss_and_grad(params, micro_batch, rng) -> ((loss, (metrics, extras)), grads)`.
  Loss, metrics and gradients are averaged over the micro-batches; `extras`
  (per-example outputs such as reconstructions or code indices) come from the
  last micro-batch. One optimizer update follows, whatever the count.
  """
  if num_micro_batches == 1:
    return loss_and_grad(params, batch, rng)

  def split(x):
    if x.shape[0] % num_micro_batches:
      raise ValueError(
          f"batch of {x.shape[0]} is not divisible by grad_accum_steps={num_micro_batches}")
    return x.reshape((num_micro_batches, -1) + x.shape[1:])

  micro = jax.tree.map(split, batch)
  rngs = jax.random.split(rng, num_micro_batches)
  shapes = jax.eval_shape(loss_and_grad, params, jax.tree.map(lambda x: x[0], micro), rngs[0])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(carry, xs):
    (loss, (metrics, extras)), grads = loss_and_grad(params, *xs)
    (c_loss, (c_metrics, _)), c_grads = carry
    loss, metrics, grads = jax.tree.map(
        jnp.add, (c_loss, c_metrics, c_grads), (loss, metrics, grads))
    return ((loss, (metrics, extras)), grads), None

  total, _ = jax.lax.scan(body, zeros, (micro, rngs))
  (loss, (metrics, extras)), grads = total
  mean = lambda x: x / num_micro_batches
  return (mean(loss), (jax.tree.map(mean, metrics), extras)), jax.tree.map(mean, grads)


def all_finite(tree: Any) -> jnp.ndarray:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def keep_if(ok: jnp.ndarray, new: Any, old: Any) -> Any:
  """`new` when `ok`, else `old`: a non-finite step never reaches the state."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
