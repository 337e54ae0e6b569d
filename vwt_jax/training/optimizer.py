"""Optimizers, learning-rate schedules, weight-decay masks and parameter EMA."""

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `lr`, then cosine decay to `end_lr` or a constant."""
  warmup = int(config.warmup_steps)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=config.end_lr)
  if config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.lr, max(warmup, 1)),
         optax.constant_schedule(config.lr)], [warmup])
  raise ValueError(
      f"optimizer.schedule={config.schedule!r}: expected 'cosine' or 'constant'")


def path_keys(path) -> tuple[str, ...]:
  """The key names of a pytree path (dict keys, attribute names, list indices)."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def path_name(path) -> str:
  return "/".join(path_keys(path))


def weight_decay_mask(params: Any, exclude_patterns) -> Any:
  """True where weight decay applies.

  Like the official TiTok trainer: parameters with fewer than 2 dimensions and
  those whose path contains any of `exclude_patterns` get no decay.
  """
  regex = re.compile("|".join(exclude_patterns)) if exclude_patterns else None

  def decays(path, x):
    if jnp.ndim(x) < 2:
      return False
    return not (regex and regex.search(path_name(path)))

  return jax.tree_util.tree_map_with_path(decays, params)


def trainable_labels(params: Any, frozen_patterns) -> Any:
  regex = re.compile("|".join(frozen_patterns)) if frozen_patterns else None
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if regex and regex.search(path_name(path)) else "train",
      params)


def make_optimizer(config: ml_collections.ConfigDict, params: Any, total_steps: int,
                   frozen_patterns=()) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW + clipping + weight-decay mask; frozen parameters get zero updates."""
  schedule = learning_rate_schedule(config, total_steps)
  chain = []
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(optax.adamw(
      learning_rate=schedule, b1=config.b1, b2=config.b2, eps=config.eps,
      weight_decay=config.weight_decay,
      mask=weight_decay_mask(params, tuple(config.wd_exclude))))
  tx = optax.chain(*chain)
  if frozen_patterns:
    tx = optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        trainable_labels(params, tuple(frozen_patterns)))
  return tx, schedule


def ema_decay(step: jnp.ndarray, max_decay: float) -> jnp.ndarray:
  """The warm-up `min((1+t)/(10+t), decay)` used by the official trainers."""
  step = step.astype(jnp.float32)
  return jnp.minimum((1.0 + step) / (10.0 + step), max_decay)


def update_ema(ema_params: Any, params: Any, decay: jnp.ndarray) -> Any:
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
