"""torchvision ConvNeXt state dict -> `vwt_jax.models.convnext.ConvNeXt` params.

torchvision layout: `features.0` = stem (conv 4x4/4, LayerNorm2d);
`features.{2s+1}.{i}` = CNBlocks of stage s (`block.0` dwconv, `block.2` LN,
`block.3` / `block.5` Linears, `layer_scale`); `features.{2s}` = downsample
(LayerNorm2d, conv 2x2/2) before stage s >= 1; `classifier.0` LN, `classifier.2`
Linear.
"""

from typing import Any, Callable, Mapping

import numpy as np

from vwt_jax.conversion.torch_state import load_state_dict
from vwt_jax.models.convnext import CONVNEXT_SMALL, ConvNeXtConfig


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _linear_kernel(w: np.ndarray) -> np.ndarray:
  return w.T  # (out, in) -> (in, out)


def _identity(w: np.ndarray) -> np.ndarray:
  return w


def _per_channel(w: np.ndarray) -> np.ndarray:
  return w.reshape(-1)  # layer_scale is stored as (C, 1, 1)


# (torch key, flax param path, transform, torch shape)
_Entry = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray], tuple[int, ...]]


def _layer_norm(prefix: str, path: tuple[str, ...], dim: int) -> list[_Entry]:
  return [(f"{prefix}.weight", path + ("scale",), _identity, (dim,)),
          (f"{prefix}.bias", path + ("bias",), _identity, (dim,))]


def _weight_bias(prefix: str, path: tuple[str, ...], transform, shape) -> list[_Entry]:
  return [(f"{prefix}.weight", path + ("kernel",), transform, shape),
          (f"{prefix}.bias", path + ("bias",), _identity, shape[:1])]


def _entries(cfg: ConvNeXtConfig) -> list[_Entry]:
  d0 = cfg.dims[0]
  out = _weight_bias("features.0.0", ("stem_conv",), _conv_kernel, (d0, 3, 4, 4))
  out += _layer_norm("features.0.1", ("stem_norm",), d0)
  for s, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
    if s > 0:
      prev = cfg.dims[s - 1]
      out += _layer_norm(f"features.{2 * s}.0", (f"down_{s}_norm",), prev)
      out += _weight_bias(f"features.{2 * s}.1", (f"down_{s}_conv",), _conv_kernel,
                          (dim, prev, 2, 2))
    for i in range(depth):
      t = f"features.{2 * s + 1}.{i}"
      f = (f"stage_{s}_block_{i}",)
      out += _weight_bias(f"{t}.block.0", f + ("dwconv",), _conv_kernel, (dim, 1, 7, 7))
      out += _layer_norm(f"{t}.block.2", f + ("norm",), dim)
      out += _weight_bias(f"{t}.block.3", f + ("fc1",), _linear_kernel, (4 * dim, dim))
      out += _weight_bias(f"{t}.block.5", f + ("fc2",), _linear_kernel, (dim, 4 * dim))
      out.append((f"{t}.layer_scale", f + ("layer_scale",), _per_channel, (dim, 1, 1)))
  out += _layer_norm("classifier.0", ("head_norm",), cfg.dims[-1])
  out += _weight_bias("classifier.2", ("head",), _linear_kernel,
                      (cfg.num_classes, cfg.dims[-1]))
  return out


def convert_convnext(state_dict: Mapping[str, np.ndarray],
                     config: ConvNeXtConfig = CONVNEXT_SMALL) -> dict[str, Any]:
  """Maps a torchvision ConvNeXt state dict onto our params (float32 numpy).

  Raises:
    ValueError: listing every missing key, unexpected key and shape mismatch.
  """
  entries = _entries(config)
  expected = {key for key, *_ in entries}
  missing = sorted(expected - set(state_dict))
  unexpected = sorted(set(state_dict) - expected)
  mismatched = [f"{key}: got {tuple(np.shape(state_dict[key]))}, want {shape}"
                for key, _, _, shape in entries
                if key in state_dict and tuple(np.shape(state_dict[key])) != shape]
  if missing or unexpected or mismatched:
    raise ValueError(
        f"torchvision ConvNeXt state dict does not match {config}:\n"
        f"  missing ({len(missing)}): {missing}\n"
        f"  unexpected ({len(unexpected)}): {unexpected}\n"
        f"  shape mismatches ({len(mismatched)}): {mismatched}")
  params: dict[str, Any] = {}
  for key, path, transform, _ in entries:
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(transform(np.asarray(state_dict[key], np.float32)))
  return params


def load_convnext(path: str, config: ConvNeXtConfig = CONVNEXT_SMALL) -> dict[str, Any]:
  """Reads a torchvision ConvNeXt checkpoint (.pth/.bin/.safetensors/.npz) as params."""
  return convert_convnext(load_state_dict(path), config)
