"""Structural similarity (Wang et al. 2004) of image pairs, in JAX.

The settings of the paper and its MATLAB `ssim_index` (the constants below,
dynamic range 1 on [0, 1] images): population local statistics and only the
'valid' window positions, so an HxW image yields an (H-10)x(W-10) map. A
colour image scores the mean over the map and the channels.
"""

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_SIZE = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = SIGMA) -> np.ndarray:
  """The normalised 1D Gaussian whose outer product is the 2D window."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  w = np.exp(-0.5 * np.square(x / sigma))
  return (w / w.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, window: jax.Array) -> jax.Array:
  """Separable 'valid' filtering of each channel of NHWC `x`."""
  channels, size = x.shape[-1], window.shape[0]
  for shape in ((size, 1, 1, 1), (1, size, 1, 1)):
    kernel = jnp.tile(window.reshape(shape), (1, 1, 1, channels))
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=channels,
                                     precision=jax.lax.Precision.HIGHEST)
  return x


def ssim_map(a: jax.Array, b: jax.Array) -> jax.Array:
  """Local SSIM (N, H-10, W-10, C) of NHWC images `a`, `b` in [0, 1]."""
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"ssim: expected two NHWC arrays of one shape, got {a.shape} and {b.shape}")
  if min(a.shape[1:3]) < WINDOW_SIZE:
    raise ValueError(f"ssim: images of {a.shape[1]}x{a.shape[2]} are smaller than the "
                     f"{WINDOW_SIZE}x{WINDOW_SIZE} window")
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  # One filtering pass over the five moment images.
  moments = _filter_valid(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1),
                          jnp.asarray(gaussian_window()))
  mu_a, mu_b, aa, bb, ab = jnp.split(moments, 5, axis=-1)
  var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
  c1, c2 = K1 ** 2, K2 ** 2
  return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
          / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-image SSIM (N,) of NHWC images in [0, 1]: the mean of `ssim_map`."""
  return jnp.mean(ssim_map(a, b), axis=(1, 2, 3))


def ssim_signed(images: jax.Array, reconstructions: jax.Array) -> jax.Array:
  """`ssim` of images in [-1, 1] (the pipeline's range); reconstructions are clipped."""
  a = (images.astype(jnp.float32) + 1.0) / 2.0
  b = (jnp.clip(reconstructions.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  return ssim(a, b)
