"""Run folders and weight files on gs:// (an in-memory bucket behind epath's
fsspec backend): the file helpers, metric writers, checkpoint folders, configs,
pictures and state dicts give what they give on a local disk."""

import io
import json
import os
import struct

from etils import epath
import ml_collections
import numpy as np
from PIL import Image
import pytest
from tensorboardX.proto import event_pb2

from vwt_jax.conversion import torch_state
from vwt_jax.core import checkpoint
from vwt_jax.core import files
from vwt_jax.core import images as images_lib
from vwt_jax.core import metrics
from vwt_jax.families import common


def test_absolute_leaves_urls_alone():
  assert files.absolute("gs://b/run/") == "gs://b/run/"
  assert files.absolute("run") == os.path.join(os.getcwd(), "run")


def test_write_file_is_all_or_nothing_locally_and_on_a_bucket(tmp_path, bucket):
  for path in (str(tmp_path / "out.txt"), "gs://b/dir/out.txt"):
    with pytest.raises(RuntimeError, match="stopped"):
      with files.write_file(path) as f:
        f.write("half")
        raise RuntimeError("stopped")
    assert not epath.Path(path).exists()
    with files.write_file(path) as f:
      f.write("naïve\r\nline\n")
    with files.open_text(path) as f:
      assert list(f) == ["naïve\n", "line\n"]  # decoded as open() decodes
  assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind
  assert bucket["b/dir/out.txt"] == "naïve\r\nline\n".encode()


def _write_run(workdir):
  writer = metrics.create_writer(workdir, use_clu=False)
  writer.write_hparams({"lr": 0.1})
  writer.write_scalars(1, {"train/loss": np.float32(0.5)})
  writer.flush()
  writer.write_scalars(2, {"train/loss": 0.25, "eval/psnr": 20.0})
  writer.write_images(2, {"grid": np.zeros((1, 4, 4, 3), np.uint8)})
  writer.close()


def _records(text):
  return [{k: v for k, v in json.loads(line).items() if k != "time"}
          for line in text.splitlines()]


def _scalars(event_file_bytes):
  """(step, tag, value) of every scalar in a TFRecord file of Event protos."""
  out, pos = [], 0
  while pos < len(event_file_bytes):
    (length,) = struct.unpack("<Q", event_file_bytes[pos:pos + 8])
    event = event_pb2.Event.FromString(event_file_bytes[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
    out += [(event.step, v.tag, v.simple_value) for v in event.summary.value
            if v.HasField("simple_value")]
  return out


def test_metric_writers_on_a_bucket_write_what_they_write_locally(tmp_path, bucket):
  _write_run(str(tmp_path))
  _write_run("gs://b/run")
  local = _records((tmp_path / "metrics.jsonl").read_text())
  assert _records(bucket["b/run/metrics.jsonl"].decode()) == local
  assert local[1] == {"step": 1, "train/loss": 0.5}
  (local_events,) = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
  (remote_events,) = [k for k in bucket if k.startswith("b/run/events.out.tfevents")]
  expected = [(1, "train/loss", 0.5), (2, "train/loss", 0.25), (2, "eval/psnr", 20.0)]
  assert _scalars((tmp_path / local_events).read_bytes()) == expected
  assert _scalars(bucket[remote_events]) == expected


def test_jsonl_on_a_bucket_appends_on_resume_and_uploads_only_changes(bucket):
  _write_run("gs://b/run")
  writer = metrics.JsonlWriter("gs://b/run/metrics.jsonl")
  writer.write_scalars(3, {"train/loss": 0.125})
  writer.flush()
  del bucket["b/run/metrics.jsonl"]
  writer.flush()  # nothing new since the last upload: the loop flushes every step
  assert "b/run/metrics.jsonl" not in bucket
  writer.write_texts(3, {"note": "x"})
  writer.close()
  records = _records(bucket["b/run/metrics.jsonl"].decode())
  assert [r.get("step") for r in records] == [None, 1, 2, 3, 3]
  assert records[-1] == {"step": 3, "texts": {"note": "x"}}


def test_checkpoint_folders_on_a_bucket_resolve_as_local_ones(tmp_path, bucket, monkeypatch):
  for step in (5, 10):
    for root in (str(tmp_path), "gs://b/run"):
      files.makedirs(os.path.join(root, "checkpoints", str(step), checkpoint.STATE))
      files.write_text(os.path.join(root, "checkpoints", str(step), checkpoint.STATE,
                                    "_METADATA"), "{}")
  files.write_text("gs://b/run/checkpoints/12/data_iter/x", "")  # no state/: skipped
  assert checkpoint.latest_checkpoint_dir(str(tmp_path)) == (
      str(tmp_path / "checkpoints" / "10"), 10)
  assert checkpoint.latest_checkpoint_dir("gs://b/run/") == ("gs://b/run/checkpoints/10", 10)
  assert checkpoint.latest_checkpoint_dir("gs://b/run/checkpoints/5") == (
      "gs://b/run/checkpoints/5", 5)
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    checkpoint.latest_checkpoint_dir("gs://b/elsewhere")

  class Handed(Exception):
    pass

  class Recorder:
    """Stands in for orbax, whose tensorstore GCS driver needs the network."""

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def metadata(self, path):
      raise Handed(path)

  monkeypatch.setattr(checkpoint.ocp, "PyTreeCheckpointer", Recorder)
  with pytest.raises(Handed) as handed:
    checkpoint.load_state_subtree("gs://b/run")
  assert handed.value.args == ("gs://b/run/checkpoints/10/state",)


def test_run_config_and_pictures_on_a_bucket(bucket):
  config = ml_collections.ConfigDict({"family": "titok", "data": {"image_size": 8}})
  common.save_config(config, "gs://b/run")
  assert json.loads(bucket["b/run/config.json"]) == config.to_dict()
  assert common.run_config("gs://b/run/checkpoints/10").to_dict() == config.to_dict()
  grid = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  images_lib.save_grid(grid, "gs://b/run/reconstructions.png")
  np.testing.assert_array_equal(
      np.asarray(Image.open(io.BytesIO(bucket["b/run/reconstructions.png"]))), grid)
  with pytest.raises(ValueError, match="unknown image file extension"):
    images_lib.save_grid(grid, "gs://b/run/grid")


def test_state_dict_files_read_from_a_bucket(bucket):
  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save as save_safetensors
  import torch
  # pylint: enable=g-import-not-at-top
  weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
  buffer = io.BytesIO()
  np.savez(buffer, **weights)
  bucket["b/w/model.npz"] = buffer.getvalue()
  bucket["b/w/model.safetensors"] = save_safetensors(weights)
  buffer = io.BytesIO()
  torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}}, buffer)
  bucket["b/w/model.pt"] = buffer.getvalue()
  for name in ("model.npz", "model.safetensors", "model.pt"):
    loaded = torch_state.load_state_dict(f"gs://b/w/{name}")
    assert sorted(loaded) == ["b", "w"], name
    for key, value in weights.items():
      np.testing.assert_array_equal(loaded[key], value)
  with pytest.raises(ValueError, match="unsupported checkpoint format '.ckpt'"):
    torch_state.load_state_dict("gs://b/w/model.ckpt")
