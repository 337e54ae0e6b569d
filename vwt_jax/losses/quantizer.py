"""Bottleneck losses: VQ commitment/codebook terms and the Gaussian KL."""

import jax
import jax.numpy as jnp


def vq_losses(z: jax.Array, z_q_raw: jax.Array, beta: float) -> dict[str, jax.Array]:
  """VQ-VAE losses on the (normalised) latent `z` and its selected code.

  Means run over every element, as the official quantizer does.
  """
  z = z.astype(jnp.float32)
  z_q_raw = z_q_raw.astype(jnp.float32)
  commitment = beta * jnp.mean(jnp.square(jax.lax.stop_gradient(z_q_raw) - z))
  codebook = jnp.mean(jnp.square(z_q_raw - jax.lax.stop_gradient(z)))
  return {
      "commitment": commitment,
      "codebook": codebook,
      "quantizer_loss": commitment + codebook,
  }


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) summed over channels: (B, N, C) -> (B, N)."""
  mean = mean.astype(jnp.float32)
  logvar = logvar.astype(jnp.float32)
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)
