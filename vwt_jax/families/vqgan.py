"""LlamaGen's VQGAN tokenizer: its config, module, weights and images <-> codes."""

from typing import Any

import jax.numpy as jnp
import ml_collections

from vwt_jax.conversion import vqgan as vqgan_conversion
from vwt_jax.core import images as images_lib
from vwt_jax.data import transforms
from vwt_jax.families import common
from vwt_jax.models import vqgan as vqgan_lib

TRAINER = "vwt_jax.training.vqgan"
# Samples become pixels as in LlamaGen's samplers: clip(127.5 x + 128, 0, 255), truncated.
PICTURE_PIXELS = images_lib.quantize
# User pictures are cropped as LlamaGen evaluates its tokenizers: ADM's center_crop_arr.
EVAL_CROP = transforms.center_crop_arr


def model_config(config: ml_collections.ConfigDict) -> vqgan_lib.VQGANConfig:
  return common.from_fields(vqgan_lib.VQGANConfig, config.model, **common.dtypes(config))


def build(cfg: vqgan_lib.VQGANConfig) -> vqgan_lib.VQModel:
  return vqgan_lib.VQModel(cfg)


def load_params(path: str, config: ml_collections.ConfigDict) -> Any:
  """Parameters from our run (a run or step folder) or an official state dict
  (`vq_ds16_c2i.pt`: {'model': sd, ...}, or any raw state dict file)."""
  if common.is_run(path):
    return common.run_params(path, config)
  return vqgan_conversion.convert_vqgan(common.official_state_dict(path), model_config(config))


def reconstruct(model: vqgan_lib.VQModel, params: Any, images):
  """(reconstructions in [-1, 1], codes int32 (B, h*w))."""
  recon, aux = model.apply({"params": params}, images)
  return jnp.clip(recon, -1.0, 1.0), aux["indices"].astype(jnp.int32)


def tokenizer_fns(config: ml_collections.ConfigDict, checkpoint: str):
  """(params, encode, decode, code shape, vocabulary) for `tokenizer.load_tokenizer`."""
  cfg = model_config(config)
  model = build(cfg)
  grid = config.data.image_size // cfg.downsample_factor

  def encode(params, images):
    _, aux = model.apply({"params": params}, images, method=vqgan_lib.VQModel.encode)
    return aux["indices"].astype(jnp.int32)

  def decode(params, codes):
    return model.apply({"params": params}, codes, method=vqgan_lib.VQModel.decode_code)

  return load_params(checkpoint, config), encode, decode, (grid, grid), cfg.codebook_size
