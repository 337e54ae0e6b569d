"""GAN objectives for tokenizer training: D/G losses, LeCam, warm-up gate.

TiTok and LlamaGen both use the hinge pair (D: hinge, G: -mean D(x̂)); the
non-saturating pair is the standard softplus form. Everything is a pure function
of logits, and the LeCam EMAs are an explicit state pytree, so a jitted train
step threads them like optimizer state.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


def _f32_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.astype(jnp.float32))


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """`0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x̂))))`."""
  return 0.5 * (_f32_mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32))) +
                _f32_mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32))))


def non_saturating_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """`0.5 * (BCE(D(x), 1) + BCE(D(x̂), 0))` with logits, i.e. softplus form."""
  return 0.5 * (_f32_mean(jax.nn.softplus(-logits_real.astype(jnp.float32))) +
                _f32_mean(jax.nn.softplus(logits_fake.astype(jnp.float32))))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """`-mean(D(x̂))`."""
  return -_f32_mean(logits_fake)


def non_saturating_g_loss(logits_fake: jax.Array) -> jax.Array:
  """`BCE(D(x̂), 1) = mean(softplus(-D(x̂)))`."""
  return _f32_mean(jax.nn.softplus(-logits_fake.astype(jnp.float32)))


D_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "hinge": hinge_d_loss,
    "non_saturating": non_saturating_d_loss,
}
G_LOSSES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "hinge": hinge_g_loss,
    "non_saturating": non_saturating_g_loss,
}


def discriminator_loss(kind: str, logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  if kind not in D_LOSSES:
    raise ValueError(f"unknown discriminator loss {kind!r}; available: {sorted(D_LOSSES)}")
  return D_LOSSES[kind](logits_real, logits_fake)


def generator_loss(kind: str, logits_fake: jax.Array) -> jax.Array:
  if kind not in G_LOSSES:
    raise ValueError(f"unknown generator adversarial loss {kind!r}; available: {sorted(G_LOSSES)}")
  return G_LOSSES[kind](logits_fake)


def adopt_weight(step: jax.Array | int, start: int, weight: float = 1.0) -> jax.Array:
  """`weight` once `step >= start`, else 0 (the discriminator warm-up gate).

  Works on a traced step, so the gate lives inside one compiled train step.
  """
  return jnp.where(jnp.asarray(step) >= start, jnp.float32(weight), jnp.float32(0.0))


class LeCamState(NamedTuple):
  """EMAs of the batch-mean real / fake discriminator logits."""
  ema_real: jax.Array
  ema_fake: jax.Array


def lecam_init() -> LeCamState:
  # The reference registers both buffers as zeros.
  return LeCamState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def lecam_loss(logits_real: jax.Array, logits_fake: jax.Array, state: LeCamState) -> jax.Array:
  """`relu(mean D(x) - ema_fake)^2 + relu(ema_real - mean D(x̂))^2` (unweighted).

  Uses the EMAs from before this step's update, as the reference does.
  """
  real_mean = _f32_mean(logits_real)
  fake_mean = _f32_mean(logits_fake)
  return (jnp.square(jax.nn.relu(real_mean - state.ema_fake)) +
          jnp.square(jax.nn.relu(state.ema_real - fake_mean)))


def lecam_update(state: LeCamState, logits_real: jax.Array, logits_fake: jax.Array,
                 decay: float = 0.999) -> LeCamState:
  """Moves both EMAs towards this step's batch-mean logits (no gradient)."""
  real_mean = jax.lax.stop_gradient(_f32_mean(logits_real))
  fake_mean = jax.lax.stop_gradient(_f32_mean(logits_fake))
  return LeCamState(
      ema_real=state.ema_real * decay + real_mean * (1.0 - decay),
      ema_fake=state.ema_fake * decay + fake_mean * (1.0 - decay))
