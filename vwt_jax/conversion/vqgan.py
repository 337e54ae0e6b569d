"""Official LlamaGen VQ tokenizer state dicts (`vq_ds16_c2i.pt`, ...) -> `VQModel` params."""

from typing import Any, Mapping, Union

import jax.numpy as jnp

from vwt_jax.conversion import torch_state as ts
from vwt_jax.models import layers
from vwt_jax.models.vqgan import VQGANConfig, VQModel

# A rolling window of recent code ids kept only to log usage during training.
IGNORED_KEYS = ("quantize.codebook_used",)


def _resnet(sd: ts.StateDictReader, prefix: str, in_ch: int, out_ch: int) -> dict:
  tree = {name: ts.norm(sd, f"{prefix}.{name}") for name in ("norm1", "norm2")}
  tree.update({name: ts.conv(sd, f"{prefix}.{name}") for name in ("conv1", "conv2")})
  if in_ch != out_ch:
    tree["nin_shortcut"] = ts.conv(sd, f"{prefix}.nin_shortcut")
  return tree


def _attn(sd: ts.StateDictReader, prefix: str) -> dict:
  tree = {name: ts.conv(sd, f"{prefix}.{name}") for name in ("q", "k", "v", "proj_out")}
  tree["norm"] = ts.norm(sd, f"{prefix}.norm")
  return tree


def _mid(sd: ts.StateDictReader, prefix: str, ch: int) -> dict:
  return {"mid_0": _resnet(sd, f"{prefix}.mid.0", ch, ch),
          "mid_1": _attn(sd, f"{prefix}.mid.1"),
          "mid_2": _resnet(sd, f"{prefix}.mid.2", ch, ch)}


def _ends(sd: ts.StateDictReader, prefix: str) -> dict:
  return {"conv_in": ts.conv(sd, f"{prefix}.conv_in"),
          "norm_out": ts.norm(sd, f"{prefix}.norm_out"),
          "conv_out": ts.conv(sd, f"{prefix}.conv_out")}


def _coder(sd: ts.StateDictReader, config: VQGANConfig, part: str) -> dict:
  """The encoder runs down the channel multipliers, the decoder (mid first, one
  more res block per level) back up; attention sits at the lowest resolution."""
  encoder = part == "encoder"
  tree = _ends(sd, part)
  in_ch = config.ch if encoder else config.ch * config.ch_mult[-1]
  if not encoder:
    tree.update(_mid(sd, part, in_ch))
  mults = config.ch_mult if encoder else config.ch_mult[::-1]
  attn_level, resample = (config.num_levels - 1, "downsample") if encoder else (0, "upsample")
  for level, mult in enumerate(mults):
    p, name = f"{part}.conv_blocks.{level}", f"conv_blocks_{level}"
    for j in range(config.num_res_blocks + (0 if encoder else 1)):
      tree[f"{name}_res_{j}"] = _resnet(sd, f"{p}.res.{j}", in_ch, config.ch * mult)
      in_ch = config.ch * mult
      if level == attn_level:
        tree[f"{name}_attn_{j}"] = _attn(sd, f"{p}.attn.{j}")
    if level != config.num_levels - 1:
      tree[f"{name}_{resample}"] = ts.conv(sd, f"{p}.{resample}.conv")
  if encoder:
    tree.update(_mid(sd, part, in_ch))
  return tree


def abstract_params(config: VQGANConfig) -> Any:
  """The model's parameter shapes (any image size works; 2x the factor is cheap)."""
  size = 2 * config.downsample_factor
  return layers.abstract_params(VQModel(config), jnp.zeros((1, size, size, 3), jnp.float32))


def convert_vqgan(state_dict: Mapping[str, Any], config: VQGANConfig) -> dict:
  """An official `VQModel` state dict -> `VQModel(config)` params.

  `ConversionError` lists every mismatch; the codebook is copied raw (the
  model normalises on use).
  """
  sd = ts.StateDictReader(state_dict)
  params = ts.prune_missing({
      "encoder": _coder(sd, config, "encoder"),
      "decoder": _coder(sd, config, "decoder"),
      "quant_conv": ts.conv(sd, "quant_conv"),
      "post_quant_conv": ts.conv(sd, "post_quant_conv"),
      "quantize": {"embedding": sd.get("quantize.embedding.weight")},
  })
  ts.check_params(params, abstract_params(config), sd, ignore_unused=IGNORED_KEYS)
  return ts.cast_tree(params, config.param_dtype)


def load_vqgan(path_or_state_dict: Union[str, Mapping[str, Any]],
               config: VQGANConfig) -> tuple[VQModel, dict]:
  """A checkpoint file (.pt/.bin/.safetensors/.npz, raw or {'model': sd}) or a
  state dict -> (VQModel, params)."""
  return VQModel(config), convert_vqgan(ts.as_state_dict(path_or_state_dict), config)
