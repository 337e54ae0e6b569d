"""Metric writers: JSONL always, TensorBoard events always, clu when TF exists.

clu's `metric_writers` package imports TensorFlow at import time, so it is used
only when TensorFlow is installed (the `tf` extra); otherwise tensorboardX
writes the same event files, readable by TensorBoard.
"""

import json
import os
import time
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class JsonlWriter:
  """One JSON object per `write_scalars` call, appended to `path`."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step), "time": time.time()}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")

  def write_images(self, step, images):
    del step, images

  def write_texts(self, step, texts):
    record = {"step": int(step), "texts": dict(texts)}
    self._file.write(json.dumps(record) + "\n")

  def write_hparams(self, hparams):
    self._file.write(json.dumps({"hparams": hparams}, default=str) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class TensorboardXWriter:
  """Event files without TensorFlow."""

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step, scalars):
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(np.asarray(value)), int(step))

  def write_images(self, step, images):
    for key, value in images.items():
      value = np.asarray(value)
      if value.ndim == 3:
        value = value[None]
      self._writer.add_images(key, value, int(step), dataformats="NHWC")

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

  def close(self):
    pass


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
