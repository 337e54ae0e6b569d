"""Reading and writing files on local disks and object stores alike.

Paths with a scheme (`gs://bucket/run`, also `s3://`) go through
`etils.epath`, which uses `tf.io.gfile` when TensorFlow is installed and fsspec
(gcsfs for `gs://`, the `gcs` extra) otherwise; local paths keep Python's own
file functions, so local behaviour stays what it was. Queries (`exists`,
`is_dir`, `iterdir`) are `epath.Path` methods at the call sites; this module
holds what epath does not give: the same text decoding everywhere, writes
that appear whole or not at all, local files for libraries that only write
local paths (ArrayRecord), and a lock that keeps two jobs out of one folder.
"""

import contextlib
import fcntl
import io
import os
import shutil
import socket
import tempfile
from typing import IO, Iterator
import uuid

from absl import logging
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


_UNKNOWN_HOLDER = "a process that has not written its name yet"


class LockedError(RuntimeError):
  """Another live process holds the lock of a folder."""


@contextlib.contextmanager
def lock(path) -> Iterator[None]:
  """Holds an exclusive lock on the file `path` while the block runs.

  The file (created if need be) holds "host pid" of the holder; it is removed
  on leaving the block, on an exception too. The lock is `fcntl.flock`, which
  the kernel drops when the holder dies: a leftover file whose lock can be
  taken belongs to a dead process and is taken over with a logged warning
  naming it. A URL (`gs://...`) cannot be flock'ed: there the block runs
  unlocked, with a logged note. (On NFS, Linux emulates flock with NFS
  byte-range locks.)

  Raises:
    LockedError: a live process holds the lock; the message names it.
  """
  path = os.fspath(path)
  if is_remote(path):
    logging.info("%s: no lock on an object store; make sure no other job uses this folder",
                 path)
    yield
    return
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _lock_holder(fd)
      os.close(fd)
      raise LockedError(
          f"{os.path.dirname(path) or '.'} is in use: {holder} holds its lock {path}; "
          "wait for that job to end, stop it, or use another folder") from None
    # The previous holder may have removed the file between our open and our
    # flock: then the lock is on an orphan inode and another process may lock
    # a new file under the same name, so try again on that one.
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    previous = _lock_holder(fd)
    if previous != _UNKNOWN_HOLDER:
      logging.warning("%s: took over the stale lock of %s (that process is gone)", path,
                      previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
    yield
  finally:
    # Removed while still held, so no other process can lock this inode after us.
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
    os.close(fd)


def _lock_holder(fd: int) -> str:
  """'host H, pid P' from a lock file's "host pid" line."""
  words = os.pread(fd, 4096, 0).decode(errors="replace").split()
  if len(words) != 2:
    return _UNKNOWN_HOLDER
  return f"host {words[0]}, pid {words[1]}"
