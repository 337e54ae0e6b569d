"""Images as uint8 pixels, the papers' resize, and the picture grids commands write.

Two rules turn [-1, 1] floats into uint8, each the official rule of one
paper's sampler. `quantize` (LlamaGen's round-half-up `clip(127.5 x + 128, 0,
255)`) maps the data pipeline's `u / 127.5 - 1` back to exactly `u`: LlamaGen
samples and the images rFID compares use it. `to_uint8` clamps to [0, 1],
scales by 255 and truncates, as TiTok's sampler does; it also draws the
picture grids. `resize_bicubic` is LlamaGen's 384 -> 256 px resize
(`torch.nn.functional.interpolate(mode="bicubic")`).
"""

import functools
import os
import textwrap
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from vwt_jax.core import files

# Pictures people look at show each image at least this many pixels wide.
MIN_CELL_SIZE = 96
# `captioned_grid` text: pixels per line of Pillow's default font, lines per cell.
CAPTION_LINE_HEIGHT = 12
CAPTION_LINES = 8


def quantize(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 as LlamaGen's samplers and rFID do: round half up."""
  return np.clip(127.5 * np.asarray(images, np.float32) + 128.0, 0, 255).astype(np.uint8)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 as TiTok's sampler: clamp to [0, 1], times 255, truncated."""
  x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0
  return (x * 255.0).astype(np.uint8)


# Keys' cubic convolution parameter of torch's bicubic (PIL and jax.image use -0.5).
_TORCH_CUBIC_A = -0.75


@functools.lru_cache(maxsize=16)
def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) float32 weights of torch's bicubic along one axis, align_corners=False.

  Output pixel i samples the input at (i + 0.5) * in / out - 0.5 with the four
  cubic taps around it; taps past an edge read the edge pixel, and nothing
  widens the kernel when shrinking (no antialiasing), as in torch.
  """
  a = _TORCH_CUBIC_A
  near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
  far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    x = (i + 0.5) * in_size / out_size - 0.5
    left = np.floor(x)
    t = x - left
    for k, w in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
      weights[i, int(np.clip(left - 1 + k, 0, in_size - 1))] += w
  return weights.astype(np.float32)


def resize_bicubic(images: jax.Array, size: int) -> jax.Array:
  """NHWC float images resized to size x size as `torch.nn.functional.interpolate(
  mode="bicubic", align_corners=False)` resizes NCHW ones (no clamping; float32
  rounding apart, the same numbers)."""
  rows = jnp.asarray(_bicubic_matrix(images.shape[1], size))
  cols = jnp.asarray(_bicubic_matrix(images.shape[2], size))
  return jnp.einsum("oh,bhwc,pw->bopc", rows, images.astype(jnp.float32), cols,
                    precision=jax.lax.Precision.HIGHEST)


def upscale(images: np.ndarray, min_size: int = MIN_CELL_SIZE) -> np.ndarray:
  """NHWC images enlarged by the smallest integer factor that makes them at
  least `min_size` wide, pixel by pixel (nearest neighbour: a 32-px image
  shows its own pixels, not an interpolation)."""
  factor = -(-min_size // images.shape[2])
  if factor <= 1:
    return images
  return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
  """Stacks equal-length rows of NHWC uint8 images into one HWC picture,
  small images enlarged by `upscale`."""
  return np.concatenate([np.concatenate(list(upscale(np.asarray(r))), axis=1)
                         for r in rows], axis=0)


def save_grid(grid: np.ndarray, path: str) -> None:
  """Writes an HWC uint8 picture to `path` (a URL too), format from its extension."""
  extension = os.path.splitext(path)[1].lower()
  image_format = Image.registered_extensions().get(extension)
  if image_format is None:
    raise ValueError(f"{path}: unknown image file extension {extension!r}; use e.g. .png")
  with files.write_file(path, "wb") as f:
    Image.fromarray(grid).save(f, format=image_format)


def captioned_grid(images: np.ndarray, captions: Sequence[str], *, columns: int,
                   text_lines: int = CAPTION_LINES) -> np.ndarray:
  """NHWC uint8 images with word-wrapped text under each, as one HWC picture.

  Cells are the `upscale`d images' width wide and `caption_cell_height(...)`
  high, filled row by row; text longer than `text_lines` lines ends in ' ...'.
  """
  images = upscale(images)
  n, size = len(images), images.shape[1]
  font = ImageFont.load_default()
  # Pillow's default font is about 6 px wide per character.
  wrap = textwrap.TextWrapper(width=max(8, size // 6 - 1), max_lines=text_lines,
                              placeholder=" ...")
  cell_h = caption_cell_height(size, text_lines)
  rows = -(-n // columns)
  canvas = Image.new("RGB", (columns * size, rows * cell_h), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (image, caption) in enumerate(zip(images, captions)):
    x, y = (i % columns) * size, (i // columns) * cell_h
    canvas.paste(Image.fromarray(image), (x, y))
    for j, line in enumerate(wrap.wrap(caption)):
      draw.text((x + 2, y + size + 2 + j * CAPTION_LINE_HEIGHT), line, fill="black", font=font)
  return np.asarray(canvas)


def caption_cell_height(image_size: int, text_lines: int = CAPTION_LINES) -> int:
  """Height of one `captioned_grid` cell: the image, the text lines, a margin."""
  return image_size + text_lines * CAPTION_LINE_HEIGHT + 4
