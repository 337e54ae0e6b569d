"""Pixel reconstruction losses shared by the TiTok and VQGAN tokenizer trainers."""

from typing import Callable

import jax
import jax.numpy as jnp


def l1_loss(target: jax.Array, prediction: jax.Array) -> jax.Array:
  """Mean absolute error over every element."""
  diff = target.astype(jnp.float32) - prediction.astype(jnp.float32)
  return jnp.mean(jnp.abs(diff))


def l2_loss(target: jax.Array, prediction: jax.Array) -> jax.Array:
  """Mean squared error over every element (torch's `F.mse_loss`)."""
  diff = target.astype(jnp.float32) - prediction.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


RECONSTRUCTION_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "l1": l1_loss,
    "l2": l2_loss,
    "mse": l2_loss,
}


def reconstruction_loss(kind: str, target: jax.Array, prediction: jax.Array) -> jax.Array:
  """Dispatches on the config's `reconstruction_loss` name ('l1', 'l2' / 'mse')."""
  if kind not in RECONSTRUCTION_LOSSES:
    raise ValueError(
        f"unknown reconstruction loss {kind!r}; available: {sorted(RECONSTRUCTION_LOSSES)}")
  return RECONSTRUCTION_LOSSES[kind](target, prediction)
