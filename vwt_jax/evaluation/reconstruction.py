"""Reconstruction quality of a tokenizer on held-out images.

Per image: PSNR, SSIM and (with weights) LPIPS. Over the codes: codebook
usage and perplexity. Over the set: the ADM evaluator's metrics with the
originals as reference, as LlamaGen computes rFID on ImageNet val.

Both image sets reach the Inception network through `images.quantize`, which
maps the pipeline's floats back to exactly the decoded pixels; the picture
grid uses TiTok's truncating `images.to_uint8`.
"""

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
from tqdm import tqdm

from vwt_jax.conversion import inception as inception_conversion
from vwt_jax.conversion import lpips as lpips_conversion
from vwt_jax.core import images as images_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.evaluation import codebook as codebook_lib
from vwt_jax.evaluation import evaluator
from vwt_jax.evaluation import ssim as ssim_lib
from vwt_jax.models import lpips as lpips_lib

# `reconstruct(images)` -> (reconstructions in [-1, 1], int codes (B, ...) or None).
ReconstructFn = Callable[[jax.Array], tuple[jax.Array, Optional[jax.Array]]]

INCEPTION_HINT = (
    "set config.eval.inception_weights (or --inception_weights) to an .npz written by "
    f"`{inception_conversion.CONVERT_COMMAND}`")
LPIPS_HINT = (
    "set config.eval.lpips_weights (or --lpips_weights) to an .npz written by "
    "`python -m vwt_jax.conversion.lpips --net vgg ... --output lpips_vgg.npz`")


def psnr(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """Per-image PSNR (dB) on the [0, 1] scale; inputs are in [-1, 1]."""
  a = (np.asarray(images, np.float64) + 1.0) / 2.0
  b = (np.clip(np.asarray(reconstructions, np.float64), -1.0, 1.0) + 1.0) / 2.0
  mse = np.mean(np.square(a - b), axis=tuple(range(1, a.ndim)))
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


@dataclasses.dataclass
class Networks:
  """The optional networks of the evaluation; None where no weights were given.

  lpips: jitted `(images, reconstructions)` global arrays in [-1, 1] -> (B,).
  inception: an `evaluator.InceptionRunner`.
  """
  lpips: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None
  inception: Any = None

  def missing(self) -> list[str]:
    """What is left out of the report for want of weights, and how to add it."""
    notes = []
    if self.lpips is None:
      notes.append(f"LPIPS skipped: {LPIPS_HINT}")
    if self.inception is None:
      notes.append(f"rFID/IS/precision/recall skipped: {INCEPTION_HINT}")
    return notes


def load_networks(mesh, *, inception_weights: str = "", lpips_weights: str = "",
                  lpips_net: str = "vgg", batch_size: int = 64) -> Networks:
  """LPIPS and the FID Inception from our converted .npz files ('' = leave out)."""
  networks = Networks()
  if lpips_weights:
    model = lpips_lib.LPIPS(lpips_net)
    params = jax.device_put(lpips_conversion.load_lpips(lpips_weights, lpips_net),
                            sharding_lib.replicated(mesh))
    distance = jax.jit(lambda p, a, b: model.apply({"params": p}, a, b)[0])
    networks.lpips = lambda a, b: distance(params, a, b)
  if inception_weights:
    networks.inception = evaluator.InceptionRunner(inception_weights, mesh=mesh,
                                                   batch_size=batch_size)
  return networks


_ssim = jax.jit(ssim_lib.ssim_signed)


def reconstruction_batches(reconstruct: ReconstructFn, dataset: Iterable, mesh, *,
                           num_images: int, lpips=None) -> Iterator[dict[str, np.ndarray]]:
  """Reconstructs up to `num_images` valid images; yields host batches of them.

  Each yielded dict holds, for the valid (batch['mask']) images only, in
  dataset order: 'image' and 'reconstruction' (float [-1, 1]), 'psnr', 'ssim',
  'lpips' (when `lpips` is given) and 'codes' (when `reconstruct` returns them).
  Every process gets the whole global batch.
  """
  seen = 0
  with tqdm(total=num_images, desc="reconstruct", leave=False) as bar:
    for batch in dataset:
      images = sharding_lib.host_batch_to_global({"image": batch["image"]}, mesh)["image"]
      recon, codes = reconstruct(images)
      device = {"image": images, "reconstruction": recon, "ssim": _ssim(images, recon)}
      if lpips is not None:
        device["lpips"] = lpips(images, recon)
      if codes is not None:
        device["codes"] = codes
      if "mask" in batch:
        device["mask"] = sharding_lib.host_batch_to_global(np.asarray(batch["mask"]), mesh)
      host = jax.tree.map(np.asarray, jax.device_get(
          multihost_utils.process_allgather(device, tiled=True)))
      valid = host.pop("mask").astype(bool) if "mask" in host else np.ones(len(recon), bool)
      keep = np.flatnonzero(valid)[:num_images - seen]
      out = {k: v[keep] for k, v in host.items()}
      out["psnr"] = psnr(out["image"], out["reconstruction"])
      seen += len(keep)
      bar.update(len(keep))
      yield out
      if seen >= num_images:
        break
  if not seen:
    raise ValueError("evaluation dataset produced no valid images (is eval.batch_size larger "
                     "than the split?)")


class ReconstructionStats:
  """Means of the per-image scores and the code histogram over yielded batches."""

  def __init__(self, codebook_size: int = 0):
    self.codebook_size = codebook_size
    self.scores: dict[str, list[np.ndarray]] = {}
    self.counts = np.zeros(codebook_size, np.int64)

  def add(self, batch: dict[str, np.ndarray]) -> None:
    for key in ("psnr", "ssim", "lpips"):
      if key in batch:
        self.scores.setdefault(key, []).append(np.asarray(batch[key], np.float64))
    if self.codebook_size and "codes" in batch:
      self.counts += codebook_lib.code_histogram(batch["codes"], self.codebook_size)

  def result(self) -> dict[str, float]:
    """{'psnr', 'ssim', ['lpips'], 'num_images', ['codebook_usage', 'codebook_perplexity']}."""
    out = {k: float(np.mean(np.concatenate(v))) for k, v in self.scores.items()}
    out["num_images"] = float(sum(len(v) for v in self.scores["psnr"]))
    if self.counts.sum():
      out.update(codebook_lib.usage_stats(self.counts))
    return out


def inception_metrics(runner, originals: Iterable[np.ndarray],
                      reconstructions: Iterable[np.ndarray], *, total: int) -> dict[str, float]:
  """ADM metrics of uint8 reconstructions against the originals as reference.

  Returns 'rfid', 'sfid', 'precision', 'recall' and, when the Inception weights
  hold the fc layer, 'inception_score' (of the reconstructions).
  """
  ref = runner.activations(originals, total=total, desc="inception: originals")
  rec = runner.activations(reconstructions, total=total, desc="inception: reconstructions")
  metrics = evaluator.compute_metrics(ref, rec)
  return {("rfid" if k == "fid" else k): float(v) for k, v in metrics.items() if v is not None}


def evaluate_reconstruction(reconstruct: ReconstructFn, dataset: Iterable, mesh, *,
                            num_images: int, grid_images: int, codebook_size: int = 0,
                            networks: Optional[Networks] = None) -> dict:
  """All reconstruction metrics over up to `num_images` images, and a grid.

  `reconstruct` maps a global batch of images in [-1, 1] to (reconstructions,
  codes or None); codebook usage needs codes and `codebook_size`. Padding
  examples (batch['mask'] == 0) are excluded. Returns the metrics as floats
  plus 'grid' (originals over reconstructions, uint8).
  """
  networks = networks or Networks()
  stats = ReconstructionStats(codebook_size)
  originals, recons, grid_originals, grid_recons = [], [], [], []
  seen = 0
  for batch in reconstruction_batches(reconstruct, dataset, mesh, num_images=num_images,
                                      lpips=networks.lpips):
    stats.add(batch)
    if seen < grid_images:
      grid_originals.append(batch["image"][:grid_images - seen])
      grid_recons.append(batch["reconstruction"][:grid_images - seen])
    if networks.inception is not None:
      originals.append(images_lib.quantize(batch["image"]))
      recons.append(images_lib.quantize(batch["reconstruction"]))
    seen += len(batch["psnr"])
  result = stats.result()
  if networks.inception is not None:
    result.update(inception_metrics(networks.inception, originals, recons, total=seen))
  result["grid"] = images_lib.image_grid([images_lib.to_uint8(np.concatenate(grid_originals)),
                                          images_lib.to_uint8(np.concatenate(grid_recons))])
  return result
