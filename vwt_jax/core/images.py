"""Images as uint8 pixels, and the picture grids the commands and trainers write.

Two rules turn [-1, 1] floats into uint8. `quantize` (LlamaGen's round-half-up
`clip(127.5 x + 128, 0, 255)`) maps the data pipeline's `u / 127.5 - 1` back
to exactly `u`: samples and the images rFID compares use it. `to_uint8`
truncates `(x + 1) / 2 * 255` as TiTok's evaluation does, which turns some
pixels into `u - 1`; it is kept for the picture grids.
"""

import os
import textwrap
from typing import Sequence

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
  """[-1, 1] floats -> uint8, truncating like TiTok's evaluation (picture grids)."""
  x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0
  return (x * 255.0).astype(np.uint8)


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
