"""Decoding, resizing, crops and flips."""

import os

import numpy as np
import pytest

import helpers
from vwt_jax.data import synthetic_shapes
from vwt_jax.data import transforms


def _png(height, width, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  return image, synthetic_shapes.encode_png(image)


def test_decode_round_trips_png():
  image, data = _png(5, 7)
  np.testing.assert_array_equal(transforms.decode_image(data), image)


@pytest.mark.parametrize('data', [b'', b'not an image', _png(8, 8)[1][:40]])
def test_decode_raises_corrupt_record_error(data):
  with pytest.raises(transforms.CorruptRecordError):
    transforms.decode_image(data)


@pytest.mark.parametrize('shape,expected', [
    ((40, 80), (32, 64)),
    ((80, 40), (64, 32)),
    ((375, 500), (256, 341)),
    ((32, 32), (32, 32)),
])
def test_resize_shorter_side(shape, expected):
  image = np.zeros(shape + (3,), np.uint8)
  target = min(expected)
  assert transforms.resize_shorter_side(image, target).shape[:2] == expected


def test_preprocess_train_is_a_function_of_the_rng():
  _, data = _png(48, 64)
  def run(index):
    return transforms.preprocess_image(
        data, image_size=32, train=True, rng=transforms.record_rng(0, index))
  assert run(5).shape == (32, 32, 3)
  assert run(5).dtype == np.uint8
  np.testing.assert_array_equal(run(5), run(5))
  assert any(not np.array_equal(run(5), run(i)) for i in range(6, 12))


def test_preprocess_eval_is_a_center_crop():
  image, data = _png(32, 48)
  out = transforms.preprocess_image(data, image_size=32, train=False)
  np.testing.assert_array_equal(out, image[:, 8:40])


def test_preprocess_accepts_decoded_arrays():
  image, _ = _png(20, 30)
  out = transforms.preprocess_image(image, image_size=16, train=False)
  assert out.shape == (16, 16, 3)


def test_random_flip_mirrors_about_half_the_time():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  flips = [
      not np.array_equal(transforms.random_flip(image, np.random.default_rng(i)),
                         image) for i in range(200)]
  # Binomial(200, 1/2): 100 +- 7.1, so the bounds are 5.7 standard deviations out.
  assert 60 < sum(flips) < 140


def test_to_float_range():
  out = transforms.to_float(np.array([0, 128, 255], np.uint8))
  assert out.dtype == np.float32
  # float32 x / 127.5 (up to 2) minus 1: a two-term sum of values up to 2.
  helpers.assert_allclose_f32(out, [-1.0, 128 / 127.5 - 1, 1.0], reduction=2, scale=2.0)


def test_eval_crop_equals_torchvision_resize_and_center_crop():
  # tests/fixtures/preprocessing: torchvision's Resize(bicubic, antialias) +
  # CenterCrop (TiTok's evaluation transform) on random images whose margins are
  # odd and even and whose scaled long side truncates differently from rounding.
  # Both sides run Pillow's bicubic on the same sizes: equal to the byte.
  fixture = np.load(os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'preprocessing',
                                 'titok_eval_crop.npz'))
  cases = [k.split('_')[1] for k in fixture.files if k.startswith('image_')]
  assert len(cases) >= 10
  for i in cases:
    expected = fixture[f'crop_{i}']
    out = transforms.preprocess_image(fixture[f'image_{i}'], image_size=expected.shape[0],
                                      train=False)
    np.testing.assert_array_equal(out, expected, err_msg=f'case {i}')
