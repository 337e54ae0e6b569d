"""Reading and writing files on local disks and object stores alike.

Paths with a scheme (`gs://bucket/run`) go through `etils.epath` (tf.io.gfile
with TensorFlow, else fsspec); local paths keep Python's own file functions.
This module holds what epath does not give: the same text decoding everywhere,
writes that appear whole or not at all, local files for libraries that only
write local paths (ArrayRecord), and a lock that keeps two jobs out of a folder.
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
  """`os.path.abspath` for local paths; URLs unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def open_text(path) -> IO[str]:
  """Opens a text file for reading as `open(path, encoding='utf-8')` does.

  A remote file is read whole first (these are annotations and configs):
  epath's remote text mode would decode with the locale's encoding.
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
  temporary folder and then uploaded. Either way no reader ever sees half a
  file, and a failed block leaves `path` as it was.
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
  with staged(path) as tmp, open(tmp, mode, encoding=None if mode == "wb" else "utf-8") as f:
    yield f


def write_text(path, text: str) -> None:
  """Writes `text` (UTF-8) to `path` whole, as `write_file` does."""
  with write_file(path) as f:
    f.write(text)


def makedirs(path) -> None:
  """`os.makedirs(path, exist_ok=True)`, also for URLs."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)


_UNKNOWN_HOLDER = "a process that has not written its name yet"


class LockedError(RuntimeError):
  """Another live process holds the lock of a folder."""


@contextlib.contextmanager
def lock(path) -> Iterator[None]:
  """Holds an exclusive lock on the file `path` while the block runs.

  The file (created if need be) holds "host pid" of the holder and is removed
  on leaving the block. The lock is `fcntl.flock`, which the kernel drops when
  the holder dies: a leftover file whose lock can be taken is taken over with
  a logged warning naming it. A URL cannot be flock'ed: there the block runs
  unlocked, with a logged note.

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
    with contextlib.suppress(FileNotFoundError):
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
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
