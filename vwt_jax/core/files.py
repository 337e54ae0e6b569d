"""Reading and writing files on local disks and object stores alike.

Paths with a scheme (`gs://bucket/run`, also `s3://`) go through
`etils.epath`, which uses `tf.io.gfile` when TensorFlow is installed and fsspec
(gcsfs for `gs://`, the `gcs` extra) otherwise; local paths keep Python's own
file functions, so local behaviour stays what it was. Queries (`exists`,
`is_dir`, `iterdir`) are `epath.Path` methods at the call sites; this module
holds what epath does not give: the same text decoding everywhere, writes
that appear whole or not at all, and local files for libraries that only
write local paths (ArrayRecord).
"""

import contextlib
import io
import os
import shutil
import tempfile
from typing import IO, Iterator
import uuid

from etils import epath


def is_remote(path) -> bool:
  """True for a URL such as `gs://bucket/dir` (anything with a scheme)."""
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """`os.path.abspath` for local paths; URLs unchanged (abspath would turn
  `gs://b/x` into `<cwd>/gs:/b/x`)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def open_text(path) -> IO[str]:
  """Opens a UTF-8 text file for reading, decoded as `open(path, encoding='utf-8')`
  decodes (universal newlines included).

  A remote file is read whole first: the files read this way are annotations
  and configs, and epath's remote text mode (fsspec) would decode with the
  locale's encoding.
  """
  if not is_remote(path):
    return open(path, encoding="utf-8")
  return io.TextIOWrapper(io.BytesIO(epath.Path(path).read_bytes()), encoding="utf-8")


def read_text(path) -> str:
  """The whole UTF-8 text of `path`."""
  with open_text(path) as f:
    return f.read()


@contextlib.contextmanager
def staged(path) -> Iterator[str]:
  """Yields a local path to write; it becomes `path` only if the block succeeds.

  Locally the file is written next to `path` under a unique name (hosts may
  share the folder) and renamed over it; for a URL it is written to a
  temporary folder and then uploaded (an object store shows a new object only
  once its upload completes). Either way no reader ever sees half a file, and
  a failed block leaves `path` as it was.
  """
  path = os.fspath(path)
  name = os.path.basename(path)
  if not is_remote(path):
    tmp = os.path.join(os.path.dirname(path), f".{name}.{uuid.uuid4().hex}.tmp")
    try:
      yield tmp
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return
  with tempfile.TemporaryDirectory(prefix="vwt_upload_") as folder:
    tmp = os.path.join(folder, name)
    yield tmp
    with open(tmp, "rb") as src, epath.Path(path).open("wb") as dst:
      shutil.copyfileobj(src, dst)


@contextlib.contextmanager
def write_file(path, mode: str = "w") -> Iterator[IO]:
  """A file to write `path` through (text: UTF-8), committed as `staged` does.

  `mode` is 'w' or 'wb'. Parent folders of a local `path` must exist.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode={mode!r}: expected 'w' or 'wb'")
  encoding = None if "b" in mode else "utf-8"
  with staged(path) as tmp, open(tmp, mode, encoding=encoding) as f:
    yield f


def write_text(path, text: str) -> None:
  """Writes `text` (UTF-8) to `path` whole, as `write_file` does."""
  with write_file(path) as f:
    f.write(text)


def makedirs(path) -> None:
  """`os.makedirs(path, exist_ok=True)`, also for URLs (where object stores
  need no folders: epath makes this a no-op or a marker as the store wants)."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)
