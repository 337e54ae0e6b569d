"""Images as uint8 pixels: the two quantisation rules and torch's bicubic resize."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import helpers
from vwt_jax.core import images
from vwt_jax.data import transforms


def test_quantize_returns_the_pipeline_pixels_and_truncation_does_not():
  pixels = np.arange(256, dtype=np.uint8)
  floats = transforms.to_float(pixels)
  np.testing.assert_array_equal(images.quantize(floats), pixels)
  # TiTok's truncating rule loses a level on a quarter of them: not for rFID.
  assert np.sum(images.to_uint8(floats) != pixels) > 32


@pytest.mark.parametrize("height,width,size", [(384, 384, 256), (512, 512, 256), (17, 23, 40),
                                               (32, 32, 20), (16, 16, 16)])
def test_resize_is_torch_bicubic_interpolate(height, width, size):
  # Values past [-1, 1], as a decoder's unclamped output: nothing is clipped.
  x = np.random.default_rng(size).uniform(-1.2, 1.2, (2, height, width, 3)).astype(np.float32)
  ours = np.asarray(images.resize_bicubic(jnp.asarray(x), size))
  official = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(size, size), mode="bicubic",
      align_corners=False).permute(0, 2, 3, 1).numpy()
  # torch finds each tap position (about the input size) in float32: a position
  # error of 2 roundings moves the four cubic weights (slopes below 2 each), per
  # axis; then the two orders of the 4-term sums (weights summing to < 1.3 in |.|).
  peak = np.abs(x).max()
  atol = (2 * 2 * 4 * 2 * max(height, width) * helpers.F32_U * peak
          + helpers.f32_atol(1.3 ** 2 * peak, reduction=4, depth=2))
  np.testing.assert_allclose(ours, official, rtol=0, atol=atol)
  # LlamaGen's uint8 rule afterwards: a pixel within atol of a level boundary
  # may land one level off, no other.
  levels = np.abs(images.quantize(ours).astype(int) - images.quantize(official).astype(int))
  assert levels.max() <= 1
  assert np.mean(levels) <= 2 * atol * 127.5 + 1e-3
