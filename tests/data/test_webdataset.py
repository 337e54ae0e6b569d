"""Tar shards in the webdataset layout: listing in place, labels, real photographs,
corrupt samples skipped and named, exact resume."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

from helpers import assert_same_batches, real_photo, take_batches
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.data import webdataset


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _photo(name):
  with open(real_photo(name), "rb") as f:
    return f.read()


@pytest.fixture
def shards(tmp_path):
  """Two shards: five good samples of three classes, one broken image, one
  sample without a label; a stray file without an extension."""
  folder = tmp_path / "shards"
  folder.mkdir()
  with tarfile.open(folder / "train-000.tar", "w") as tar:
    _add(tar, "000000.png", _photo("coffee.png"))
    _add(tar, "000000.cls", b"1")
    _add(tar, "000001.jpg", _photo("rocket.jpg"))
    _add(tar, "000001.cls", b"2\n")
    _add(tar, "cats/000002.png", _photo("chelsea.png"))
    _add(tar, "cats/000002.json", json.dumps({"label": 0, "source": "skimage"}).encode())
    _add(tar, "README", b"not a sample")
  with tarfile.open(folder / "train-001.tar", "w") as tar:
    _add(tar, "000003.png", _photo("camera.png"))
    _add(tar, "000003.cls", b"2")
    _add(tar, "000004.jpg", b"\xff\xd8\xff broken")
    _add(tar, "000004.cls", b"1")
    _add(tar, "000005.png", _photo("astronaut.png"))
    _add(tar, "000005.cls", b"0")
    _add(tar, "000006.png", _photo("coffee.png"))
  return str(folder)


def _config(folder, **overrides):
  config = pipeline.default_data_config()
  config.update(dict(name="webdataset", data_dir=folder, train_split="train-{000..001}.tar",
                     eval_split="train-001.tar", image_size=32, num_threads=2, prefetch=8,
                     **overrides))
  return config


def _train(config, batch=4, seed=0):
  return pipeline.create_image_dataset(config, split=config.train_split,
                                       global_batch_size=batch, seed=seed, train=True)


def test_shard_patterns(shards):
  both = [os.path.join(shards, f"train-00{i}.tar") for i in range(2)]
  assert webdataset.expand("train-{000..001}.tar", shards) == both
  assert webdataset.expand("train-*.tar", shards) == both
  assert webdataset.expand("train-001.tar, train-000.tar", shards) == both[::-1]
  with pytest.raises(FileNotFoundError, match="no file matches"):
    webdataset.expand("valid-*.tar", shards)


def test_samples_labels_and_names(shards):
  config = _config(shards)
  source, _ = pipeline.open_source(config, config.train_split)
  assert len(source) == 7
  assert [os.path.relpath(source.record_name(i), shards) for i in range(7)] == [
      "train-000.tar:000000", "train-000.tar:000001", "train-000.tar:cats/000002",
      "train-001.tar:000003", "train-001.tar:000004", "train-001.tar:000005",
      "train-001.tar:000006"]
  assert [int(source[i]["label"]) for i in (0, 1, 2, 3, 5)] == [1, 2, 0, 2, 0]
  assert source[2]["image"] == _photo("chelsea.png")
  with pytest.raises(transforms.CorruptRecordError, match=r"000006: no readable label"):
    source[6]  # pylint: disable=pointless-statement
  assert pipeline.num_classes(config) == 3


def test_batches_skip_and_name_corrupt_samples_and_resume(shards, caplog):
  iterator = iter(_train(_config(shards)))
  batches = take_batches(iterator, 5)  # four epochs of the five good samples
  labels = np.concatenate([b["label"] for b in batches])
  assert np.bincount(labels, minlength=3).tolist() == [8, 4, 8]
  assert iterator.stats()["num_corrupt_records"] >= 8
  assert "train-001.tar:000004" in caplog.text and "train-001.tar:000006" in caplog.text
  state = iterator.get_state()
  expected = take_batches(iterator, 2)
  restored = iter(_train(_config(shards)))
  restored.set_state(state)
  assert_same_batches(take_batches(restored, 2), expected)
  with pytest.raises(pipeline.TooManyCorruptRecordsError, match=r"train-001\.tar:0000"):
    take_batches(iter(_train(_config(shards, max_corrupt_records=1))), 5)


def test_eval_pictures_are_the_official_centre_crops(shards):
  config = _config(shards)
  ds = pipeline.create_image_dataset(config, split=config.eval_split, global_batch_size=4,
                                     seed=0, train=False, process_index=0, process_count=1)
  (batch,) = list(ds)
  assert batch["mask"].tolist() == [True, False, True, False]
  expected = transforms.preprocess_image(_photo("astronaut.png"), image_size=32, train=False)
  np.testing.assert_array_equal(np.round((batch["image"][2] + 1.0) * 127.5), expected)


def test_unreadable_shards_are_named(shards, tmp_path):
  bad = tmp_path / "bad.tar"
  bad.write_bytes(b"this is not a tar file" * 100)
  with pytest.raises(ValueError, match=r"bad\.tar: not a readable tar shard"):
    webdataset.WebDatasetSource([str(bad)])
  with pytest.raises(ValueError, match="no sample"):
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    webdataset.WebDatasetSource([str(empty)])
