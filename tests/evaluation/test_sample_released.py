"""`vwt_jax.sample` on LlamaGen's released containers, read offline from a Hub cache.

The fixture GPT and VQGAN (made with the official code) are saved as the
official `.pt` checkpoints are ({"model": state_dict, "args": Namespace}),
placed in a Hugging Face cache as huggingface_hub lays out a download, and
sampled by the command line with the network off. Greedy decoding (top-k 1)
must give the official generations token for token.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import hub_cache
from vwt_jax.config_common import model_section
from vwt_jax.conversion import torch_state
from vwt_jax.families import common
from vwt_jax.families import pretrained
from vwt_jax.models.gpt import GPTConfig
from vwt_jax.tools.parity_vqgan import config_from_fixture

REPO = "FoundationVision/LlamaGen"
# The fixture GPT's vocabulary: the VQGAN's codebook is cut to it (codes of a
# generator must index its tokenizer's codebook one to one).
VOCAB = 512


def _save_official(state_dict, path, **extra):
  torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
              **extra}, path)


@pytest.fixture(scope="module")
def released(fixtures_dir, tmp_path_factory):
  """(Hub cache, generator config.json, the official generations)."""
  root = tmp_path_factory.mktemp("released")
  llamagen = os.path.join(fixtures_dir, "llamagen")
  with open(os.path.join(llamagen, "gpt_config.json")) as f:
    gpt_args = json.load(f)["model_args"]
  with open(os.path.join(llamagen, "vq_config.json")) as f:
    vq_meta = json.load(f)
  gpt_sd = torch_state.load_state_dict(os.path.join(llamagen, "gpt_state_dict.npz"))
  vq_sd = dict(torch_state.load_state_dict(os.path.join(llamagen, "vq_state_dict.npz")))
  vq_sd["quantize.embedding.weight"] = vq_sd["quantize.embedding.weight"][:VOCAB]
  _save_official(gpt_sd, str(root / "c2i.pt"), steps=10,
                 args=argparse.Namespace(gpt_model="GPT-fixture", image_size=256))
  _save_official(vq_sd, str(root / "vq.pt"))
  cache = str(root / "hub")
  hub_cache(cache, REPO, {"c2i_fixture.pt": str(root / "c2i.pt"),
                          "vq_fixture.pt": str(root / "vq.pt")})

  # The configs that describe the two files, as a user writes them: the
  # released recipes' config files with the fixture's sizes, computing in
  # float32 as the fixture's official run did (the recipes say bfloat16).
  configs = pretrained.configs_dir()
  tokenizer = common.load_config(os.path.join(configs, "llamagen_vq.py:vq16"))
  tokenizer.model = model_section(config_from_fixture(vq_meta), codebook_size=VOCAB)
  tokenizer.data.image_size = 16 * 16
  tokenizer.compute_dtype = "float32"
  with open(root / "tokenizer.json", "w") as f:
    f.write(tokenizer.to_json())
  generator = common.load_config(os.path.join(configs, "llamagen.py:B"))
  generator.model = model_section(GPTConfig.from_official(gpt_args))
  generator.compute_dtype = "float32"
  generator.tokenizer.checkpoint = f"hf://{REPO}/vq_fixture.pt"
  generator.tokenizer.config = str(root / "tokenizer.json")
  with open(root / "generator.json", "w") as f:
    f.write(generator.to_json())
  with np.load(os.path.join(llamagen, "gpt_io.npz")) as io:
    official = {k: io[k] for k in ("cond_idx", "gen_greedy_nocfg", "gen_greedy_cfg4")}
  return cache, str(root / "generator.json"), official


@pytest.mark.parametrize("cfg,key", [(1.0, "gen_greedy_nocfg"), (4.0, "gen_greedy_cfg4")])
def test_greedy_samples_from_the_hub_are_the_official_generations(released, tmp_path, cfg,
                                                                  key):
  cache, config, official = released
  classes = ",".join(str(int(c)) for c in official["cond_idx"])
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, JAX_PLATFORMS="cpu")
  npz = str(tmp_path / "samples.npz")
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.sample", "--config", config,
       "--checkpoint", f"hf://{REPO}/c2i_fixture.pt", "--classes", classes, "--per_class", "1",
       "--cfg", str(cfg), "--top_k", "1", "--batch_size", "2", "--npz", npz,
       "--output", str(tmp_path / "samples.png")],
      env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(npz) as out:
    np.testing.assert_array_equal(out["codes"], official[key])
    np.testing.assert_array_equal(out["arr_1"], official["cond_idx"])
    assert out["arr_0"].shape == (2, 256, 256, 3) and out["arr_0"].dtype == np.uint8
  assert os.path.getsize(tmp_path / "samples.png") > 0
