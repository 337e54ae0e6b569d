"""Official TiTok / MaskGIT-VQGAN PyTorch state dicts -> `vwt_jax` params."""

from typing import Any, Mapping, Optional, Union

import jax.numpy as jnp

from vwt_jax.conversion import torch_state as ts
from vwt_jax.models import layers
from vwt_jax.models.maskgit_vqgan import MaskGitVQGAN, MaskGitVQGANConfig
from vwt_jax.models.titok import TiTok, TiTokConfig


def _resnet_block(sd: ts.StateDictReader, prefix: str) -> dict:
  tree = {"norm1": ts.norm(sd, f"{prefix}.norm1"), "norm2": ts.norm(sd, f"{prefix}.norm2"),
          "conv1": ts.conv(sd, f"{prefix}.conv1", bias=False),
          "conv2": ts.conv(sd, f"{prefix}.conv2", bias=False)}
  if f"{prefix}.nin_shortcut.weight" in sd:
    tree["nin_shortcut"] = ts.conv(sd, f"{prefix}.nin_shortcut", bias=False)
  return tree


def convert_maskgit_decoder(sd: ts.StateDictReader, prefix: str,
                            config: MaskGitVQGANConfig) -> dict:
  """Official `maskgit_vqgan.Decoder` under `prefix` -> our `Decoder` params."""
  tree = {"conv_in": ts.conv(sd, f"{prefix}.conv_in"),
          "norm_out": ts.norm(sd, f"{prefix}.norm_out"),
          "conv_out": ts.conv(sd, f"{prefix}.conv_out")}
  for j in range(config.num_res_blocks):
    tree[f"mid_{j}"] = _resnet_block(sd, f"{prefix}.mid.{j}")
  for level in range(config.num_resolutions):
    for j in range(config.num_res_blocks):
      tree[f"up_{level}_block_{j}"] = _resnet_block(sd, f"{prefix}.up.{level}.block.{j}")
    if level != 0:
      tree[f"up_{level}_upsample_conv"] = ts.conv(sd, f"{prefix}.up.{level}.upsample_conv")
  return tree


def convert_maskgit_encoder(sd: ts.StateDictReader, prefix: str,
                            config: MaskGitVQGANConfig) -> dict:
  """Official `maskgit_vqgan.Encoder` under `prefix` -> our `Encoder` params."""
  tree = {"conv_in": ts.conv(sd, f"{prefix}.conv_in", bias=False),
          "norm_out": ts.norm(sd, f"{prefix}.norm_out"),
          "conv_out": ts.conv(sd, f"{prefix}.conv_out")}
  for level in range(config.num_resolutions):
    for j in range(config.num_res_blocks):
      tree[f"down_{level}_block_{j}"] = _resnet_block(sd, f"{prefix}.down.{level}.block.{j}")
  for j in range(config.num_res_blocks):
    tree[f"mid_{j}"] = _resnet_block(sd, f"{prefix}.mid.{j}")
  return tree


def _vit_common(sd: ts.StateDictReader, prefix: str, depth: int, heads: int) -> dict:
  tree = {name: sd.get(f"{prefix}.{name}") for name in
          ("class_embedding", "positional_embedding", "latent_token_positional_embedding")}
  tree.update({name: ts.norm(sd, f"{prefix}.{name}") for name in ("ln_pre", "ln_post")})
  for i in range(depth):
    p = f"{prefix}.transformer.{i}"
    tree[f"transformer_{i}"] = {
        "ln_1": ts.norm(sd, f"{p}.ln_1"), "ln_2": ts.norm(sd, f"{p}.ln_2"),
        "attn": ts.multihead_attention(sd, f"{p}.attn", heads),
        "mlp": {"c_fc": ts.linear(sd, f"{p}.mlp.c_fc"),
                "c_proj": ts.linear(sd, f"{p}.mlp.c_proj")},
    }
  return tree


def convert_titok(state_dict: Mapping[str, Any], config: TiTokConfig) -> dict:
  """An official TiTok state dict -> `TiTok(config)` params in `config.param_dtype`.

  Raises `ConversionError` listing every mismatch (`torch_state.check_params`).
  """
  sd = ts.StateDictReader(state_dict)
  enc = _vit_common(sd, "encoder", config.enc_depth, config.enc_heads)
  enc["patch_embed"] = ts.conv(sd, "encoder.patch_embed")
  enc["conv_out"] = ts.conv1x1_as_linear(sd, "encoder.conv_out")
  dec = _vit_common(sd, "decoder", config.dec_depth, config.dec_heads)
  dec["decoder_embed"] = ts.linear(sd, "decoder.decoder_embed")
  dec["mask_token"] = sd.get("decoder.mask_token")
  dec["ffn_0"] = ts.conv1x1_as_linear(sd, "decoder.ffn.0")
  if config.is_legacy:
    dec["ffn_2"] = ts.conv1x1_as_linear(sd, "decoder.ffn.2")
  else:
    dec["conv_out"] = ts.conv(sd, "decoder.conv_out")
  params = {"encoder": enc, "decoder": dec, "latent_tokens": sd.get("latent_tokens")}
  if config.quantize_mode == "vq":
    params["quantize"] = {"embedding": sd.get("quantize.embedding.weight")}
  if config.finetune_decoder:
    params["pixel_quantize"] = {"embedding": sd.get("pixel_quantize.embedding.weight")}
    params["pixel_decoder"] = convert_maskgit_decoder(sd, "pixel_decoder", config.pixel_decoder)
  params = ts.prune_missing(params)
  size = config.image_size
  expected = layers.abstract_params(TiTok(config), jnp.zeros((1, size, size, 3), jnp.float32))
  ts.check_params(params, expected, sd)
  return ts.cast_tree(params, config.param_dtype)


def convert_maskgit_vqgan(state_dict: Mapping[str, Any],
                          config: MaskGitVQGANConfig = MaskGitVQGANConfig(),
                          image_size: int = 256) -> dict:
  """Official `maskgit-vqgan-imagenet-f16-256.bin` -> `MaskGitVQGAN(config)` params."""
  sd = ts.StateDictReader(state_dict)
  params = {"encoder": convert_maskgit_encoder(sd, "encoder", config),
            "decoder": convert_maskgit_decoder(sd, "decoder", config),
            "quantize": {"embedding": sd.get("quantize.embedding.weight")}}
  params = ts.prune_missing(params)
  expected = layers.abstract_params(MaskGitVQGAN(config),
                            jnp.zeros((1, image_size, image_size, 3), jnp.float32))
  ts.check_params(params, expected, sd)
  return ts.cast_tree(params, jnp.float32)


def load_titok(path_or_state_dict: Union[str, Mapping[str, Any]],
               official_config: Union[TiTokConfig, Mapping[str, Any]],
               sizes: Optional[Mapping[str, Any]] = None,
               pixel_decoder: Optional[Mapping[str, Any]] = None,
               **overrides) -> tuple[TiTok, dict]:
  """Loads a checkpoint (path or state dict) -> (TiTok module, params).

  `official_config` is either a `TiTokConfig` or the official OmegaConf dict
  (then `sizes`, `pixel_decoder` and `overrides` go to `TiTokConfig.from_official`).
  """
  config = (official_config if isinstance(official_config, TiTokConfig)
            else TiTokConfig.from_official(official_config, sizes, pixel_decoder, **overrides))
  return TiTok(config), convert_titok(ts.as_state_dict(path_or_state_dict), config)
