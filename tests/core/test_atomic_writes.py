"""Files that other jobs read (config.json, ADM batches, converted weights) appear
whole or not at all: a write that fails leaves the previous file and no
temporary one, and a reader of the previous file keeps reading it whole."""

import json
import os

import ml_collections
import numpy as np
import pytest

from vwt_jax.conversion import weights_npz
from vwt_jax.evaluation import adm_npz
from vwt_jax.families import common


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def test_a_failed_adm_batch_leaves_the_previous_one(tmp_path, monkeypatch):
  path = str(tmp_path / "samples.npz")
  adm_npz.write_samples(path, np.zeros((2, 4, 4, 3), np.uint8), np.arange(2))
  before = _read(path)

  def savez_until_the_disk_is_full(file, **arrays):
    del arrays
    file.write(b"PK\x03\x04 the first bytes of a zip")
    raise OSError("No space left on device")

  monkeypatch.setattr(np, "savez", savez_until_the_disk_is_full)
  with pytest.raises(OSError, match="No space left on device"):
    adm_npz.write_samples(path, np.ones((2, 4, 4, 3), np.uint8), np.arange(2))
  assert os.listdir(tmp_path) == ["samples.npz"]
  assert _read(path) == before


def test_a_failed_conversion_leaves_the_previous_weights_and_hash(tmp_path, monkeypatch):
  path = str(tmp_path / "weights.npz")
  params = {"a": np.ones(2, np.float32), "b": {"c": np.ones(3, np.float32)}}
  weights_npz.write(params, path)
  before = {name: _read(tmp_path / name) for name in os.listdir(tmp_path)}
  assert sorted(before) == ["weights.npz", "weights.npz.sha256"]
  write_array = np.lib.format.write_array
  written = []

  def write_one_array_then_fail(*args, **kwargs):
    if written:
      raise OSError("No space left on device")
    written.append(write_array(*args, **kwargs))

  monkeypatch.setattr(np.lib.format, "write_array", write_one_array_then_fail)
  with pytest.raises(OSError, match="No space left on device"):
    weights_npz.write({"a": np.zeros(2, np.float32), "b": {"c": np.zeros(3, np.float32)}}, path)
  assert len(written) == 1
  assert {name: _read(tmp_path / name) for name in os.listdir(tmp_path)} == before


def test_config_json_is_replaced_whole(tmp_path):
  workdir = str(tmp_path)
  config = ml_collections.ConfigDict({"family": "titok", "total_steps": 1})
  common.save_config(config, workdir)
  with open(tmp_path / "config.json", encoding="utf-8") as reader:
    config.total_steps = 2
    common.save_config(config, workdir)
    # A file rewritten in place would show the reader the new text (or half of it).
    assert json.load(reader)["total_steps"] == 1
  assert json.loads(_read(tmp_path / "config.json"))["total_steps"] == 2
  assert os.listdir(tmp_path) == ["config.json"]
