"""The registry of released weights: the configs it implies and what the docs say of it."""

import functools
import os
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vwt_jax import cli
from vwt_jax import families
from vwt_jax import sample
from vwt_jax.core import hub
from vwt_jax.families import common
from vwt_jax.families import pretrained
from vwt_jax.families import titok as titok_family
from vwt_jax.models import layers
from vwt_jax.models import st_llm
from vwt_jax.models.maskgit_vqgan import MaskGitVQGAN
from vwt_jax.models.t5 import T5Encoder, T5EncoderConfig
from vwt_jax.models.text_encoders import TextEncoder, TextEncoderConfig

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "pretrained.md")
# The sentence encoders of Vript-HAL, as their config.json files describe them.
SENTENCE_ENCODERS = {
    "all-minilm-l6-v2": TextEncoderConfig(),
    "all-mpnet-base-v2": TextEncoderConfig(
        family="mpnet", vocab_size=30527, hidden_size=768, num_layers=12, num_heads=12,
        intermediate_size=3072, layer_norm_eps=1e-5, max_position_embeddings=514,
        type_vocab_size=1),
}


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


def _abstract_params(release: pretrained.Release):
  """The parameter shapes of the model the release's config builds (no weights read)."""
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  if release.kind == "text encoder":
    return layers.abstract_params(T5Encoder(T5EncoderConfig.named(release.name)), ids, ids)
  if release.kind == "sentence encoder":
    return layers.abstract_params(TextEncoder(SENTENCE_ENCODERS[release.name]), ids, ids)
  if release.kind == "captioner":
    return st_llm.abstract_params(st_llm.STLLMConfig())
  if release.kind == "teacher":
    teacher = common.load_config(os.path.join(pretrained.configs_dir(), "titok.py:L-32")).teacher
    return layers.abstract_params(MaskGitVQGAN(titok_family.teacher_config(teacher)),
                                  jnp.zeros((1, 256, 256, 3)))
  config = pretrained.config(release.name)
  family = families.get(config.family)
  cfg = family.model_config(config)
  model = family.build(cfg)
  if release.kind == "generator":
    args, kwargs = family.init_args(cfg, 1)
    return layers.abstract_params(model, *args, **kwargs)
  size = config.data.image_size
  return layers.abstract_params(model, jnp.zeros((1, size, size, 3)))


@pytest.mark.parametrize("name", sorted(pretrained.RELEASES))
def test_each_release_builds_with_its_parameter_count(name):
  release = pretrained.get(name)
  assert round(_count(_abstract_params(release)) / 1e6, 1) == release.params_m
  assert hub.parse(release.checkpoint).repo_id


def test_a_generator_names_its_tokenizer_at_its_image_size():
  config = pretrained.config("llamagen-c2i-xl-384")
  assert config.family == "gpt"
  assert (config.model.block_size, config.model.vocab_size) == (24 * 24, 16384)
  assert config.tokenizer.checkpoint == "hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt"
  tokenizer = common.load_config(config.tokenizer.config)
  assert (tokenizer.family, tokenizer.data.image_size) == ("vqgan", 384)
  t2i = pretrained.config("llamagen-t2i-xl-512")
  assert common.load_config(t2i.tokenizer.config).data.image_size == 512
  assert t2i.model.block_size == 32 * 32
  titok = pretrained.config("titok-generator-s128")
  assert (titok.family, titok.tokenizer.checkpoint) == (
      "maskgit", "hf://yucornetto/tokenizer_titok_s128_imagenet")


def test_t2i_releases_imply_their_text_encoder_and_the_official_sampler_settings():
  config = pretrained.config("llamagen-t2i-xl-256")
  assert dict(config.caption_encoder) == {
      "kind": "t5", "model_dir": pretrained.get("flan-t5-xl").checkpoint}
  # As the official sample_t2i.py samples.
  assert {k: config.sampling[k] for k in ("cfg_scale", "cfg_interval", "temperature", "top_k",
                                          "top_p")} == {
      "cfg_scale": 7.5, "cfg_interval": -1, "temperature": 1.0, "top_k": 1000, "top_p": 1.0}
  # The caption encoder `vwt_jax.sample` loads: FLAN-T5-XL for the GPT's 120 caption
  # tokens, from the Hub unless a folder is given; another kind replaces it.
  describe = functools.partial(sample.caption_encoder_description, config, None,
                               prefix_length=config.model.cls_token_num)
  assert describe() == {"kind": "t5", "model_dir": "hf://google/flan-t5-xl", "max_length": 120}
  assert describe(model_dir="/models/flan-t5-xl")["model_dir"] == "/models/flan-t5-xl"
  assert describe(kind="t5", max_length=64)["max_length"] == 64
  assert describe(kind="minilm") == {"kind": "minilm", "model_dir": "", "max_length": 120}
  del config["caption_encoder"]
  with pytest.raises(cli.SettingsError, match="records no caption encoder: name one"):
    sample.caption_encoder_description(config, None, prefix_length=120)
  assert "caption_encoder" not in pretrained.config("llamagen-c2i-xl-384")
  assert "caption_encoder" in pretrained.config("llamagen-t2i-xl-512")


def test_unknown_names_and_configless_releases_are_explained():
  with pytest.raises(KeyError, match="did you mean llamagen-c2i-xl-384"):
    pretrained.get("llamagen-c2i-xl-348")
  with pytest.raises(ValueError, match="flan-t5-xl is a text encoder"):
    pretrained.config("flan-t5-xl")


def test_the_docs_table_lists_every_release_as_the_registry_does():
  with open(DOCS, encoding="utf-8") as f:
    rows = [line for line in f if line.startswith("| `")]
  table = {}
  for row in rows:
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    table[cells[0].strip("`")] = cells
  assert set(table) == set(pretrained.RELEASES)
  for name, release in pretrained.RELEASES.items():
    cells = table[name]
    assert f"`{release.checkpoint}`" in cells, cells
    assert re.sub(r"[^0-9.]", "", cells[-2]) == f"{release.params_m:.1f}", cells
    assert cells[-1] == release.licence, cells


def test_a_command_offline_without_the_weights_says_what_to_fetch(tmp_path):
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.sample", "--pretrained", "llamagen-c2i-xl-384",
       "--classes", "1,2", "--output", str(tmp_path / "samples.png")],
      env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  assert result.returncode != 0
  # The tokenizer the registry pairs with the generator is read first.
  assert "`hf download FoundationVision/LlamaGen vq_ds16_c2i.pt`" in result.stderr
  assert not (tmp_path / "samples.png").exists()


def test_an_install_that_is_not_a_clone_finds_the_configs(tmp_path):
  # A wheel (what `pip install git+URL` builds) carries configs/ as data files;
  # installed under another prefix, the package finds them there.
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  source, wheels, prefix = tmp_path / "source", tmp_path / "wheels", tmp_path / "prefix"
  # Built from a copy: a build leaves build/ and egg-info folders behind.
  for name in ("vwt_jax", "configs"):
    shutil.copytree(os.path.join(repo, name), source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("setup.py", "README.md"):
    shutil.copy(os.path.join(repo, name), source / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
  subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                  str(source)], check=True, cwd=tmp_path)
  # --ignore-installed: else pip removes the vwt_jax of the running environment.
  subprocess.run([*pip, "install", "--no-deps", "--ignore-installed", "--prefix", str(prefix),
                  *map(str, wheels.iterdir())], check=True, cwd=tmp_path)
  site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
      "site-packages"
  result = subprocess.run(
      [sys.executable, "-c", "from vwt_jax.families import pretrained; "
       "print(pretrained.configs_dir()); "
       "print(pretrained.config('llamagen-c2i-xl-384').model.block_size)"],
      env=dict(os.environ, PYTHONPATH=str(site)), cwd=tmp_path, capture_output=True,
      text=True, check=True)
  assert result.stdout.split() == [str(prefix / "share" / "vwt_jax" / "configs"), "576"]
