"""TiTok's MaskGIT generators (ImageBert / UViTBert): config, weights, sampling."""

import os
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import ml_collections
import numpy as np

from vwt_jax.config_common import model_section
from vwt_jax.conversion import maskgit_generator as maskgit_conversion
from vwt_jax.families import common
from vwt_jax.families import pretrained
from vwt_jax.models import maskgit_generator
from vwt_jax.sampling import maskgit as maskgit_sampling

TRAINER = "vwt_jax.training.generator"
DATASET_FIELDS = ("image_seq_len", "codebook_size", "condition_num_classes")


def model_config(config: ml_collections.ConfigDict,
                 metadata=None) -> maskgit_generator.MaskGitGeneratorConfig:
  """`MaskGitGeneratorConfig(**config.model)`, unset sizes from the code dataset
  (or from the tokenizer alone, which knows no class count)."""
  fields = dict(config.model)
  if metadata is not None:
    given = dict(image_seq_len=int(np.prod(metadata.code_shape)),
                 codebook_size=int(metadata.vocab_size))
    if metadata.num_classes:
      given["condition_num_classes"] = int(metadata.num_classes)
    common.fill_from_dataset(fields, given, config.data.dir)
  missing = [k for k in DATASET_FIELDS if not fields[k]]
  if missing:
    raise ValueError(f"config.model: {missing} unknown; set them or config.data.dir")
  return common.from_fields(maskgit_generator.MaskGitGeneratorConfig, fields,
                            **common.dtypes(config))


def config_from_official(official: Mapping[str, Any],
                         base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """Our config for an official MaskGIT generator folder, from its config.json
  (`model.generator`, `model.vq_model.codebook_size`): the model, and the
  sampling settings TiTok's sampling script reads from it, in `base` (by
  default the L-32 generator's; its model type where the config names none)."""
  if base is None:
    base = common.load_config(os.path.join(pretrained.configs_dir(), "maskgit.py:titok_l32"))
  base.model = model_section(maskgit_generator.MaskGitGeneratorConfig.from_official(
      official, base.model.model_type))
  gen = official["model"]["generator"]
  for setting, key in (("num_steps", "num_steps"), ("cfg_scale", "guidance_scale"),
                       ("guidance_decay", "guidance_decay"),
                       ("randomize_temperature", "randomize_temperature")):
    if key in gen:
      base.sampling[setting] = type(base.sampling[setting])(gen[key])
  return base


def build(cfg: maskgit_generator.MaskGitGeneratorConfig):
  return maskgit_generator.build_generator(cfg)


def init_args(cfg: maskgit_generator.MaskGitGeneratorConfig, batch: int):
  return ((jnp.zeros((batch, cfg.image_seq_len), jnp.int32), jnp.zeros((batch,), jnp.int32)),
          {"train": False})


def load_params(path: str, config: ml_collections.ConfigDict,
                cfg: maskgit_generator.MaskGitGeneratorConfig) -> Any:
  """Parameters from our run or an official generator state dict."""
  if common.is_run(path):
    return common.run_params(path, config)
  return maskgit_conversion.convert_generator(common.official_state_dict(path), cfg)


def sizes(cfg) -> tuple[int, int, int, bool]:
  """(codes per sample, code vocabulary, classes, conditioned on a class label)."""
  return cfg.image_seq_len, cfg.codebook_size, cfg.condition_num_classes, True


def description(config: ml_collections.ConfigDict, cfg) -> str:
  return f"MaskGIT {cfg.model_type} generator {config.variant}"


def sampling_rules(cfg) -> dict[str, tuple[Callable[[Any], bool], str]]:
  """Each setting the unmasking loop reads: (test of a valid value, what is valid)."""
  del cfg
  decays = maskgit_sampling.GUIDANCE_DECAYS
  return {
      "num_steps": (lambda v: v >= 1, ">= 1 unmasking steps"),
      "cfg_scale": (lambda v: v >= 0, "a guidance scale >= 0"),
      "guidance_decay": (lambda v: v in decays, f"one of {decays}"),
      "guidance_scale_pow": (lambda v: v > 0, "an exponent > 0"),
      "randomize_temperature": (lambda v: v >= 0, "a noise scale >= 0"),
      "softmax_temperature_annealing": (lambda v: isinstance(v, bool), "True or False"),
  }


def sample(model, params: Any, labels, rng, settings: dict, mesh, rules, emb_mask=None):
  """Codes for `labels` by confidence-based unmasking."""
  del mesh, rules, emb_mask  # The loop runs on whatever sharding `labels` has.
  return maskgit_sampling.generate(
      model, params, labels, rng=rng, num_steps=settings["num_steps"],
      guidance_scale=settings["cfg_scale"], guidance_decay=settings["guidance_decay"],
      guidance_scale_pow=settings["guidance_scale_pow"],
      randomize_temperature=settings["randomize_temperature"],
      softmax_temperature_annealing=settings["softmax_temperature_annealing"])
