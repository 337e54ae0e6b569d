"""Official LlamaGen GPT state dicts -> our params: layouts, strictness, containers."""

import argparse
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from vwt_jax.conversion import llama_block, llamagen, torch_state
from vwt_jax.conversion.torch_state import ConversionError
from vwt_jax.models import gpt


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  d = os.path.join(fixtures_dir, "llamagen")
  with open(os.path.join(d, "gpt_config.json")) as f:
    config = gpt.GPTConfig.from_official(json.load(f)["model_args"])
  return config, torch_state.load_state_dict(os.path.join(d, "gpt_state_dict.npz"))


def test_layout_round_trips(fixture):
  config, sd = fixture
  params = llamagen.convert_gpt(sd, config)
  w = sd["layers.2.attention.wqkv.weight"]
  hd, dim = config.head_dim, config.dim
  wqkv = np.asarray(params["layers_2"]["attention"]["wqkv"]["kernel"])
  assert wqkv.shape == (dim, config.n_head, 3, hd)
  for h in range(config.n_head):
    for slot in range(3):
      rows = w[slot * dim + h * hd: slot * dim + (h + 1) * hd]
      np.testing.assert_array_equal(wqkv[:, h, slot], rows.T)
  wo = np.asarray(params["layers_2"]["attention"]["wo"]["kernel"])
  np.testing.assert_array_equal(wo.reshape(dim, dim), sd["layers.2.attention.wo.weight"].T)
  np.testing.assert_array_equal(params["cls_embedding"]["embedding_table"]["embedding"],
                                sd["cls_embedding.embedding_table.weight"])
  np.testing.assert_array_equal(params["layers_0"]["ffn_norm"]["scale"],
                                sd["layers.0.ffn_norm.weight"])

  scanned = llamagen.convert_gpt(sd, dataclasses.replace(config, scan_layers=True))
  stacked = np.asarray(scanned["layers"]["feed_forward"]["w2"]["kernel"])
  assert stacked.shape[0] == config.n_layer
  np.testing.assert_array_equal(stacked[3], sd["layers.3.feed_forward.w2.weight"].T)


def test_gqa_wqkv_grouping():
  config = gpt.GPTConfig(dim=32, n_layer=1, n_head=4, n_kv_head=2, block_size=16)
  hd = config.head_dim
  w = np.arange((4 + 2 * 2) * hd * 32, dtype=np.float32).reshape(-1, 32)
  heads, kv = config.n_head, config.kv_heads
  out = llama_block.wqkv_kernel(w[:heads * hd], w[heads * hd:(heads + kv) * hd],
                                w[(heads + kv) * hd:], heads, kv, hd)
  assert out.shape == (32, 2, 4, hd)
  # kv head 1 serves q heads 2 and 3 (repeat-interleave), then its k and v.
  np.testing.assert_array_equal(out[:, 1, 1], w[3 * hd:4 * hd].T)
  np.testing.assert_array_equal(out[:, 1, 2], w[(4 + 1) * hd:(4 + 2) * hd].T)
  np.testing.assert_array_equal(out[:, 1, 3], w[(6 + 1) * hd:(6 + 2) * hd].T)


def test_buffers_are_dropped_and_errors_name_keys(fixture):
  config, sd = fixture
  extra = dict(sd, freqs_cis=np.zeros((3,)),
               **{"layers.0.attention.kv_cache.k_cache": np.zeros((1, 4, 8, 32))})
  llamagen.convert_gpt(extra, config)

  bad = dict(sd, **{"layers.1.attention.wo.weight": np.zeros((128, 64), np.float32)})
  with pytest.raises(ConversionError, match="layers_1/attention/wo/kernel"):
    llamagen.convert_gpt(bad, config)
  missing = {k: v for k, v in sd.items() if k != "layers.3.ffn_norm.weight"}
  with pytest.raises(ConversionError, match="missing state-dict key: layers.3.ffn_norm.weight"):
    llamagen.convert_gpt(missing, config)
  with pytest.raises(ConversionError, match="unexpected state-dict key: layers.9.foo"):
    llamagen.convert_gpt(dict(sd, **{"layers.9.foo": np.zeros(1)}), config)


def test_t2i_keeps_uncond_embedding(fixtures_dir):
  d = os.path.join(fixtures_dir, "llamagen")
  with open(os.path.join(d, "t2i_config.json")) as f:
    config = gpt.GPTConfig.from_official(json.load(f)["model_args"])
  sd = torch_state.load_state_dict(os.path.join(d, "t2i_state_dict.npz"))
  params = llamagen.convert_gpt(sd, config)
  np.testing.assert_array_equal(params["cls_embedding"]["uncond_embedding"],
                                sd["cls_embedding.uncond_embedding"])
  assert params["cls_embedding"]["fc1"]["kernel"].shape == (64, 128)


def test_torch_checkpoint_with_model_key_loads(fixture, tmp_path):
  config, sd = fixture
  path = str(tmp_path / "c2i.pt")
  # As `train_c2i.py` saves it: weights, step and the argparse namespace.
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "steps": 1,
              "args": argparse.Namespace(gpt_model="GPT-B", image_size=384)}, path)
  model, params = llamagen.load_gpt(path, config)
  assert model.config == config
  np.testing.assert_array_equal(params["output"]["kernel"], sd["output.weight"].T)
