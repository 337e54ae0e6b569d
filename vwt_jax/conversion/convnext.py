"""torchvision ConvNeXt state dict -> `vwt_jax.models.convnext.ConvNeXt` params.

torchvision keeps the stem in `features.0`, stage s's blocks in
`features.{2s+1}` and the downsampling before stage s >= 1 in `features.{2s}`.
"""

from typing import Any, Mapping, Union

import jax.numpy as jnp

from vwt_jax.conversion import torch_state as ts
from vwt_jax.models import layers
from vwt_jax.models.convnext import CONVNEXT_SMALL, ConvNeXt, ConvNeXtConfig


def _block(sd: ts.StateDictReader, prefix: str) -> dict:
  tree = {"dwconv": ts.conv(sd, f"{prefix}.block.0"), "norm": ts.norm(sd, f"{prefix}.block.2"),
          "fc1": ts.linear(sd, f"{prefix}.block.3"), "fc2": ts.linear(sd, f"{prefix}.block.5")}
  gamma = sd.get(f"{prefix}.layer_scale")
  if gamma is not None:
    tree["layer_scale"] = gamma.reshape(-1)
  return tree


def convert_convnext(state_dict: Mapping[str, Any],
                     config: ConvNeXtConfig = CONVNEXT_SMALL) -> dict:
  """Float32 `ConvNeXt(config)` params; `ConversionError` lists every mismatch."""
  sd = ts.StateDictReader(state_dict)
  params = {"stem_conv": ts.conv(sd, "features.0.0"), "stem_norm": ts.norm(sd, "features.0.1"),
            "head_norm": ts.norm(sd, "classifier.0"), "head": ts.linear(sd, "classifier.2")}
  for stage, depth in enumerate(config.depths):
    if stage > 0:
      params[f"down_{stage}_norm"] = ts.norm(sd, f"features.{2 * stage}.0")
      params[f"down_{stage}_conv"] = ts.conv(sd, f"features.{2 * stage}.1")
    for i in range(depth):
      params[f"stage_{stage}_block_{i}"] = _block(sd, f"features.{2 * stage + 1}.{i}")
  # The stem stride is 4 and each later stage halves: 32 px reach a 1x1 map.
  expected = layers.abstract_params(ConvNeXt(config), jnp.zeros((1, 32, 32, 3), jnp.float32))
  ts.check_params(params, expected, sd)
  return ts.cast_tree(params, jnp.float32)


def load_convnext(path_or_state_dict: Union[str, Mapping[str, Any]],
                  config: ConvNeXtConfig = CONVNEXT_SMALL) -> dict:
  """Reads a torchvision ConvNeXt checkpoint (path or state dict) as params."""
  return convert_convnext(ts.as_state_dict(path_or_state_dict), config)
