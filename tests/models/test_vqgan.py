"""LlamaGen VQGAN: parameter counts, configs, token round trip, entropy loss."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.conversion.vqgan import abstract_params
from vwt_jax.losses.quantizer import entropy_loss
from vwt_jax.models.quantizers import VectorQuantizer
from vwt_jax.models.vqgan import VQGANConfig, VQModel

TINY = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, codebook_size=64)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# VQ-16: the sum over the 343 parameter tensors of the official state dict
# listing (docs/llamagen.md appendix B, without the `codebook_used` buffer).
@pytest.mark.parametrize("name,total,encoder,decoder", [
    ("VQ-16", 71_883_403, 29_298_176, 42_449_795),
    ("VQ-8", 70_109_835, 28_559_232, 41_415_171),
])
def test_released_parameter_counts(name, total, encoder, decoder):
  params = nn.meta.unbox(abstract_params(VQGANConfig.named(name)))
  assert (_count(params), _count(params["encoder"]), _count(params["decoder"])) == (
      total, encoder, decoder)


def test_configs(fixtures_dir):
  assert VQGANConfig.named("VQ-16").downsample_factor == 16
  assert VQGANConfig.named("VQ-8", z_channels=64).downsample_factor == 8
  with open(os.path.join(fixtures_dir, "llamagen", "vq_config.json")) as f:
    meta = json.load(f)
  cfg = VQGANConfig.from_official(meta["model_args"], ch=meta["non_default"]["ch"])
  assert (cfg.ch, cfg.ch_mult, cfg.z_channels) == (32, (1, 1, 1, 2, 2), 64)
  assert cfg.downsample_factor == meta["derived"]["downsample_factor"]
  with pytest.raises(ValueError, match="decoder_ch_mult"):
    VQGANConfig.from_official(dict(meta["model_args"], decoder_ch_mult=[1, 2]))
  with pytest.raises(ValueError, match="VQ-32"):
    VQGANConfig.named("VQ-32")


@pytest.fixture(scope="module")
def tiny_outputs():
  model = VQModel(TINY)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)

  # Numpy-filled params: a jitted `init` pays seconds of XLA:CPU compile.
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), images))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), shapes)

  @jax.jit
  def run(variables, images):
    z_q, aux = model.apply(variables, images, method=VQModel.encode)
    flat = model.apply(variables, aux["indices"], method=VQModel.decode_code)
    grid = model.apply(variables, aux["indices"].reshape(2, 4, 4), method=VQModel.decode_code)
    return aux, z_q, model.apply(variables, z_q, method=VQModel.decode), flat, grid

  return run(variables, images)


def test_token_round_trip(tiny_outputs):
  aux, z_q, decoded, flat, grid = tiny_outputs
  assert aux["indices"].shape == (2, 16) and z_q.shape == (2, 4, 4, 8)
  assert decoded.shape == (2, 8, 8, 3) and bool(jnp.all(jnp.isfinite(decoded)))
  # The decoder on looked-up codes vs on the straight-through z_q (rounded off
  # them): the longest sum is a 3x3 conv over 64 channels; post-quant conv,
  # conv_in, mid (2 res blocks of 2 convs, attention's 4 dots), 2 res blocks each
  # with attention, the upsample conv, 2 res blocks, conv_out: 28, +1 rounding.
  helpers.assert_allclose_f32(flat, decoded, reduction=3 * 3 * 64, depth=29)
  helpers.assert_allclose_f32(grid, decoded, reduction=3 * 3 * 64, depth=29)
  # Lookups return unit vectors: normalised (8 squares), straight-through, norm.
  helpers.assert_allclose_f32(jnp.linalg.norm(z_q, axis=-1), 1.0, reduction=8, depth=3)


def test_codebook_starts_with_unit_rows():
  quantizer = VectorQuantizer(16, 8, use_l2_norm=True, normalize_init=True)
  codebook = quantizer.init(jax.random.key(0), jnp.ones((1, 8)))["params"]["embedding"]
  # Normalised in float32, then its norm: two sums of 8 squares.
  helpers.assert_allclose_f32(jnp.linalg.norm(nn.meta.unbox(codebook), axis=-1), 1.0,
                              reduction=8, depth=2)


def test_decode_code_rejects_non_square_sequences():
  model = VQModel(TINY)
  codes = jnp.zeros((1, 15), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="not a square grid"):
    jax.eval_shape(lambda v: model.apply(v, codes, method=VQModel.decode_code), variables)
  out = jax.eval_shape(lambda v: model.apply(v, codes, (3, 5), method=VQModel.decode_code),
                       variables)
  assert out.shape == (1, 6, 10, 3)


def test_entropy_loss_rewards_confident_and_diverse_codes():
  # The reference's log(avg_probs + 1e-5) lowers the batch entropy by
  # sum_k p_k log(1 + 1e-5 / p_k) < 4 * 1e-5; then float32 rounding of sums of 4
  # log-probabilities (log 4) in 3 steps (softmax, per-code sum, mean).
  tol = 4 * 1e-5 + helpers.f32_atol(np.log(4.0), reduction=4, depth=3)
  # Each latent sure of its own code: per-sample entropy ~0 (other codes get
  # e^-100), batch entropy log 4.
  confident = jnp.where(jnp.eye(4) > 0, 0.0, 1.0)
  np.testing.assert_allclose(entropy_loss(confident), -np.log(4.0), rtol=0, atol=tol)
  # Undecided latents: both entropies log 4, loss 0.
  np.testing.assert_allclose(entropy_loss(jnp.zeros((4, 4))), 0.0, rtol=0, atol=tol)
