import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

import helpers
from vwt_jax.conversion import torch_state as ts
from vwt_jax.conversion.convnext import convert_convnext, load_convnext
from vwt_jax.models.convnext import CONVNEXT_SMALL, ConvNeXt, ConvNeXtConfig

TINY = ConvNeXtConfig(depths=(1, 2, 1, 1), dims=(8, 16, 16, 24), num_classes=10)


# --- torchvision's module structure and key names, written out for the test ---
class LayerNorm2d(tnn.LayerNorm):

  def forward(self, x):
    x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                     self.eps)
    return x.permute(0, 3, 1, 2)


class Permute(tnn.Module):

  def __init__(self, dims):
    super().__init__()
    self.dims = dims

  def forward(self, x):
    return x.permute(*self.dims)


class CNBlock(tnn.Module):

  def __init__(self, dim):
    super().__init__()
    self.block = tnn.Sequential(
        tnn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute((0, 2, 3, 1)),
        tnn.LayerNorm(dim, eps=1e-6), tnn.Linear(dim, 4 * dim), tnn.GELU(),
        tnn.Linear(4 * dim, dim), Permute((0, 3, 1, 2)))
    self.layer_scale = tnn.Parameter(torch.full((dim, 1, 1), 1e-6))

  def forward(self, x):
    return x + self.layer_scale * self.block(x)


class TorchConvNeXt(tnn.Module):

  def __init__(self, cfg):
    super().__init__()
    d = cfg.dims
    layers = [tnn.Sequential(tnn.Conv2d(3, d[0], 4, stride=4), LayerNorm2d(d[0], eps=1e-6))]
    for s, depth in enumerate(cfg.depths):
      if s > 0:
        layers.append(tnn.Sequential(LayerNorm2d(d[s - 1], eps=1e-6),
                                     tnn.Conv2d(d[s - 1], d[s], 2, stride=2)))
      layers.append(tnn.Sequential(*[CNBlock(d[s]) for _ in range(depth)]))
    self.features = tnn.Sequential(*layers)
    self.avgpool = tnn.AdaptiveAvgPool2d(1)
    self.classifier = tnn.Sequential(LayerNorm2d(d[-1], eps=1e-6), tnn.Flatten(1),
                                     tnn.Linear(d[-1], cfg.num_classes))

  def forward(self, x):
    return self.classifier(self.avgpool(self.features(x)))


def _random_torch_model(cfg, seed=0):
  torch.manual_seed(seed)
  model = TorchConvNeXt(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():  # random everything, layer scales included
      p.normal_(0.0, 0.3)
  return model


def _state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_torchvision_key_names():
  keys = set(TorchConvNeXt(TINY).state_dict())
  assert {"features.0.0.weight", "features.1.0.block.0.weight", "features.1.0.layer_scale",
          "features.2.0.weight", "features.2.1.weight", "features.3.1.block.5.bias",
          "classifier.0.weight", "classifier.2.weight"} <= keys


def test_converted_logits_match_torch(tmp_path):
  model = _random_torch_model(TINY)
  x = torch.rand(2, 3, 64, 64) * 4 - 2
  with torch.no_grad():
    want = model(x).numpy()
  path = str(tmp_path / "convnext.pt")
  torch.save(model.state_dict(), path)
  params = load_convnext(path, TINY)
  got, aux = jax.jit(ConvNeXt(TINY).apply)({"params": params},
                                           jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  assert got.shape == (2, 10) and aux["pooled"].shape == (2, 24)
  # The longest sum is stage 4's pointwise conv over 4*24; the stem, 3 convs
  # in each of 5 blocks, 3 downsamples, the pool and the head.
  helpers.assert_allclose_f32(got, want, reduction=4 * 24, depth=21)


def test_conversion_reports_every_problem():
  sd = _state_dict(_random_torch_model(TINY))
  del sd["features.1.0.layer_scale"]
  sd["features.3.0.block.3.weight"] = np.zeros((5, 5), np.float32)
  sd["features.9.0.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ts.ConversionError) as err:
    convert_convnext(sd, TINY)
  msg = str(err.value)
  assert "features.1.0.layer_scale" in msg
  assert "features.9.0.weight" in msg
  assert "stage_1_block_0/fc1/kernel" in msg


def test_convnext_small_parameters():
  variables = jax.eval_shape(ConvNeXt(CONVNEXT_SMALL).init, jax.random.key(0),
                             jnp.zeros((1, 224, 224, 3)))
  leaves = jax.tree.leaves(variables["params"],
                           is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  # torchvision's convnext_small reports 50,223,688 parameters.
  assert sum(int(np.prod(v.value.shape)) for v in leaves) == 50_223_688
  assert all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
  assert jax.eval_shape(ConvNeXt(CONVNEXT_SMALL).apply, variables,
                        jnp.zeros((1, 224, 224, 3)))[0].shape == (1, 1000)


def test_bfloat16_compute():
  params = convert_convnext(_state_dict(_random_torch_model(TINY)), TINY)
  x = jnp.zeros((1, 32, 32, 3))
  logits, _ = jax.jit(ConvNeXt(TINY, dtype=jnp.bfloat16).apply)({"params": params}, x)
  assert logits.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))
