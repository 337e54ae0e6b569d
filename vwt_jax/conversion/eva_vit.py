"""Official EVA ViT-g (+ ln_vision) weights -> `eva_vit.EvaViT` params, numpy only.

Reads the state dict of a BLIP-2-style model (`blip2.py`'s `visual_encoder`
and `ln_vision` attributes): `eva_vit.py` `VisionTransformer` keys under
`prefix` (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.{norm1,
attn.qkv, attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2}`) and
the LayerNorm under `ln_vision_prefix`. In the released Vriptor checkpoint both
sit under `model.stllm_model.` (`VRIPTOR_PREFIX`, `VRIPTOR_LN_VISION_PREFIX`).

Only keys under the two prefixes are read; the rest of a full checkpoint (the
Q-Former, query tokens, the LLM) belongs to other converters. Under them
nothing is left unread on purpose: the model `create_eva_vit_g` builds has no
final norm, head, layer scale or relative-position tables, so every key it
saves is a weight of the features.

The fused `attn.qkv.weight` rows [q; k; v] are split into per-head
query/key/value kernels; `q_bias` and `v_bias` become the query and value
biases; keys get none, as the official code fills the middle third of the fused
bias with zeros.

`pos_embed` of another grid than the config's is resized as
`eva_vit.py` `interpolate_pos_embed` does when `create_eva_vit_g` loads a
checkpoint at another `img_size`: the CLS position is kept and the patch grid
resampled with torch's bicubic `F.interpolate` (a = -0.75,
align_corners=False), reproduced here in numpy.
"""

import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.eva_vit import EvaViTConfig, abstract_params

VRIPTOR_PREFIX = "model.stllm_model.visual_encoder."
VRIPTOR_LN_VISION_PREFIX = "model.stllm_model.ln_vision."

# torch's bicubic convolution coefficient (`upsample_bicubic2d`).
_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """(n,) fractional offsets -> (n, 4) weights of the source samples at -1, 0, 1, 2."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of torch's 1-D bicubic resize (align_corners=False, borders clamped)."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(src)
  taps = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_size - 1)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size)[:, None], taps), _cubic_weights(src - base))
  return matrix


def interpolate_pos_embed(pos_embed: np.ndarray, grid_size: int) -> np.ndarray:
  """(1 + g*g, D) positions -> (1 + grid_size**2, D): CLS kept, the g x g grid resized."""
  pos_embed = np.asarray(pos_embed, np.float64)
  old = math.isqrt(pos_embed.shape[0] - 1)
  grid = pos_embed[1:].reshape(old, old, -1)
  resize = _bicubic_matrix(old, grid_size)
  grid = np.einsum("ih,jw,hwd->ijd", resize, resize, grid)
  return np.concatenate([pos_embed[:1], grid.reshape(grid_size ** 2, -1)]).astype(np.float32)


def _pos_embed(sd: ts.StateDictReader, key: str, config: EvaViTConfig):
  """(1, N, D) -> (N, D), resized when N is another square grid + CLS than the config's."""
  pos = sd.get(key, ndim=3)
  if pos is None:
    return None
  pos, tokens = pos[0], pos.shape[1]
  if tokens != config.num_tokens and tokens > 1 and math.isqrt(tokens - 1) ** 2 == tokens - 1:
    return interpolate_pos_embed(pos, config.grid_size)
  return pos


def _attention(sd: ts.StateDictReader, prefix: str, config: EvaViTConfig) -> dict:
  d, h, hd = config.width, config.num_heads, config.head_dim
  qkv = sd.get(f"{prefix}.qkv.weight", ndim=2)
  if qkv is not None and qkv.shape[0] % 3:
    raise ts.ConversionError(f"{sd.source}: {prefix}.qkv.weight has shape {qkv.shape}; "
                             "expected (3 * width, width), the rows [q; k; v]")
  rows = None if qkv is None else np.split(qkv, 3)
  tree = {}
  for i, (name, bias) in enumerate((("query", "q_bias"), ("key", None), ("value", "v_bias"))):
    tree[name] = {
        "kernel": None if rows is None else ts.reshape_checked(rows[i].T, (d, h, hd)),
        "bias": ts.reshape_checked(sd.get(f"{prefix}.{bias}"), (h, hd)) if bias else None,
    }
  tree["out"] = ts.heads_linear(sd, f"{prefix}.proj", d, h, hd, out=True)
  return tree


def convert_state_dict(state_dict: Mapping[str, Any], config: EvaViTConfig,
                       prefix: str = "visual_encoder.",
                       ln_vision_prefix: str = "ln_vision.") -> dict:
  """Official weights (numpy or anything `np.asarray` takes) -> float32 `EvaViT(config)` params.

  Raises `ConversionError` listing every missing or unexpected key and every
  shape mismatch (`torch_state.check_params`).
  """
  sd = ts.StateDictReader(ts.StateDict(
      {k: v for k, v in state_dict.items()
       if k.startswith(prefix) or k.startswith(ln_vision_prefix)},
      getattr(state_dict, "path", "")))
  params = {
      "patch_embed": ts.conv(sd, f"{prefix}patch_embed.proj"),
      "cls_token": ts.reshape_checked(sd.get(f"{prefix}cls_token"), (config.width,)),
      "pos_embed": _pos_embed(sd, f"{prefix}pos_embed", config),
      "ln_vision": ts.norm(sd, ln_vision_prefix.removesuffix(".")),
  }
  for i in range(config.depth):
    block = f"{prefix}blocks.{i}"
    params[f"blocks_{i}"] = {
        "norm1": ts.norm(sd, f"{block}.norm1"),
        "attn": _attention(sd, f"{block}.attn", config),
        "norm2": ts.norm(sd, f"{block}.norm2"),
        "fc1": ts.linear(sd, f"{block}.mlp.fc1"),
        "fc2": ts.linear(sd, f"{block}.mlp.fc2"),
    }
  params = ts.prune_missing(params)
  ts.check_params(params, abstract_params(config), sd)
  return ts.cast_tree(params, jnp.float32)


def config_from_state_dict(state_dict: Mapping[str, Any], num_heads: int = 16,
                           prefix: str = "visual_encoder.", **overrides) -> EvaViTConfig:
  """The `EvaViTConfig` of the weights under `prefix`: sizes read from shapes.

  Heads cannot be read from shapes (`num_heads`, ViT-g's 16 by default), nor
  the LayerNorm eps (ViT-g's unless in `overrides`, with dtype and the like).

  Raises:
    ConversionError: a key the sizes are read from is absent, or `pos_embed`
      is not a square grid plus CLS.
  """
  def shape(name: str) -> tuple:
    if prefix + name not in state_dict:
      raise ts.ConversionError(f"{prefix}{name} is missing; the sizes are read from it")
    return np.shape(state_dict[prefix + name])

  width, channels, patch, _ = shape("patch_embed.proj.weight")
  tokens = shape("pos_embed")[-2]
  grid = math.isqrt(tokens - 1)
  if grid * grid + 1 != tokens:
    raise ts.ConversionError(f"{prefix}pos_embed holds {tokens} positions; expected CLS + a "
                             "square grid")
  depth = 0
  while f"{prefix}blocks.{depth}.norm1.weight" in state_dict:
    depth += 1
  mlp_dim = shape("blocks.0.mlp.fc1.weight")[0]
  return EvaViTConfig(image_size=grid * patch, patch_size=patch, num_channels=channels,
                      width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
                      **overrides)

