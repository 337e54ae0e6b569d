"""Metric writers: JSONL always, TensorBoard events always, clu when TF exists.

clu's `metric_writers` imports TensorFlow, so it is used only when TensorFlow is
installed (the `tf` extra); otherwise tensorboardX writes the same event files.

The workdir may be a URL (`gs://bucket/run`). Object stores cannot append, so
there each file is kept in memory and uploaded whole when `flush` finds it
changed (as TensorFlow's gfile does for GCS).
"""

import json
import os
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import numpy as np

from vwt_jax.core import files


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class _RewrittenObject:
  """A growing binary file on an object store, uploaded whole when it changed.

  Holds everything written so far (after the object's earlier content when
  `keep_existing`, so a resumed run appends). `flush` uploads only if
  something was written since: the loop flushes every step, metrics arrive
  every `log_every` steps.
  """

  def __init__(self, path: str, *, keep_existing: bool):
    self._path = epath.Path(path)
    existing = keep_existing and self._path.exists()
    self._data = bytearray(self._path.read_bytes() if existing else b"")
    self._changed = False

  def write(self, data: bytes) -> None:
    self._data += data
    self._changed = True

  def flush(self) -> None:
    if self._changed:
      self._path.write_bytes(bytes(self._data))
      self._changed = False

  close = flush


class _RewrittenObjectFactory:
  """tensorboardX's writer factory interface (`open`, `directory_check`).

  Replaces tensorboardX's own gs:// writer, which bypasses epath and uploads
  the whole event file at every flush, changed or not.
  """

  def open(self, path):
    return _RewrittenObject(path, keep_existing=False)

  def directory_check(self, path):
    del path  # Object stores have no folders to create.


class JsonlWriter:
  """One JSON object per `write_scalars` call, appended to `path` (a URL too)."""

  def __init__(self, path: str):
    files.makedirs(os.path.dirname(path))
    self._file = (_RewrittenObject(path, keep_existing=True) if files.is_remote(path)
                  else open(path, "ab"))

  def _write(self, record, **kwargs):
    self._file.write((json.dumps(record, **kwargs) + "\n").encode("utf-8"))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._write({"step": int(step), "time": time.time(),
                 **{k: _to_python(v) for k, v in scalars.items()}})

  def write_images(self, step, images):
    del step, images

  def write_texts(self, step, texts):
    self._write({"step": int(step), "texts": dict(texts)})

  def write_hparams(self, hparams):
    self._write({"hparams": hparams}, default=str)

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class TensorboardXWriter:
  """Event files without TensorFlow."""

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    import tensorboardX
    from tensorboardX import record_writer
    # pylint: enable=g-import-not-at-top
    if files.is_remote(logdir):
      record_writer.register_writer_factory(logdir.split("://")[0], _RewrittenObjectFactory())
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step, scalars):
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(np.asarray(value)), int(step))

  def write_images(self, step, images):
    for key, value in images.items():
      value = np.asarray(value)
      self._writer.add_images(key, value[None] if value.ndim == 3 else value, int(step),
                              dataformats="NHWC")

  def write_texts(self, step, texts):
    for key, value in texts.items():
      self._writer.add_text(key, str(value), int(step))

  def write_hparams(self, hparams):
    self._writer.add_text("hparams", json.dumps(hparams, default=str, indent=1), 0)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class LoggingWriter:

  def write_scalars(self, step, scalars):
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={float(np.asarray(v)):.6g}" for k, v in sorted(scalars.items())))

  def write_images(self, step, images):
    del step, images

  def write_texts(self, step, texts):
    for key, value in texts.items():
      logging.info("[%d] %s: %s", step, key, value)

  def write_hparams(self, hparams):
    logging.info("hparams: %s", hparams)

  def flush(self):
    pass

  close = flush


class MultiWriter:

  def __init__(self, writers):
    self._writers = list(writers)

  def __getattr__(self, name):
    def call_all(*args, **kwargs):
      for writer in self._writers:
        getattr(writer, name)(*args, **kwargs)
    return call_all


def tensorflow_available() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def create_writer(workdir: str, *, use_clu: bool | None = None):
  """The run's writer. Only process 0 writes files; the others only log."""
  if jax.process_index() > 0:
    return MultiWriter([])
  use_clu = tensorflow_available() if use_clu is None else use_clu
  writers = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
  if use_clu:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    writers.append(metric_writers.create_default_writer(workdir, asynchronous=False))
  else:
    logging.info("TensorFlow not installed: writing TensorBoard events with tensorboardX")
    writers += [TensorboardXWriter(workdir), LoggingWriter()]
  return MultiWriter(writers)
