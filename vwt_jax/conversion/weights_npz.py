"""The file every converter writes: a flat '/'-keyed float32 .npz and its sha256.

Members are sorted and carry a constant timestamp, so the bytes (and the
recorded hash) are a function of the weights only: two conversions of the same
public file give the same sha256, which users can compare with the README.
Both files appear whole or not at all (`files.staged`): a conversion that
fails leaves an earlier file in place.
"""

import hashlib
import os
from typing import Any, Mapping
import zipfile

import flax.linen as nn
from flax import traverse_util
import numpy as np

from vwt_jax.core import files


def write(params: Mapping[str, Any], path: str) -> str:
  """Writes `params` (nested or '/'-flat) to `path` and `path.sha256`; returns the sha256."""
  flat = traverse_util.flatten_dict(nn.meta.unbox(dict(params)), sep="/")
  with files.staged(path) as tmp:
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
      for key in sorted(flat):
        info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
        with archive.open(info, "w") as member:
          np.lib.format.write_array(member, np.ascontiguousarray(flat[key], np.float32),
                                    allow_pickle=False)
    with open(tmp, "rb") as f:
      sha = hashlib.file_digest(f, "sha256").hexdigest()
  files.write_text(path + ".sha256", f"{sha}  {os.path.basename(path)}\n")
  return sha
