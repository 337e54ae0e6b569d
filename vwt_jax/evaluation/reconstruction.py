"""Reconstruction quality of a tokenizer: PSNR over held-out images, and a grid.

rFID plugs in here once the Inception network lands (issue: evaluation).
"""

from typing import Callable, Iterable

import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image
from tqdm import tqdm

from vwt_jax.core import sharding as sharding_lib


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8, truncating like the official evaluation."""
  x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0
  return (x * 255.0).astype(np.uint8)


def psnr(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """Per-image PSNR (dB) on the [0, 1] scale; inputs are in [-1, 1]."""
  a = (np.asarray(images, np.float64) + 1.0) / 2.0
  b = (np.clip(np.asarray(reconstructions, np.float64), -1.0, 1.0) + 1.0) / 2.0
  mse = np.mean(np.square(a - b), axis=tuple(range(1, a.ndim)))
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
  """Stacks equal-length rows of NHWC uint8 images into one HWC picture."""
  return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def save_grid(grid: np.ndarray, path: str) -> None:
  Image.fromarray(grid).save(path)


def evaluate_reconstruction(reconstruct: Callable, dataset: Iterable, mesh, *,
                            num_images: int, grid_images: int) -> dict:
  """Mean PSNR over up to `num_images` images and an originals/reconstructions grid.

  `reconstruct` maps a global batch of images in [-1, 1] to reconstructions.
  Padding examples (batch['mask'] == 0) are excluded.
  """
  scores, originals, recons = [], [], []
  seen = 0
  with tqdm(total=num_images, desc="reconstruct", leave=False) as bar:
    for batch in dataset:
      images = sharding_lib.host_batch_to_global({"image": batch["image"]}, mesh)["image"]
      out = np.asarray(jax.device_get(
          multihost_utils.process_allgather(reconstruct(images), tiled=True)))
      host_images = np.asarray(multihost_utils.process_allgather(
          images, tiled=True))
      valid = np.ones(len(out), bool)
      if "mask" in batch:
        valid = np.asarray(multihost_utils.process_allgather(
            sharding_lib.host_batch_to_global(np.asarray(batch["mask"]), mesh),
            tiled=True)).astype(bool)
      scores.append(psnr(host_images[valid], out[valid]))
      if seen < grid_images:
        originals.append(host_images[valid][:grid_images - seen])
        recons.append(out[valid][:grid_images - seen])
      seen += int(valid.sum())
      bar.update(int(valid.sum()))
      if seen >= num_images:
        break
  if not scores:
    raise ValueError("evaluation dataset produced no batches (is eval.batch_size larger "
                     "than the split?)")
  all_scores = np.concatenate(scores)[:num_images]
  grid = image_grid([to_uint8(np.concatenate(originals)), to_uint8(np.concatenate(recons))])
  return {"psnr": float(np.mean(all_scores)), "num_images": float(len(all_scores)),
          "grid": grid}
