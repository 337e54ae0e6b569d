"""TiTok conversion: clear errors on bad state dicts, and the torch `.bin` path."""

import json
import os

import numpy as np
import pytest

from vwt_jax.conversion import torch_state
from vwt_jax.conversion.titok import convert_titok, load_titok
from vwt_jax.models.titok import TiTokConfig

STEM = "titok_single_stage_vq"


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  base = os.path.join(fixtures_dir, "titok", STEM)
  with open(f"{base}_config.json") as f:
    meta = json.load(f)
  config = TiTokConfig.from_official(meta["official_config"], meta["sizes"], meta["pixel_decoder"])
  return meta, config, torch_state.load_state_dict(f"{base}_state_dict.npz")


def test_missing_unexpected_and_misshaped_keys_are_listed(fixture):
  _, config, sd = fixture
  bad = dict(sd)
  del bad["encoder.ln_pre.weight"]
  bad["decoder.decoder_embed.weight"] = np.zeros((3, 3), np.float32)
  bad["encoder.extra.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(torch_state.ConversionError) as err:
    convert_titok(bad, config)
  msg = str(err.value)
  assert "missing state-dict key: encoder.ln_pre.weight" in msg
  assert "missing param: encoder/ln_pre/scale" in msg
  assert "shape mismatch: decoder/decoder_embed/kernel" in msg
  assert "unexpected state-dict key: encoder.extra.weight" in msg


def test_wrong_family_is_rejected(fixture):
  meta, _, sd = fixture
  legacy = TiTokConfig.from_official(meta["official_config"], meta["sizes"], is_legacy=True,
                                     finetune_decoder=False, pixel_decoder=None)
  with pytest.raises(torch_state.ConversionError, match="decoder.ffn.2.weight"):
    convert_titok(sd, legacy)


def test_torch_bin_round_trip(fixture, tmp_path):
  torch = pytest.importorskip("torch")
  meta, config, sd = fixture
  path = str(tmp_path / "titok.bin")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
  loaded = torch_state.load_state_dict(path)
  assert sorted(loaded) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(loaded[k], v)
  model, params = load_titok(path, meta["official_config"], meta["sizes"])
  assert model.config == config
  assert params["quantize"]["embedding"].shape == sd["quantize.embedding.weight"].shape


def test_safetensors_and_unknown_suffix(fixture, tmp_path):
  from safetensors.numpy import save_file
  _, _, sd = fixture
  path = str(tmp_path / "titok.safetensors")
  save_file(sd, path)
  loaded = torch_state.load_state_dict(path)
  np.testing.assert_array_equal(loaded["latent_tokens"], sd["latent_tokens"])
  with pytest.raises(ValueError, match="unsupported"):
    torch_state.load_state_dict(str(tmp_path / "weights.ckpt"))
