"""Reading Hugging Face model directories (`conversion/hf_checkpoint.py`)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vwt_jax.conversion import hf_checkpoint

_TENSORS = {
    "model.embed_tokens.weight": torch.randn(6, 4).bfloat16(),
    "model.norm.weight": torch.randn(4).half(),
    "lm_head.weight": torch.randn(6, 4),
    "model.position_ids": torch.arange(5),
}


def _expected(name):
  return _TENSORS[name].float().numpy() if name != "model.position_ids" else np.arange(5)


def _write_config(path):
  (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4}))


@pytest.fixture(name="single_dir")
def fixture_single_dir(tmp_path):
  save_file(_TENSORS, str(tmp_path / "model.safetensors"))
  _write_config(tmp_path)
  return tmp_path


@pytest.fixture(name="sharded_dir")
def fixture_sharded_dir(tmp_path):
  names = sorted(_TENSORS)
  shards = {"model-00001-of-00002.safetensors": names[:2],
            "model-00002-of-00002.safetensors": names[2:]}
  weight_map = {}
  for filename, keys in shards.items():
    save_file({k: _TENSORS[k] for k in keys}, str(tmp_path / filename))
    weight_map.update({k: filename for k in keys})
  (tmp_path / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map}))
  return tmp_path


def _assert_same(state_dict, names):
  assert sorted(state_dict) == sorted(names)
  for name in names:
    got = state_dict[name]
    want = _expected(name)
    assert got.dtype == (np.int64 if name == "model.position_ids" else np.float32), name
    np.testing.assert_array_equal(got, want)


def test_single_safetensors_half_precision_to_float32(single_dir):
  _assert_same(hf_checkpoint.read_state_dict(str(single_dir)), list(_TENSORS))


def test_sharded_safetensors(sharded_dir):
  _assert_same(hf_checkpoint.read_state_dict(str(sharded_dir)), list(_TENSORS))


def test_prefix_filter_keeps_full_names(single_dir, sharded_dir):
  for model_dir in (single_dir, sharded_dir):
    _assert_same(hf_checkpoint.read_state_dict(str(model_dir), prefix="model."),
                 ["model.embed_tokens.weight", "model.norm.weight", "model.position_ids"])


def test_torch_bin_checkpoint(tmp_path):
  torch.save(_TENSORS, str(tmp_path / "pytorch_model.bin"))
  _assert_same(hf_checkpoint.read_state_dict(str(tmp_path), prefix="lm_head"), ["lm_head.weight"])
  _assert_same(hf_checkpoint.read_state_dict(str(tmp_path)), list(_TENSORS))


def test_read_config(single_dir):
  assert hf_checkpoint.read_config(str(single_dir)) == {"model_type": "llama", "hidden_size": 4}


def test_clear_errors(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match="nope does not exist"):
    hf_checkpoint.read_config(str(missing))
  with pytest.raises(FileNotFoundError, match="nope does not exist"):
    hf_checkpoint.read_state_dict(str(missing))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty/config\.json not found"):
    hf_checkpoint.read_config(str(empty))
  with pytest.raises(FileNotFoundError, match="expected one of model.safetensors"):
    hf_checkpoint.read_state_dict(str(empty))
  (empty / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
    hf_checkpoint.read_config(str(empty))


def test_missing_shard_is_named(sharded_dir):
  (sharded_dir / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors not found"):
    hf_checkpoint.read_state_dict(str(sharded_dir))
