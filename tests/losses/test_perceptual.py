import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers
from vwt_jax.losses import perceptual
from vwt_jax.models.convnext import ConvNeXt, ConvNeXtConfig

TINY = ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=10)


def _tiny_params(seed=0):
  """Numpy-filled params: jitting `init` pays seconds of XLA:CPU compile for threefry."""
  shapes = nn.unbox(jax.eval_shape(ConvNeXt(TINY).init, jax.random.key(0),
                                   jnp.zeros((1, 32, 32, 3))))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)


def _images(seed, size=32):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)), jnp.float32)


@pytest.mark.parametrize("size", [256, 32, 224])
def test_preprocess_matches_torch_antialias_resize(size):
  x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  t = (torch.tensor(x).permute(0, 3, 1, 2) + 1) / 2
  t = F.interpolate(t, size=224, mode="bilinear", align_corners=False, antialias=True)
  mean = torch.tensor(perceptual.IMAGENET_MEAN)[None, :, None, None]
  std = torch.tensor(perceptual.IMAGENET_STD)[None, :, None, None]
  want = ((t - mean) / std).permute(0, 2, 3, 1).numpy()
  # jax.image.resize contracts each axis with a dense weight matrix over the
  # input (size columns): 2 passes over values in [0, 1], then / std (< 0.23).
  helpers.assert_allclose_f32(perceptual.imagenet_preprocess(jnp.asarray(x)), want,
                              reduction=size, depth=2, scale=1 / min(perceptual.IMAGENET_STD))


def test_zero_for_identical_positive_otherwise():
  loss = perceptual.ConvNeXtPerceptualLoss(params=_tiny_params(), model=ConvNeXt(TINY))
  # The loss object is a jit argument, so its weights are not baked in as constants.
  value_and_grad = jax.jit(jax.value_and_grad(lambda recon, loss, real: loss(real, recon)))
  x, y = _images(0), _images(1)
  same, _ = value_and_grad(x, loss, x)
  # Both images share one forward batch, so rows may differ by rounding only:
  # the mean squared logit difference is below the square of the logits'
  # tolerance. Longest sum: the 2x2 downsample or pointwise conv over 16 (64);
  # resize 2, stem 1, 3 convs a block for 4 blocks, 3 downsamples, pool, head.
  logit_tol = helpers.f32_atol(float(jnp.abs(loss.logits(x)).max()), reduction=64, depth=20)
  assert float(same) < logit_tol ** 2
  value, grad = value_and_grad(y, loss, x)
  assert float(value) > 1e-6
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_no_weights_turns_the_term_off(caplog):
  with caplog.at_level(logging.WARNING):
    assert perceptual.make_perceptual_loss("convnext_s", None) is None
    assert perceptual.make_perceptual_loss("convnext_s", "") is None
  assert "perceptual loss OFF" in caplog.text
  assert "perceptual_weights" in caplog.text


def test_unknown_kind_lists_available():
  with pytest.raises(ValueError, match="convnext_s"):
    perceptual.make_perceptual_loss("lpips_vgg", "/some/path.pth")


def test_builder_loads_weights(monkeypatch):
  params = _tiny_params()
  monkeypatch.setattr(perceptual, "load_convnext", lambda path, cfg: params)
  loss = perceptual.make_perceptual_loss("convnext_s", "weights.pth", convnext_config=TINY)
  assert isinstance(loss, perceptual.ConvNeXtPerceptualLoss)
  assert loss.model.config == TINY and loss.params is params
