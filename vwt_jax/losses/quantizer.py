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


def entropy_loss(distances: jax.Array, temperature: float = 0.01) -> jax.Array:
  """LlamaGen's codebook entropy loss on code distances (..., K), unweighted.

  Affinities `-d / temperature` give a softmax over codes per latent; the loss
  is the mean per-latent entropy (sharp assignments) minus the entropy of the
  batch-averaged distribution (spread-out usage). The 1e-5 terms are the
  reference's stabilisers (the one inside the log-softmax is a no-op shift).
  """
  logits = -distances.reshape(-1, distances.shape[-1]).astype(jnp.float32) / temperature
  probs = jax.nn.softmax(logits, axis=-1)
  log_probs = jax.nn.log_softmax(logits + 1e-5, axis=-1)
  avg_probs = jnp.mean(probs, axis=0)
  avg_entropy = -jnp.sum(avg_probs * jnp.log(avg_probs + 1e-5))
  sample_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
  return sample_entropy - avg_entropy
