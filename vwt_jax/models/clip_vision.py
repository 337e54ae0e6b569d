"""The CLIP ViT vision tower, computed as transformers' `CLIPVisionModel`.

CLIP-normalised images (N, H, W, C) go through a stride-p patch conv without
bias, [class embedding; patches] + learned positions, `pre_layrnorm` (CLIP's
spelling is kept), pre-LN encoder layers (biased q/k/v/out projections,
activation `hidden_act`: quick_gelu for OpenAI CLIP) and `post_layernorm` on
the last layer's CLS token (the pooled output). As transformers with
`output_hidden_states=True`, the tower returns every hidden state; LLaVA-style
captioners read the penultimate one without the CLS token, and under jit XLA
drops what the features do not use.

The patch kernel (p, p, C, D) stays a conv so the torch weight maps with
`torch_state.conv`. Its output axis is named 'embed' like every residual-width
axis of the tower ('conv_out' would shard it unlike the embeddings it is added
to); the RGB input axis is too small to shard.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vwt_jax.models import layers

Dtype = Any

# transformers' CLIPVisionConfig defaults: a config.json written by an older
# transformers stores only the fields that differ from them.
_HF_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, image_size=224, patch_size=32, num_channels=3,
                    layer_norm_eps=1e-5, hidden_act="quick_gelu", attention_dropout=0.0)
_VISION_MODEL_TYPES = ("clip_vision_model", None)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Sizes of a CLIP vision tower; defaults are OpenAI's ViT-L/14 (224 px)."""
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  image_size: int = 224
  patch_size: int = 14
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    layers.check_sizes(self, "hidden_size", "num_attention_heads", "hidden_act")
    if self.image_size % self.patch_size:
      raise ValueError(f"CLIPVisionConfig: image_size={self.image_size} is not divisible by "
                       f"patch_size={self.patch_size}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_variant(cls, name: str, **overrides) -> "CLIPVisionConfig":
    """A named tower: 'ViT-L/14', 'ViT-L/14@336px' (LLaVA-1.5's) or 'tiny' (tests)."""
    return dataclasses.replace(layers.variant(VARIANTS, name, "CLIP vision"), **overrides)

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any], source: str = "config.json",
                     **overrides) -> "CLIPVisionConfig":
    """Reads a transformers `CLIPVisionConfig` dict, or a `CLIPConfig` dict's vision part.

    Absent fields take transformers' defaults; `overrides` set others (dtype, ...).
    """
    if config.get("model_type") == "clip" or "vision_config" in config:
      # Some CLIPConfig files (transformers 4.2x) also hold `vision_config_dict`;
      # transformers then builds the tower from it alone (plus defaults).
      vision = config.get("vision_config_dict") or config.get("vision_config")
      if not isinstance(vision, Mapping):
        raise ValueError(f"{source}: a CLIPConfig without a vision_config")
      config, source = vision, f"{source} vision_config"
    if config.get("model_type") not in _VISION_MODEL_TYPES:
      raise ValueError(f"{source}: model_type={config['model_type']!r}; supported: "
                       "'clip_vision_model' (or a 'clip' config holding one)")
    fields = {k: config.get(k, default) for k, default in _HF_DEFAULTS.items()}
    if float(fields.pop("attention_dropout")) != 0.0:
      raise ValueError(f"{source}: attention_dropout={config['attention_dropout']} is not "
                       "supported (only 0.0, as in every released CLIP)")
    for key in ("image_size", "patch_size"):
      fields[key] = _square(fields[key], key, source)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_channels"):
      fields[key] = int(fields[key])
    fields["layer_norm_eps"] = float(fields["layer_norm_eps"])
    try:
      return cls(**fields, **overrides)
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None


def _square(value: Any, key: str, source: str) -> int:
  """An int, or a [h, w] pair with h == w (transformers allows both)."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"{source}: {key}={list(value)}; only square sizes are supported")
    value = value[0]
  return int(value)


VARIANTS = {
    "ViT-L/14": CLIPVisionConfig(),
    "ViT-L/14@336px": CLIPVisionConfig(image_size=336),
    "tiny": CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, image_size=32, patch_size=8),
}


class CLIPEncoderLayer(nn.Module):
  """Pre-LN block: x + attn(layer_norm1(x)); x + fc2(act(fc1(layer_norm2(x))))."""
  config: CLIPVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="layer_norm1", **kw)(x)
    x = x + layers.MultiHeadAttention(cfg.num_attention_heads, name="self_attn", **kw)(h)
    h = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="layer_norm2", **kw)(x)
    h = layers.dense(cfg.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(h)
    h = layers.HF_ACTIVATIONS[cfg.hidden_act](h)
    return layers.constrain_activations(
        x + layers.dense(cfg.hidden_size, ("mlp", "embed"), name="fc2", **kw)(h))


class CLIPVisionTower(nn.Module):
  """Normalised images (N, H, W, C) float32 -> per-image token features.

  Returns `(features, aux)`: `features` (N, 1 + P, D) is
  `hidden_states[feature_layer]`, without the CLS token (N, P, D) when
  `drop_cls`; `aux['hidden_states']` is the tuple of all num_hidden_layers + 1
  hidden states, `aux['pooled']` (N, D) the post-LayerNorm CLS token of the
  last layer (transformers' `pooler_output`).
  """
  config: CLIPVisionConfig
  feature_layer: int = -2
  drop_cls: bool = False

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    cfg = self.config
    num_states = cfg.num_hidden_layers + 1
    if not -num_states <= self.feature_layer < num_states:
      raise ValueError(f"CLIPVisionTower.feature_layer={self.feature_layer} is outside the "
                       f"{num_states} hidden states (embeddings + {cfg.num_hidden_layers} layers)")
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(f"images {images.shape}: expected (N, {', '.join(map(str, expected))})")
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    batch, width = images.shape[0], cfg.hidden_size

    p = cfg.patch_size
    x = layers.conv(width, p, (None, None, None, "embed"), strides=(p, p), padding="VALID",
                    use_bias=False, name="patch_embedding", **kw)(images.astype(cfg.dtype))
    x = x.reshape(batch, cfg.num_patches, width)  # row-major, as torch's flatten(2)
    scale = width ** -0.5
    cls_emb = self.param("class_embedding", layers.scaled_normal_init(scale, ("embed",)),
                         (width,), cfg.param_dtype)
    pos_emb = self.param("position_embedding",
                         layers.scaled_normal_init(scale, ("length", "embed")),
                         (cfg.num_patches + 1, width), cfg.param_dtype)
    cls_tok = jnp.broadcast_to(cls_emb.astype(x.dtype), (batch, 1, width))
    x = jnp.concatenate([cls_tok, x], axis=1) + pos_emb.astype(x.dtype)
    x = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="pre_layrnorm", **kw)(x)

    hidden_states = [x]
    for i in range(cfg.num_hidden_layers):
      x = CLIPEncoderLayer(cfg, name=f"layers_{i}")(x)
      hidden_states.append(x)
    pooled = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="post_layernorm", **kw)(x[:, 0])

    features = hidden_states[self.feature_layer]
    if self.drop_cls:
      features = features[:, 1:]
    return features, {"hidden_states": tuple(hidden_states), "pooled": pooled}


def abstract_params(config: CLIPVisionConfig) -> Any:
  """The boxed parameter tree of a tower of `config`, by shape only."""
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels),
                                jnp.float32)
  return layers.abstract_params(CLIPVisionTower(config), images)
