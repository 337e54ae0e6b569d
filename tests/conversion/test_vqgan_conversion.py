"""Official LlamaGen VQ state dicts -> VQModel params: containers, topologies, errors."""

import json
import os
import re

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from vwt_jax.conversion import torch_state
from vwt_jax.conversion.vqgan import abstract_params, convert_vqgan, load_vqgan
from vwt_jax.models.vqgan import VQGANConfig
from vwt_jax.tools.parity_vqgan import config_from_fixture

TINY = VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, codebook_size=16)


def _official_name(path: str) -> str:
  """Our param path -> the official state-dict key (the converter's inverse)."""
  path = re.sub(r"conv_blocks_(\d+)_(res|attn)_(\d+)", r"conv_blocks.\1.\2.\3", path)
  path = re.sub(r"conv_blocks_(\d+)_(downsample|upsample)", r"conv_blocks.\1.\2.conv", path)
  path = re.sub(r"mid_(\d)", r"mid.\1", path)
  path = path.replace("/kernel", ".weight").replace("/scale", ".weight").replace("/", ".")
  return path.replace("quantize.embedding", "quantize.embedding.weight")


def _official_state_dict(config, seed=0):
  """Random arrays under the official names and torch layouts for `config`."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(nn.meta.unbox(abstract_params(config)), sep="/")
  sd = {}
  for path, leaf in flat.items():
    shape = leaf.shape
    if path.endswith("kernel"):
      shape = (shape[3], shape[2], shape[0], shape[1])
    sd[_official_name(path)] = rng.normal(size=shape).astype(np.float32)
  sd["quantize.codebook_used"] = np.zeros(65536, np.float32)
  return sd


def test_any_topology_converts_with_shortcuts_only_where_channels_change():
  sd = _official_state_dict(TINY)
  assert sorted(k for k in sd if "nin_shortcut.weight" in k) == [
      "decoder.conv_blocks.2.res.0.nin_shortcut.weight",
      "encoder.conv_blocks.1.res.0.nin_shortcut.weight"]
  params = convert_vqgan(sd, TINY)
  kernel = params["encoder"]["conv_blocks_1_downsample"]["kernel"]
  np.testing.assert_array_equal(
      kernel, sd["encoder.conv_blocks.1.downsample.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["quantize"]["embedding"],
                                sd["quantize.embedding.weight"])


def test_torch_model_container_matches_npz(fixtures_dir, tmp_path):
  with open(os.path.join(fixtures_dir, "llamagen", "vq_config.json")) as f:
    config = config_from_fixture(json.load(f))
  npz = os.path.join(fixtures_dir, "llamagen", "vq_state_dict.npz")
  sd = torch_state.load_state_dict(npz)
  path = str(tmp_path / "vq.pt")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "steps": 7}, path)
  _, from_pt = load_vqgan(path, config)
  chex.assert_trees_all_equal(jax.device_get(from_pt), jax.device_get(convert_vqgan(sd, config)))


def test_errors_name_every_problem():
  sd = _official_state_dict(TINY)
  del sd["encoder.mid.1.q.bias"]
  sd["encoder.conv_blocks.9.res.0.conv1.weight"] = np.zeros((1,), np.float32)
  sd["quant_conv.weight"] = np.zeros((4, 32, 1, 1), np.float32)
  with pytest.raises(torch_state.ConversionError) as err:
    convert_vqgan(sd, TINY)
  message = str(err.value)
  assert "missing state-dict key: encoder.mid.1.q.bias" in message
  assert "unexpected state-dict key: encoder.conv_blocks.9.res.0.conv1.weight" in message
  assert "shape mismatch: quant_conv/kernel" in message
  assert "codebook_used" not in message
  # The wrong topology for a checkpoint fails the same way.
  with pytest.raises(torch_state.ConversionError, match="unexpected state-dict key"):
    convert_vqgan(_official_state_dict(TINY), VQGANConfig(
        ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, codebook_size=16))
