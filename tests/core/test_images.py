"""Images as uint8 pixels: the two quantisation rules."""

import numpy as np

from vwt_jax.core import images
from vwt_jax.data import transforms


def test_quantize_returns_the_pipeline_pixels_and_truncation_does_not():
  pixels = np.arange(256, dtype=np.uint8)
  floats = transforms.to_float(pixels)
  np.testing.assert_array_equal(images.quantize(floats), pixels)
  # TiTok's truncating rule loses a level on a quarter of them: not for rFID.
  assert np.sum(images.to_uint8(floats) != pixels) > 32
