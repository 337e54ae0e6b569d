"""SSIM against a float64 numpy/scipy reference, hand-computed cases and its properties."""

import jax
import numpy as np
import pytest
from scipy import ndimage

import helpers
from vwt_jax.evaluation import ssim as ssim_lib


def reference_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Wang et al. SSIM in float64: scipy's Gaussian (radius 5 = 11 taps), valid crop."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  # radius = int(truncate * sigma + 0.5) = 5: the 11x11 window.
  blur = lambda x: ndimage.gaussian_filter(x, sigma=(0, 1.5, 1.5, 0), truncate=5 / 1.5,
                                           mode="constant")[:, 5:-5, 5:-5, :]
  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a ** 2
  var_b = blur(b * b) - mu_b ** 2
  cov = blur(a * b) - mu_a * mu_b
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
       / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
  return s.mean(axis=(1, 2, 3))


def test_matches_numpy_reference_on_noisy_pairs():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(3, 24, 19, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(scale=[[[[0.05]]], [[[0.2]]], [[[0.5]]]], size=a.shape), 0, 1)
  b = b.astype(np.float32)
  got = np.asarray(jax.jit(ssim_lib.ssim)(a, b))
  want = reference_ssim(a, b)
  # float32 against float64. The moments are two 11-tap passes over values <= 1;
  # the contrast-structure factor divides their differences by var_a + var_b + c2
  # (>= 0.087 for these images: scale 12); the mean sums the 14*9*3 map.
  helpers.assert_allclose_f32(got, want, reduction=14 * 9 * 3, depth=3, scale=12)
  # More noise, less similarity.
  assert got[0] > got[1] > got[2]


def test_window_is_the_normalised_11_tap_gaussian():
  w = ssim_lib.gaussian_window()
  assert w.shape == (11,)
  # float64 weights rounded to float32 (< u in all), then an 11-term float32 sum.
  helpers.assert_allclose_f32(w.sum(), 1.0, reduction=11)
  # Three float32 roundings (two weights, the quotient) against float64.
  np.testing.assert_allclose(w[5] / w[6], np.exp(0.5 / 1.5 ** 2), rtol=4 * helpers.F32_U)


def test_constant_images_reduce_to_the_luminance_term():
  # No variance: the contrast-structure factor is c2/c2 = 1.
  a = np.full((1, 11, 11, 1), 0.5, np.float32)
  b = np.full((1, 11, 11, 1), 0.25, np.float32)
  want = (2 * 0.5 * 0.25 + 1e-4) / (0.5 ** 2 + 0.25 ** 2 + 1e-4)
  # The variances and covariance are differences of moments (c * the window's
  # sum, two 11-tap float32 passes) that cancel to ~0: their errors, 1.69 times
  # one moment's, are divided by c2 = 9e-4 and multiplied by the luminance 0.8.
  helpers.assert_allclose_f32(np.asarray(ssim_lib.ssim(a, b)), [want], reduction=11, depth=2,
                              scale=1.4 / 0.03 ** 2)
  assert ssim_lib.ssim_map(a, b).shape == (1, 1, 1, 1)


def test_identical_images_score_one_and_the_score_is_symmetric():
  rng = np.random.default_rng(1)
  a = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  b = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  # a and b are filtered as different channels, possibly summed in other orders:
  # moments of two 11-tap passes, differences divided by var_a + var_b + c2
  # (>= 0.107 here: scale 10), the mean over the 6*6*3 map.
  tol = dict(reduction=6 * 6 * 3, depth=3, scale=10)
  helpers.assert_allclose_f32(np.asarray(ssim_lib.ssim(a, a)), [1.0, 1.0], **tol)
  helpers.assert_allclose_f32(np.asarray(ssim_lib.ssim(a, b)), np.asarray(ssim_lib.ssim(b, a)),
                              **tol)
  # Inverted contrast: negative correlation.
  assert np.all(np.asarray(ssim_lib.ssim(a, 1.0 - a)) < 0)


def test_signed_range_is_mapped_to_unit_and_reconstructions_are_clipped():
  rng = np.random.default_rng(2)
  a = rng.uniform(-1, 1, size=(2, 12, 12, 3)).astype(np.float32)
  b = a + rng.normal(scale=0.5, size=a.shape).astype(np.float32)
  # As the noisy pairs: var_a + var_b + c2 >= 0.12 here; 11-tap passes, 2*2*3 map.
  helpers.assert_allclose_f32(
      np.asarray(ssim_lib.ssim_signed(a, b)),
      reference_ssim((a + 1) / 2, (np.clip(b, -1, 1) + 1) / 2), reduction=11, depth=3, scale=10)


def test_rejects_images_smaller_than_the_window():
  x = np.zeros((1, 10, 32, 3), np.float32)
  with pytest.raises(ValueError, match="smaller than the 11x11 window"):
    ssim_lib.ssim(x, x)
