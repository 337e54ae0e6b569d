"""The ADM evaluator's `.npz` batches: images in `arr_0`, optional statistics.

A sample batch holds `arr_0` uint8 [N, H, W, 3] (and optionally `arr_1`
labels); a reference batch may also hold `mu`, `sigma` (pool_3) and `mu_s`,
`sigma_s` (spatial), used instead of the statistics of `arr_0` (in a sample
file too, so samples never carry `mu`). Images are streamed from the zip
member in batches: 50k 256x256 images are 9.8 GB, and `np.load(mmap_mode=...)`
cannot map a member of an `.npz`.
"""

import contextlib
import zipfile
from typing import Iterator, Optional

from etils import epath
import numpy as np

from vwt_jax.core import files
from vwt_jax.evaluation.fid import Statistics

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"
_STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _check_images(where: str, shape: tuple, dtype: np.dtype) -> None:
  if np.dtype(dtype) != np.uint8:
    raise ValueError(f"{where}: dtype {np.dtype(dtype)}, expected uint8 images in [0, 255]")
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"{where}: shape {tuple(shape)}, expected [N, H, W, 3] (NHWC RGB)")


class ImageReader:
  """Reads `key` of an `.npz` in batches without loading the whole array."""

  def __init__(self, member, path: str, key: str, shape: tuple):
    self._member = member
    self.path = path
    self.key = key
    self.shape = shape
    self._next = 0

  def __len__(self) -> int:
    return self.shape[0]

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive uint8 [<=batch_size, H, W, 3] batches; the last may be short."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    row_bytes = int(np.prod(self.shape[1:]))
    while self._next < self.shape[0]:
      count = min(batch_size, self.shape[0] - self._next)
      size = count * row_bytes
      # A zip member's read() returns fewer bytes only at the end of its data.
      data = self._member.read(size)
      if len(data) < size:
        raise ValueError(f"{self.path}: {self.key} ends after {len(data)} of {size} bytes of "
                         f"image {self._next} (truncated file?)")
      self._next += count
      yield np.frombuffer(data, np.uint8).reshape((count,) + tuple(self.shape[1:]))


@contextlib.contextmanager
def open_images(path: str, key: str = IMAGES_KEY) -> Iterator[ImageReader]:
  """Context manager yielding an `ImageReader` over `path`'s `key` (default arr_0).

  Raises:
    ValueError: `path` is not an .npz, lacks `key`, or `key` is not C-ordered
      uint8 [N, H, W, 3].
  """
  try:
    archive = zipfile.ZipFile(path, "r")
  except zipfile.BadZipFile as e:
    raise ValueError(f"{path} is not an .npz (zip) file: {e}") from e
  with archive:
    member_name = f"{key}.npy"
    if member_name not in archive.namelist():
      raise ValueError(f"{path} has no array {key!r} (found "
                       f"{sorted(n[:-4] for n in archive.namelist())}); expected "
                       f"{key} = uint8 [N, H, W, 3] images")
    with archive.open(member_name, "r") as member:
      version = np.lib.format.read_magic(member)
      read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                     (2, 0): np.lib.format.read_array_header_2_0}.get(version)
      if read_header is None:
        raise ValueError(f"{path}: {key} uses .npy format {version}; expected 1.0 or 2.0 "
                         "(as written by np.savez)")
      shape, fortran_order, dtype = read_header(member)
      where = f"{path}: {key}"
      _check_images(where, shape, dtype)
      if fortran_order:
        raise ValueError(f"{where} is Fortran-ordered; expected a C-contiguous array")
      yield ImageReader(member, path, key, tuple(shape))


def read_statistics(path: str) -> Optional[tuple[Statistics, Statistics]]:
  """(pool_3, spatial) statistics stored in `path`, or None when it has no `mu`.

  Raises:
    ValueError: `mu` is present but `sigma`, `mu_s` or `sigma_s` is missing.
  """
  with np.load(path, allow_pickle=False) as data:
    if "mu" not in data.files:
      return None
    missing = [k for k in _STAT_KEYS if k not in data.files]
    if missing:
      raise ValueError(f"{path} has precomputed 'mu' but lacks {missing}; a reference "
                       f"batch needs all of {list(_STAT_KEYS)}")
    return (Statistics(data["mu"], data["sigma"]), Statistics(data["mu_s"], data["sigma_s"]))


def _save(path: str, arrays: dict) -> None:
  # Whole or not at all: a batch is gigabytes, and a reader (or the resume of
  # `sample_eval`) must never take a cut-off one for the real thing. A file
  # object keeps np.savez from appending ".npz" to the given path.
  with files.write_file(path, "wb") as f:
    np.savez(f, **arrays)


def write_samples(path: str, images: np.ndarray, labels: Optional[np.ndarray] = None,
                  **extra: np.ndarray) -> None:
  """Writes a sample batch: `arr_0` uint8 [N, H, W, 3] and optional `arr_1` labels [N].

  `extra` arrays (e.g. the codes) are stored under their names; the ADM
  evaluator reads `arr_0` only. The file appears whole or not at all
  (`files.write_file`), as for `write_reference`.
  """
  images = np.asarray(images)
  _check_images(f"write_samples({path}) images", images.shape, images.dtype)
  arrays = {IMAGES_KEY: images}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
      raise ValueError(f"write_samples({path}): labels shape {labels.shape}, expected "
                       f"({len(images)},)")
    arrays[LABELS_KEY] = labels
  _save(path, {**arrays, **extra})


def read_samples(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 [N, H, W, 3] images, int64 [N] labels) of a class-conditional batch.

  The reader of what `write_samples` writes with labels (a URL too).
  """
  with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
    if IMAGES_KEY not in data or LABELS_KEY not in data:
      raise ValueError(f"{path}: expected {IMAGES_KEY} (images) and {LABELS_KEY} (class "
                       "labels), as `vwt_jax.sample --npz` writes for a class-conditional "
                       f"generator; found {sorted(data.files)}")
    images, labels = data[IMAGES_KEY], data[LABELS_KEY]
  _check_images(f"{path} {IMAGES_KEY}", images.shape, images.dtype)
  if labels.shape != (len(images),):
    raise ValueError(f"{path}: {LABELS_KEY} shape {labels.shape}, expected one label per "
                     f"image ({len(images)},)")
  return images, labels.astype(np.int64)


def write_reference(path: str, images: np.ndarray, pool_stats: Statistics,
                    spatial_stats: Statistics) -> None:
  """Writes a reference batch: `arr_0` images plus precomputed pool/spatial statistics."""
  images = np.asarray(images)
  _check_images(f"write_reference({path}) images", images.shape, images.dtype)
  _save(path, {IMAGES_KEY: images,
               "mu": np.asarray(pool_stats.mu), "sigma": np.asarray(pool_stats.sigma),
               "mu_s": np.asarray(spatial_stats.mu), "sigma_s": np.asarray(spatial_stats.sigma)})
