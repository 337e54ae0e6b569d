"""`vwt_jax.sample` on the papers' released formats, read offline from a Hub cache.

The fixture models (made with the official code) are saved as the releases
are: LlamaGen's `.pt` checkpoints ({"model": state_dict, "args": Namespace})
and TiTok's model folders (config.json + model.safetensors). They are placed
in a Hugging Face cache as huggingface_hub lays out a download and sampled by
the command line with the network off; deterministic decoding must give the
official generations token for token. LlamaGen's text-to-image case starts
from a prompts file and its text encoder's Hugging Face folder, as the
official `sample_t2i.py` does.
"""

import argparse
import json
import os
import subprocess
import sys
from unittest import mock

import chex
from huggingface_hub import constants
import jax
import numpy as np
import pytest
import torch

from helpers import hub_cache, official_titok_releases
from vwt_jax import cli
from vwt_jax import convert
from vwt_jax import families
from vwt_jax.config_common import model_section
from vwt_jax.conversion import torch_state
from vwt_jax.core import hub
from vwt_jax.families import common
from vwt_jax.families import pretrained
from vwt_jax.models.gpt import GPTConfig
from vwt_jax.tools.parity_vqgan import config_from_fixture

REPO = "FoundationVision/LlamaGen"
T2I_REPO = "peizesun/llamagen_t2i"
# The fixture GPT's vocabulary: the VQGAN's codebook is cut to it (codes of a
# generator must index its tokenizer's codebook one to one).
VOCAB = 512


def _run(module: str, args, cache: str, cwd) -> str:
  """`python -m vwt_jax.MODULE ARGS` with the network off and the Hub cache
  `cache`; its stdout (the test fails with its stderr otherwise)."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", f"vwt_jax.{module}", *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(cwd))
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _write_generator_config(generator, gpt_args, tokenizer_checkpoint: str,
                            tokenizer_config: str, root) -> str:
  """`generator` (a released recipe's config) at the official fixture's sizes,
  float32 as the official run, decoded by the given tokenizer; written to
  root/generator.json, whose path is returned."""
  generator.model = model_section(GPTConfig.from_official(gpt_args))
  generator.compute_dtype = "float32"
  generator.tokenizer.checkpoint = tokenizer_checkpoint
  generator.tokenizer.config = tokenizer_config
  path = str(root / "generator.json")
  with open(path, "w") as f:
    f.write(generator.to_json())
  return path


def _samples(args, labels, cache: str, tmp_path) -> dict:
  """The npz arrays of `vwt_jax.sample ARGS`, one sample per label, run offline."""
  npz = str(tmp_path / "samples.npz")
  classes = ",".join(str(int(c)) for c in labels)
  _run("sample", [*args, "--classes", classes, "--per_class", "1",
                  "--batch_size", str(len(labels)), "--npz", npz], cache, tmp_path)
  with np.load(npz) as out:
    return {k: out[k] for k in out.files}


def _save_official(state_dict, path, **extra):
  torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
              **extra}, path)


def _fixture_vq(fixtures_dir, root, vocab: int, image_size: int) -> tuple[str, str]:
  """The llamagen/ fixture VQ with its codebook cut to `vocab` rows: (its official
  `.pt` container, a tokenizer config file that describes it at `image_size`)."""
  llamagen = os.path.join(fixtures_dir, "llamagen")
  with open(os.path.join(llamagen, "vq_config.json")) as f:
    vq_meta = json.load(f)
  vq_sd = dict(torch_state.load_state_dict(os.path.join(llamagen, "vq_state_dict.npz")))
  vq_sd["quantize.embedding.weight"] = vq_sd["quantize.embedding.weight"][:vocab]
  path = root / f"vq_{vocab}.pt"
  _save_official(vq_sd, str(path))
  # The released recipe's config file with the fixture's sizes, computing in
  # float32 as the fixture's official runs did (the recipe says bfloat16).
  tokenizer = common.load_config(os.path.join(pretrained.configs_dir(), "llamagen_vq.py:vq16"))
  tokenizer.model = model_section(config_from_fixture(vq_meta), codebook_size=vocab)
  tokenizer.data.image_size = image_size
  tokenizer.compute_dtype = "float32"
  config = root / f"tokenizer_{vocab}.json"
  config.write_text(tokenizer.to_json())
  return str(path), str(config)


@pytest.fixture(scope="module")
def released(fixtures_dir, tmp_path_factory):
  """(Hub cache, generator config.json, the official generations)."""
  root = tmp_path_factory.mktemp("released")
  llamagen = os.path.join(fixtures_dir, "llamagen")
  with open(os.path.join(llamagen, "gpt_config.json")) as f:
    gpt_args = json.load(f)["model_args"]
  gpt_sd = torch_state.load_state_dict(os.path.join(llamagen, "gpt_state_dict.npz"))
  _save_official(gpt_sd, str(root / "c2i.pt"), steps=10,
                 args=argparse.Namespace(gpt_model="GPT-fixture", image_size=256))
  vq, tokenizer_config = _fixture_vq(fixtures_dir, root, VOCAB, image_size=16 * 16)
  cache = str(root / "hub")
  hub_cache(cache, REPO, {"c2i_fixture.pt": str(root / "c2i.pt"), "vq_fixture.pt": vq})

  # The generator's config as a user writes it: the released recipe's config
  # file with the fixture's sizes, in float32 as the fixture's official run.
  generator = _write_generator_config(
      common.load_config(os.path.join(pretrained.configs_dir(), "llamagen.py:B")), gpt_args,
      f"hf://{REPO}/vq_fixture.pt", tokenizer_config, root)
  with np.load(os.path.join(llamagen, "gpt_io.npz")) as io:
    official = {k: io[k] for k in ("cond_idx", "gen_greedy_cfg4")}
  return cache, generator, official


def test_greedy_samples_from_the_hub_are_the_official_generations(released, tmp_path):
  # With guidance (the unguided generation is `parity llamagen-gpt`'s, in process).
  cache, config, official = released
  out = _samples(["--config", config, "--checkpoint", f"hf://{REPO}/c2i_fixture.pt",
                  "--cfg", "4", "--top_k", "1", "--output", str(tmp_path / "samples.png")],
                 official["cond_idx"], cache, tmp_path)
  np.testing.assert_array_equal(out["codes"], official["gen_greedy_cfg4"])
  np.testing.assert_array_equal(out["arr_1"], official["cond_idx"])
  assert out["arr_0"].shape == (2, 256, 256, 3) and out["arr_0"].dtype == np.uint8
  assert os.path.getsize(tmp_path / "samples.png") > 0


@pytest.fixture(scope="module")
def released_titok(fixtures_dir, tmp_path_factory):
  """TiTok's releases are model folders (config.json + model.safetensors, as
  PyTorchModelHubMixin saves them): the fixture ImageBert and the two-stage
  TiTok it generates codes for, in a Hub cache, sampled with the official
  sampler's settings."""
  configs = pretrained.configs_dir()
  released = official_titok_releases(
      fixtures_dir, str(tmp_path_factory.mktemp("released_titok")),
      "yucornetto/tokenizer_fixture", "yucornetto/generator_fixture",
      common.load_config(os.path.join(configs, "titok.py:L-32,recipe=stage2")),
      common.load_config(os.path.join(configs, "maskgit.py:titok_l32")))
  generator = common.load_config(released.generator_config)
  settings = released.generate_kwargs
  generator.sampling.update(dict(
      num_steps=settings["num_sample_steps"], cfg_scale=settings["guidance_scale"],
      guidance_scale_pow=settings["guidance_scale_pow"],
      randomize_temperature=settings["randomize_temperature"],
      softmax_temperature_annealing=settings["softmax_temperature_annealing"]))
  with open(released.generator_config, "w") as f:
    f.write(generator.to_json())
  return released.cache, released.generator_config, released.generations


def test_titok_generator_from_the_hub_gives_the_official_generations(released_titok, tmp_path):
  # Without the randomised temperature the official MaskGIT sampler is
  # deterministic. The released L-32 schedule; `parity titok-generator` checks
  # the others in process.
  cache, config, official = released_titok
  out = _samples(["--config", config, "--config.sampling.guidance_decay=linear",
                  "--checkpoint", "hf://yucornetto/generator_fixture", "--output", ""],
                 official["condition"], cache, tmp_path)
  np.testing.assert_array_equal(out["codes"], official["generate_T0_linear"])
  # TiTok's pixel rule on the 32-px decoder output.
  assert out["arr_0"].shape == (3, 32, 32, 3) and out["arr_0"].dtype == np.uint8


def test_converted_folders_load_bit_identical_and_sample_without_the_hub(released, tmp_path):
  cache, config_path, official = released
  generator_config = common.load_config(config_path)
  runs = {"gpt": (f"hf://{REPO}/c2i_fixture.pt", config_path, str(tmp_path / "gpt")),
          "vq": (f"hf://{REPO}/vq_fixture.pt", generator_config.tokenizer.config,
                 str(tmp_path / "vq"))}
  for source, config, output_dir in runs.values():
    stdout = _run("convert", ["--config", config, "--checkpoint", source, "--output_dir",
                              output_dir], cache, tmp_path)
    assert json.loads(stdout.splitlines()[-1])["output_dir"] == output_dir
  # A second conversion into the same folder is refused before anything is read.
  with pytest.raises(cli.SettingsError, match="pass --overwrite"):
    convert.convert(generator_config, "no such file", runs["gpt"][2])

  # The folder's parameters are what converting on load gives, bit for bit.
  gpt = families.get("gpt")
  cfg = gpt.model_config(generator_config)
  with mock.patch.object(constants, "HF_HUB_CACHE", cache), \
       mock.patch.object(constants, "HF_HUB_OFFLINE", True):
    on_load = gpt.load_params(runs["gpt"][0], generator_config, cfg)
  converted = gpt.load_params(runs["gpt"][2], common.run_config(runs["gpt"][2]), cfg)
  chex.assert_trees_all_equal(converted, jax.device_get(on_load))

  # Sampling from the two folders needs neither the Hub nor the config file.
  out = _samples(["--checkpoint", runs["gpt"][2], f"--config={runs['gpt'][2]}",
                  f"--config.tokenizer.checkpoint={runs['vq'][2]}",
                  f"--config.tokenizer.config={os.path.join(runs['vq'][2], 'config.json')}",
                  "--cfg", "4", "--top_k", "1", "--output", ""],
                 official["cond_idx"], str(tmp_path / "empty"), tmp_path)
  np.testing.assert_array_equal(out["codes"], official["gen_greedy_cfg4"])


@pytest.fixture(scope="module")
def released_t2i(fixtures_dir, tmp_path_factory):
  """LlamaGen text-to-image, the official `sample_t2i.py` run on the
  llamagen_t2i_prompts/ set: (Hub cache, generator config.json, the set's
  folder, its spec, the official outputs). The Hub cache holds the t2i GPT and
  the VQ (`.pt` containers) and, as google/flan-t5-xl, the set's tiny T5
  folder: the text encoder the t2i releases name."""
  root = tmp_path_factory.mktemp("released_t2i")
  t2i = os.path.join(fixtures_dir, "llamagen_t2i_prompts")
  with open(os.path.join(t2i, "t2i_config.json")) as f:
    spec = json.load(f)
  gpt_sd = torch_state.load_state_dict(os.path.join(t2i, "t2i_state_dict.npz"))
  _save_official(gpt_sd, str(root / "t2i.pt"), steps=10,
                 args=argparse.Namespace(gpt_model="GPT-fixture", gpt_type="t2i"))
  vq, tokenizer_config = _fixture_vq(fixtures_dir, root, spec["vq"]["codebook_rows_kept"],
                                     image_size=spec["vq"]["image_size"])
  cache = str(root / "hub")
  hub_cache(cache, T2I_REPO, {"t2i_fixture.pt": str(root / "t2i.pt"), "vq_fixture.pt": vq})
  text_encoder = hub.parse(pretrained.get("flan-t5-xl").checkpoint).repo_id
  t5 = os.path.join(t2i, "t5")
  hub_cache(cache, text_encoder, {name: os.path.join(t5, name) for name in os.listdir(t5)})

  # The release's config (its text encoder and sampler settings) with the
  # fixture's sizes, in float32 as the official run.
  generator = _write_generator_config(
      pretrained.config("llamagen-t2i-xl-256"), spec["model_args"],
      f"hf://{T2I_REPO}/vq_fixture.pt", tokenizer_config, root)
  with np.load(os.path.join(t2i, "t2i_io.npz")) as io:
    official = {k: io[k] for k in io.files}
  return cache, generator, t2i, spec, official


def test_t2i_prompts_file_gives_the_official_sampler_generations(released_t2i, tmp_path):
  # The prompts go through LlamaGen's caption cleaning (they hold a URL, HTML
  # entities and tags, capitals, CJK, an emoji, hashtags and a handle: raw,
  # each would be other tokens), the release's text encoder (no encoder flag),
  # left padding, and guidance at the release's cfg 7.5, decoded greedily.
  cache, config, t2i, spec, official = released_t2i
  assert spec["sampling"]["cfg_scale"] == common.load_config(config).sampling.cfg_scale
  prompts = os.path.join(t2i, "prompts.txt")
  npz = str(tmp_path / "t2i.npz")
  _run("sample", ["--config", config, "--checkpoint", f"hf://{T2I_REPO}/t2i_fixture.pt",
                  "--captions", prompts, "--top_k", "1", "--batch_size", "4", "--npz", npz,
                  "--output", str(tmp_path / "t2i.png")], cache, tmp_path)
  with np.load(npz) as out:
    codes, images, captions = out["codes"], out["arr_0"], out["captions"]
  with open(prompts, encoding="utf-8") as f:
    assert captions.tolist() == f.read().splitlines()
  np.testing.assert_array_equal(codes, official["codes"])
  # Pixels: the official decoder output x in uint8 by LlamaGen's
  # clip(127.5 x + 128) truncated. Float32 decoders agree to ~1e-5, i.e.
  # ~1e-3 of a level after the x127.5: a pixel may be one level off only
  # where 127.5 x + 128 lies that close to an integer.
  assert images.shape == official["images"].shape and images.dtype == np.uint8
  scaled = 127.5 * official["pixels"].astype(np.float64) + 128.0
  off = images.astype(int) - official["images"]
  assert np.abs(off).max() <= 1
  assert (np.abs(scaled - np.round(scaled))[off != 0] < 1e-2).all()
  assert os.path.getsize(tmp_path / "t2i.png") > 0
