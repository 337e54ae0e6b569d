"""TiTok (1D tokenizer): its config, module, weights and images <-> codes."""

import os
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections

from vwt_jax.config_common import model_section
from vwt_jax.conversion import titok as titok_conversion
from vwt_jax.core import images as images_lib
from vwt_jax.data import transforms
from vwt_jax.families import common
from vwt_jax.families import pretrained
from vwt_jax.models import maskgit_vqgan
from vwt_jax.models import titok as titok_lib

TRAINER = "vwt_jax.training.titok"
# Samples become pixels as in TiTok's sampler: clamp to [0, 1], times 255, truncated.
PICTURE_PIXELS = images_lib.to_uint8
# User pictures are cropped as TiTok's evaluation: torchvision Resize + CenterCrop.
EVAL_CROP = transforms.resize_center_crop


def model_config(config: ml_collections.ConfigDict) -> titok_lib.TiTokConfig:
  common.check_same(config, "image_size", "image_size")
  return common.from_fields(titok_lib.TiTokConfig, config.model, **common.dtypes(config))


def build(cfg: titok_lib.TiTokConfig) -> titok_lib.TiTok:
  return titok_lib.TiTok(cfg)


def load_params(path: str, config: ml_collections.ConfigDict) -> Any:
  """Parameters from our run (a run or step folder) or an official state dict file."""
  if common.is_run(path):
    return common.run_params(path, config)
  return titok_conversion.convert_titok(common.official_state_dict(path), model_config(config))


def config_from_official(official: Mapping[str, Any],
                         base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """Our config for an official TiTok model folder, from its config.json (the
  OmegaConf dict that `TiTok.from_pretrained` builds the model from): its
  model in `base`, by default the recipe of its kind of release."""
  model = titok_lib.TiTokConfig.from_official(official)
  if base is None:
    spec = ("titok.py:L-32,recipe=stage2" if model.is_legacy else
            "titok.py:BL-64-VAE" if model.quantize_mode == "vae" else "titok.py:BL-64-VQ")
    base = common.load_config(os.path.join(pretrained.configs_dir(), spec))
  base.model = model_section(model)
  base.data.image_size = model.image_size
  return base


def teacher_config(section: ml_collections.ConfigDict) -> maskgit_vqgan.MaskGitVQGANConfig:
  """The MaskGIT-VQGAN fields of `config.teacher` (all but its `checkpoint`)."""
  fields = {k: v for k, v in section.items() if k != "checkpoint"}
  return common.from_fields(maskgit_vqgan.MaskGitVQGANConfig, fields, "config.teacher")


def load_vqgan(section: ml_collections.ConfigDict, image_size: int
               ) -> tuple[maskgit_vqgan.MaskGitVQGANConfig, Any]:
  """The MaskGIT-VQGAN of `config.teacher` (`checkpoint` + the model's fields):
  stage 1's proxy-code teacher and stage 2's initial pixel decoder."""
  cfg = teacher_config(section)
  state_dict = common.official_state_dict(section.checkpoint)
  return cfg, titok_conversion.convert_maskgit_vqgan(state_dict, cfg, image_size)


def reconstruct(model: titok_lib.TiTok, params: Any, images):
  """(reconstructions in [-1, 1], the codes int32 (B, N), or None for a VAE)."""
  recon, aux = model.apply({"params": params}, images)
  codes = aux["indices"].astype(jnp.int32) if "indices" in aux else None
  return jnp.clip(recon, -1.0, 1.0), codes


def tokenizer_fns(config: ml_collections.ConfigDict, checkpoint: str):
  """(params, encode, decode, code shape, vocabulary) for `tokenizer.load_tokenizer`."""
  cfg = model_config(config)
  if cfg.quantize_mode != "vq":
    raise ValueError(f"tokenizer {checkpoint}: a TiTok-VAE has continuous latents, "
                     "no discrete codes for a generator")
  model = build(cfg)

  def encode(params, images):
    _, aux = model.apply({"params": params}, images, method=titok_lib.TiTok.encode)
    return aux["indices"].astype(jnp.int32)

  def decode(params, codes):
    images, _ = model.apply({"params": params}, codes, method=titok_lib.TiTok.decode_tokens)
    if images is None:
      raise ValueError(f"tokenizer {checkpoint}: a stage-1 TiTok has no pixel decoder")
    return images

  params = load_params(checkpoint, config)
  return params, encode, decode, (cfg.num_latent_tokens,), cfg.codebook_size
