"""Numpy image preprocessing shared by every image dataset.

Images travel through the pipeline as uint8 HWC arrays (4x smaller than float
when they cross worker processes) and become float32 in [-1, 1] only once
batched (`to_float`). Random choices take an explicit `np.random.Generator`;
`record_rng(seed, index)` derives one from the pipeline seed and the record's
position so a record's augmentation never depends on thread or worker timing.
"""

import io

import numpy as np
from PIL import Image


class CorruptRecordError(ValueError):
  """Raised when a record's image bytes cannot be decoded."""


def decode_image(data):
  """PNG/JPEG/... bytes -> uint8 RGB array of shape (H, W, 3)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return np.asarray(image.convert('RGB'))
  except Exception as e:  # Pillow raises many types for broken files.
    raise CorruptRecordError(f'cannot decode image ({type(e).__name__}: {e})') from e


def resize_shorter_side(image, size):
  """Bicubic resize so min(H, W) == size, as torchvision's `Resize(size,
  BICUBIC, antialias=True)` on a PIL image (TiTok's data pipeline).

  The longer side becomes int(size * long / short), truncated as torchvision
  computes it.
  """
  height, width = image.shape[:2]
  short, long = min(height, width), max(height, width)
  new_long = int(size * long / short)
  new_size = (size, new_long) if width <= height else (new_long, size)
  if new_size == (width, height):
    return image
  # Pillow widens the bicubic kernel when shrinking, i.e. it antialiases.
  return np.asarray(Image.fromarray(image).resize(new_size, Image.Resampling.BICUBIC))


def center_crop(image, size):
  """torchvision's `CenterCrop(size)`: offsets round((H - size) / 2), half to even."""
  height, width = image.shape[:2]
  top, left = round((height - size) / 2), round((width - size) / 2)
  return image[top:top + size, left:left + size]


def resize_center_crop(image, size):
  """TiTok's evaluation crop: `resize_shorter_side`, then `center_crop`."""
  return center_crop(resize_shorter_side(image, size), size)


def center_crop_arr(image, size):
  """ADM's `center_crop_arr`: the crop LlamaGen extracts its codes from and
  evaluates its tokenizers on.

  Halves the image with a box filter while its shorter side is at least twice
  `size`, resizes the shorter side to `size` (bicubic, sides rounded), then
  crops with floored offsets: not TiTok's `resize_shorter_side` + `center_crop`
  (no box halving, truncated sides, offsets rounded).
  """
  pil = Image.fromarray(image)
  while min(pil.size) >= 2 * size:
    pil = pil.resize(tuple(x // 2 for x in pil.size), Image.Resampling.BOX)
  scale = size / min(pil.size)
  pil = pil.resize(tuple(round(x * scale) for x in pil.size), Image.Resampling.BICUBIC)
  image = np.asarray(pil)
  top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def five_crop(image, size):
  """torchvision's FiveCrop: the 4 corner crops of `size` (TL, TR, BL, BR), then
  `center_crop`."""
  height, width = image.shape[:2]
  if size > min(height, width):
    raise ValueError(f'crop size {size} exceeds the image size {height}x{width}')
  return (image[:size, :size], image[:size, width - size:],
          image[height - size:, :size], image[height - size:, width - size:],
          center_crop(image, size))


def ten_crop(image, size):
  """torchvision's TenCrop: `five_crop` of the image, then of its mirror.

  The 6th crop is the mirror's top-left corner, i.e. the flipped top-right
  crop of the original (and so on), as in LlamaGen's code extraction.
  """
  return five_crop(image, size) + five_crop(image[:, ::-1], size)


def random_crop(image, size, rng):
  height, width = image.shape[:2]
  top, left = rng.integers(height - size + 1), rng.integers(width - size + 1)
  return image[top:top + size, left:left + size]


def random_flip(image, rng):
  """Mirrors left-right with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def record_rng(seed, index):
  return np.random.default_rng((seed, index))


def preprocess_image(data, *, image_size, train, rng=None):
  """Decodes and crops one image to (image_size, image_size, 3) uint8.

  Train: resize the shorter side to `image_size` (bicubic, antialiased), random
  crop, random horizontal flip (the TiTok recipe). Eval: `resize_center_crop`.

  Args:
    data: encoded image bytes, or an already decoded uint8 (H, W, 3) array
      (what tfds serves when it decodes, e.g. under `tfds.testing.mock_data`).
    image_size: output height and width.
    train: whether to apply the random augmentations.
    rng: numpy Generator for the augmentations; required when `train`.

  Returns:
    uint8 array of shape (image_size, image_size, 3).

  Raises:
    CorruptRecordError: the bytes are not a decodable image.
  """
  image = data if isinstance(data, np.ndarray) else decode_image(data)
  if not train:
    return np.ascontiguousarray(resize_center_crop(image, image_size))
  image = random_flip(random_crop(resize_shorter_side(image, image_size), image_size, rng), rng)
  return np.ascontiguousarray(image)


def to_float(images):
  """uint8 -> float32 in [-1, 1]."""
  return images.astype(np.float32) / 127.5 - 1.0
