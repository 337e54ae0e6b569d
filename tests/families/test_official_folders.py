"""Official TiTok model folders (config.json + weights, as PyTorchModelHubMixin
saves them): their config.json gives the model, as `from_pretrained` reads it."""

import json
import os

from helpers import hub_cache
from vwt_jax.families import common
from vwt_jax.families import pretrained

# What TiTok-S-128's released tokenizer and generator folders say about their
# models (the official inference config), keys as the official code reads them.
S128 = {
    "model": {
        "vq_model": {"codebook_size": 4096, "token_size": 12, "use_l2_norm": True,
                     "commitment_cost": 0.25, "vit_enc_model_size": "small",
                     "vit_dec_model_size": "small", "vit_enc_patch_size": 16,
                     "vit_dec_patch_size": 16, "num_latent_tokens": 128,
                     "finetune_decoder": True},
        "generator": {"model_type": "UViT", "hidden_size": 1024, "num_hidden_layers": 20,
                      "num_attention_heads": 16, "intermediate_size": 4096, "dropout": 0.1,
                      "attn_drop": 0.1, "num_steps": 64, "class_label_dropout": 0.1,
                      "image_seq_len": 128, "condition_num_classes": 1000,
                      "randomize_temperature": 2.8, "guidance_scale": 6.9,
                      "guidance_decay": "power-cosine"},
    },
    "dataset": {"preprocessing": {"crop_size": 256}},
}


def _folder(path, official):
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(official, f)
  return str(path)


def test_a_tokenizer_folder_gives_the_released_model(tmp_path):
  tokenizer = {"model": {"vq_model": S128["model"]["vq_model"]}, "dataset": S128["dataset"]}
  config = common.run_config(_folder(tmp_path / "tokenizer", tokenizer))
  expected = common.load_config(os.path.join(pretrained.configs_dir(),
                                             "titok.py:S-128,recipe=stage2"))
  assert config.family == "titok" and config.recipe == "stage2"
  # Stage 2 of our recipe trains without the commitment loss; the folder keeps
  # the official value, which only training reads.
  assert config.model.commitment_cost == 0.25
  expected.model.commitment_cost = 0.25
  assert config.model.to_dict() == expected.model.to_dict()
  assert config.data.image_size == 256


def test_a_generator_folder_gives_its_model_type_and_sampling_settings(tmp_path):
  config = common.run_config(_folder(tmp_path / "generator", S128))
  expected = common.load_config(os.path.join(pretrained.configs_dir(), "maskgit.py:titok_s128"))
  assert config.family == "maskgit"
  assert config.model.to_dict() == expected.model.to_dict()
  assert config.sampling.to_dict() == expected.sampling.to_dict()


def test_a_hub_folder_is_read_from_the_cache_and_other_configs_as_they_are(tmp_path,
                                                                        monkeypatch):
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  cache = str(tmp_path / "hub")
  source = _folder(tmp_path / "source", S128)
  hub_cache(cache, "yucornetto/generator_fixture", {"config.json": f"{source}/config.json"})
  monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  assert common.run_config("hf://yucornetto/generator_fixture").model.model_type == "UViT"
  # Any other config.json (e.g. a classifier run's) is read as it is.
  other = {"model": {"vision": {"width": 8}}, "seed": 3}
  assert common.run_config(_folder(tmp_path / "other", other)).to_dict() == other
