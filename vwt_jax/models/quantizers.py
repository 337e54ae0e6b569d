"""Latent bottlenecks: nearest-neighbour vector quantizer and diagonal Gaussian.

Latents use our (B, ..., C) layout (channels last); the quantizer flattens every
leading axis, so token order matches the official (B, 1, N, C) flattening.
"""

from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

# F.normalize's eps: the norm is clamped from below, not offset.
L2_NORM_EPS = 1e-12
LOGVAR_RANGE = (-30.0, 20.0)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, L2_NORM_EPS)


def _codebook_init(codebook_size: int, normalize: bool = False):
  bound = 1.0 / codebook_size

  def init(key, shape, dtype=jnp.float32):
    codes = jax.random.uniform(key, shape, dtype, -bound, bound)
    return l2_normalize(codes).astype(dtype) if normalize else codes

  return nn.with_logical_partitioning(init, ("vocab", "token"))


class VectorQuantizer(nn.Module):
  """VQ with optional l2-normalised (cosine) lookup and straight-through output.

  Always computed in float32 (the official module disables autocast).
  """
  codebook_size: int
  token_size: int
  use_l2_norm: bool = False
  # LlamaGen stores unit rows from the start; with lookups normalised anyway,
  # this only sets the scale the optimizer moves the raw rows at.
  normalize_init: bool = False
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", _codebook_init(self.codebook_size, self.normalize_init),
        (self.codebook_size, self.token_size), self.param_dtype)

  def normalize(self, z: jax.Array) -> jax.Array:
    """`z` in float32, l2-normalised if configured."""
    z = z.astype(jnp.float32)
    return l2_normalize(z) if self.use_l2_norm else z

  def codebook(self) -> jax.Array:
    """The (K, C) codebook used for lookups."""
    return self.normalize(self.embedding)

  def distances(self, z: jax.Array) -> jax.Array:
    """Squared distances (..., K) of already-normalised `z` to every code."""
    e = self.codebook()
    cross = jnp.einsum("...c,kc->...k", z, e, precision=jax.lax.Precision.HIGHEST)
    # Same expansion as the official code, so ties/rounding resolve alike.
    return (jnp.sum(jnp.square(z), axis=-1, keepdims=True)
            + jnp.sum(jnp.square(e), axis=-1) - 2.0 * cross)

  def __call__(self, z: jax.Array):
    """Quantizes `z` (..., C). Returns (z_q straight-through, aux)."""
    z = self.normalize(z)
    distances = self.distances(z)
    indices = jnp.argmin(distances, axis=-1)
    z_q_raw = self.get_codebook_entry(indices)
    z_q = z + jax.lax.stop_gradient(z_q_raw - z)
    counts = jnp.zeros((self.codebook_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)
    probs = counts / indices.size
    perplexity = jnp.exp(-jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0)))
    aux = {
        "indices": indices,
        "z": z,
        "z_q_raw": z_q_raw,
        # (..., K); for the entropy loss. Unused outputs cost nothing under jit.
        "distances": distances,
        "code_counts": counts,
        "codebook_usage": jnp.mean((counts > 0).astype(jnp.float32)),
        "codebook_perplexity": perplexity,
    }
    return z_q, aux

  def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
    """Codes for integer `indices` (...) or soft one-hots (..., K) -> (..., C)."""
    e = self.codebook()
    if jnp.issubdtype(indices.dtype, jnp.integer):
      return jnp.take(e, indices, axis=0)
    return jnp.einsum("...k,kc->...c", indices.astype(jnp.float32), e,
                      precision=jax.lax.Precision.HIGHEST)


@flax.struct.dataclass
class DiagonalGaussian:
  """Posterior N(mean, exp(logvar)) over channels-last latents."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    """Splits (..., 2C) into mean (first C channels) and clamped logvar."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return cls(mean=mean, logvar=jnp.clip(logvar, *LOGVAR_RANGE))

  def reparameterize(self, eps: jax.Array) -> jax.Array:
    return self.mean + jnp.exp(0.5 * self.logvar) * eps

  def sample(self, rng: jax.Array) -> jax.Array:
    return self.reparameterize(jax.random.normal(rng, self.mean.shape, self.mean.dtype))

  def mode(self) -> jax.Array:
    return self.mean

  def sample_or_mode(self, rng: Optional[jax.Array]) -> jax.Array:
    return self.mode() if rng is None else self.sample(rng)


def restart_dead_codes(codebook: jax.Array, usage: jax.Array, latents: jax.Array,
                       code_counts: jax.Array, rng: jax.Array, *, decay: float,
                       threshold: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Replaces codes nobody uses by latents of the current batch.

  `usage` is an EMA of the fraction of tokens assigned to each code
  (`code_counts`: the quantizer's per-code count for this batch). A code whose
  usage falls below `threshold / K` is reset to a random latent (normalised
  if the quantizer l2-normalises) with a fresh usage of 1/K: SoundStream's
  codebook expiration, which keeps a small codebook from collapsing when
  training from scratch.

  Returns:
    (codebook, usage, number of codes restarted).
  """
  num_codes = codebook.shape[0]
  flat_latents = latents.reshape(-1, latents.shape[-1]).astype(codebook.dtype)
  usage = decay * usage + (1.0 - decay) * code_counts / flat_latents.shape[0]
  dead = usage < threshold / num_codes
  picks = jax.random.randint(rng, (num_codes,), 0, flat_latents.shape[0])
  codebook = jnp.where(dead[:, None], flat_latents[picks], codebook)
  usage = jnp.where(dead, 1.0 / num_codes, usage)
  return codebook, usage, jnp.sum(dead.astype(jnp.int32))
