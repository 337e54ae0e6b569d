"""The pieces of a train step and of a state started from pretrained weights."""

from typing import Any, Callable

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax


def restart_from(state: dict, params: Any, tx: optax.GradientTransformation,
                 state_shardings: dict) -> dict:
  """`state` with loaded `params`: placed, fresh optimizer moments, EMA reset to them."""
  params = jax.device_put(params, state_shardings["params"])
  state["params"] = params
  state["opt_state"] = jax.jit(tx.init, out_shardings=state_shardings["opt_state"])(params)
  if "ema_params" in state:
    state["ema_params"] = jax.tree.map(jnp.copy, params)
  return state


def merge_params(params: Any, loaded: Any, shardings: Any, source: str) -> Any:
  """`params` (placed) with the leaves `loaded` holds replaced, cast and placed alike.

  `loaded` may hold some of the parameters (a pretrained part); every one of
  its paths must exist in `params` with the same shape.

  Raises:
    ValueError: naming `source`, the unexpected paths and the shape mismatches.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
  flat_shardings = traverse_util.flatten_dict(shardings, sep="/")
  unexpected = sorted(set(flat_loaded) - set(flat))
  mismatched = sorted(k for k in set(flat_loaded) & set(flat)
                      if tuple(flat_loaded[k].shape) != tuple(flat[k].shape))
  if unexpected or mismatched:
    raise ValueError(
        f"init_from {source}: parameters do not fit this model. unexpected: "
        f"{unexpected[:10]}{'...' if len(unexpected) > 10 else ''}; shape mismatches: "
        + ", ".join(f"{k} {flat_loaded[k].shape} vs {flat[k].shape}" for k in mismatched[:10]))
  kept = sorted(set(flat) - set(flat_loaded))
  if kept:
    logging.info("init_from %s: %d parameter arrays keep their initialisation (e.g. %s)",
                 source, len(kept), kept[:5])
  for key, value in flat_loaded.items():
    flat[key] = jax.device_put(np.asarray(value, flat[key].dtype), flat_shardings[key])
  return traverse_util.unflatten_dict(flat, sep="/")


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
  """Whether every floating leaf is finite, read from the tree's global norm.

  A NaN or an infinity anywhere makes the norm NaN or infinite, so one
  reduction (for float32 gradients, the norm that clipping and the
  `grad_norm` metric compute too) replaces a test per leaf: on CPU, each
  per-leaf test was its own kernel to compile and its own pass over the
  gradients. The norm is taken in float32, so a tree of finite values counts
  as non-finite only when its norm overflows float32 (above 1.8e19): no step
  that large should reach the state.
  """
  leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.isfinite(optax.tree.norm(leaves)) if leaves else jnp.array(True)


def keep_if(ok: jnp.ndarray, new: Any, old: Any) -> Any:
  """`new` when `ok`, else `old`: a non-finite step never reaches the state."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
