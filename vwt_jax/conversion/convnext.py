"""torchvision ConvNeXt state dict -> `vwt_jax.models.convnext.ConvNeXt` params.

torchvision layout: `features.0` = stem (conv 4x4/4, LayerNorm2d);
`features.{2s+1}.{i}` = CNBlocks of stage s (`block.0` dwconv, `block.2` LN,
`block.3` / `block.5` Linears, `layer_scale` (C,1,1)); `features.{2s}` =
downsample (LayerNorm2d, conv 2x2/2) before stage s >= 1; `classifier.0` LN,
`classifier.2` Linear.
"""

from typing import Any, Mapping, Union

import jax
import jax.numpy as jnp

from vwt_jax.conversion import torch_state as ts
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
  """Converts a torchvision ConvNeXt state dict for `ConvNeXt(config)`.

  Returns float32 params. Raises `ConversionError` listing every missing /
  unexpected key and shape mismatch.
  """
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
  expected = jax.eval_shape(ConvNeXt(config).init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3), jnp.float32))["params"]
  ts.check_params(params, expected, sd)
  return ts.cast_tree(params, jnp.float32)


def load_convnext(path_or_state_dict: Union[str, Mapping[str, Any]],
                  config: ConvNeXtConfig = CONVNEXT_SMALL) -> dict:
  """Reads a torchvision ConvNeXt checkpoint (path or state dict) as params."""
  state_dict = (ts.load_state_dict(path_or_state_dict)
                if isinstance(path_or_state_dict, str) else path_or_state_dict)
  return convert_convnext(state_dict, config)
