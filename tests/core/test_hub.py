"""hf:// references, read offline from a Hugging Face cache laid out on disk."""

import json
import os

import chex
from huggingface_hub import constants
import jax
import pytest
import safetensors.numpy
import torch

from helpers import HUB_COMMIT as COMMIT
from helpers import hub_cache
from vwt_jax.conversion import torch_state
from vwt_jax.conversion.vqgan import convert_vqgan
from vwt_jax.core import hub
from vwt_jax.families import common
from vwt_jax.tools.parity_vqgan import config_from_fixture

@pytest.fixture
def offline(tmp_path, monkeypatch):
  """An empty Hub cache, the network off (huggingface_hub reads both per call)."""
  cache = str(tmp_path / "hub")
  monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return cache


@pytest.mark.parametrize("path,expected", [
    ("hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt",
     hub.HubPath("FoundationVision/LlamaGen", "vq_ds16_c2i.pt", None)),
    ("hf://org/repo/sub/dir/w.safetensors@v1.0",
     hub.HubPath("org/repo", "sub/dir/w.safetensors", "v1.0")),
    ("hf://yucornetto/tokenizer_titok_l32_imagenet",
     hub.HubPath("yucornetto/tokenizer_titok_l32_imagenet", "", None)),
    ("hf://org/repo@" + COMMIT, hub.HubPath("org/repo", "", COMMIT)),
])
def test_references_parse_and_print_back(path, expected):
  assert hub.parse(path) == expected
  assert str(expected) == path


@pytest.mark.parametrize("path", ["hf://org", "hf://org//file.pt", "hf://org/repo@",
                                  "gs://org/repo/file.pt"])
def test_malformed_references_are_refused(path):
  with pytest.raises(ValueError, match="expected hf://ORG/REPO"):
    hub.parse(path)


def test_local_paths_pass_through_untouched():
  assert hub.resolve("/data/vq.pt") == "/data/vq.pt"
  assert hub.resolve("gs://bucket/run") == "gs://bucket/run"


def test_files_and_repositories_come_from_the_cache(offline, tmp_path):
  weights = tmp_path / "w.safetensors"
  weights.write_bytes(b"weights")
  config = tmp_path / "config.json"
  config.write_text("{}")
  snapshot = hub_cache(offline, "org/repo", {"model.safetensors": str(weights),
                                             "config.json": str(config)})
  found = hub.resolve("hf://org/repo/model.safetensors")
  assert found == os.path.join(snapshot, "model.safetensors")
  assert open(found, "rb").read() == b"weights"
  assert hub.resolve("hf://org/repo") == snapshot
  assert hub.resolve(f"hf://org/repo/config.json@{COMMIT}") == os.path.join(snapshot,
                                                                              "config.json")


def test_a_file_missing_offline_names_the_command_that_fetches_it(offline, tmp_path):
  (tmp_path / "a.pt").write_bytes(b"")
  hub_cache(offline, "org/repo", {"a.pt": str(tmp_path / "a.pt")})
  with pytest.raises(FileNotFoundError) as err:
    hub.resolve("hf://org/repo/b.pt@v2")
  message = str(err.value)
  assert "hf://org/repo/b.pt@v2 is not in the Hugging Face cache" in message
  assert "HF_HUB_OFFLINE is set" in message
  assert "`hf download org/repo b.pt --revision v2`" in message
  with pytest.raises(FileNotFoundError, match="`hf download other/repo`"):
    hub.resolve("hf://other/repo")


def test_official_weights_load_the_same_from_the_hub(offline, fixtures_dir, tmp_path):
  # LlamaGen's released container ({"model": state_dict, ...}) as a file on
  # the Hub, and the same weights as a model folder (config.json + weights).
  with open(os.path.join(fixtures_dir, "llamagen", "vq_config.json")) as f:
    config = config_from_fixture(json.load(f))
  sd = torch_state.load_state_dict(os.path.join(fixtures_dir, "llamagen", "vq_state_dict.npz"))
  container = str(tmp_path / "vq.pt")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "steps": 3}, container)
  safetensors.numpy.save_file(dict(sd), str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text("{}")
  hub_cache(offline, "org/vq", {"vq.pt": container})
  hub_cache(offline, "org/vq_folder", {"model.safetensors": str(tmp_path / "model.safetensors"),
                                       "config.json": str(tmp_path / "config.json")})
  expected = jax.device_get(convert_vqgan(sd, config))
  for path in ("hf://org/vq/vq.pt", "hf://org/vq_folder"):
    assert not common.is_run(path)
    got = convert_vqgan(common.official_state_dict(path), config)
    chex.assert_trees_all_equal(jax.device_get(got), expected)
