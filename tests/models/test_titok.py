"""TiTok model: every family builds, runs under jit and is logically partitioned."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.models.maskgit_vqgan import MaskGitVQGANConfig
from vwt_jax.models.quantizers import VectorQuantizer
from vwt_jax.models.titok import TiTok, TiTokConfig

ALLOWED_AXES = {"embed", "mlp", "heads", "kv", "vocab", "token", "length", "conv_in",
                "conv_out", "norm", None}
TINY = dict(image_size=16, enc_width=32, enc_depth=1, enc_heads=2, dec_width=32, dec_depth=1,
            dec_heads=2, enc_patch_size=4, dec_patch_size=4, num_latent_tokens=4,
            codebook_size=16, token_size=8)
FAMILIES = {
    "legacy_vq": TiTokConfig(
        **TINY, use_l2_norm=True, is_legacy=True, finetune_decoder=True,
        pixel_decoder=MaskGitVQGANConfig(hidden_channels=32, channel_mult=(1, 1, 2),
                                         num_res_blocks=1, z_channels=8)),
    "legacy_stage1": TiTokConfig(**TINY, is_legacy=True, finetune_decoder=False,
                                 pixel_decoder=None),
    "single_stage_vq": TiTokConfig(**TINY, use_l2_norm=False, is_legacy=False,
                                   finetune_decoder=False, pixel_decoder=None),
    "single_stage_vae": TiTokConfig(**TINY, quantize_mode="vae", is_legacy=False,
                                    finetune_decoder=False, pixel_decoder=None),
}
IMAGES = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)


def _random_variables(model):
  """Random params from numpy: compiling `model.init` on CPU costs seconds."""
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), IMAGES))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype), abstract)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_under_jit(family):
  config = FAMILIES[family]
  model = TiTok(config)

  @jax.jit
  def run(variables, images):
    recon, aux = model.apply(variables, images)
    tokens = aux["indices"] if config.quantize_mode == "vq" else aux["posterior_mean"]
    decoded, _ = model.apply(variables, tokens, method=TiTok.decode_tokens)
    return recon, aux, decoded

  recon, aux, decoded = run(_random_variables(model), IMAGES)
  if family == "legacy_stage1":
    assert recon is None and decoded is None
  else:
    assert recon.shape == IMAGES.shape and bool(jnp.all(jnp.isfinite(recon)))
    # The same decoder on the same codes, fused differently by XLA: the
    # longest reduction is the 1024-code proxy mix; 1 decoder block (5 dots)
    # and the pixel decoder's 9 convs follow each other.
    helpers.assert_allclose_f32(decoded, recon, reduction=1024, depth=14)
  if config.is_legacy:
    assert aux["proxy_logits"].shape == (2, 4, 4, 1024)
  if config.quantize_mode == "vq":
    assert aux["indices"].shape == (2, 4) and aux["z"].shape == (2, 4, 8)
  else:
    assert aux["posterior_mean"].shape == (2, 4, 8)


def test_vae_samples_only_with_rng():
  model = TiTok(FAMILIES["single_stage_vae"])
  variables = _random_variables(model)
  encode = jax.jit(lambda v, x, rng: model.apply(v, x, method=TiTok.encode, sample_rng=rng))
  mode, _ = encode(variables, IMAGES, None)
  sample, aux = encode(variables, IMAGES, jax.random.key(1))
  np.testing.assert_array_equal(mode, aux["posterior_mean"])
  assert not np.allclose(sample, mode)
  with pytest.raises(ValueError, match="sample_rng"):
    jax.eval_shape(lambda v: model.apply(v, IMAGES, method=TiTok.encode, train=True), variables)


def test_bf16_compute_keeps_f32_params():
  config = dataclasses.replace(FAMILIES["single_stage_vq"], dtype=jnp.bfloat16)
  model = TiTok(config)
  variables = _random_variables(model)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  recon, aux = jax.jit(model.apply)(variables, IMAGES)
  assert aux["z_q_raw"].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(recon)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_param_is_logically_partitioned(family):
  model = TiTok(FAMILIES[family])
  params = jax.eval_shape(model.init, jax.random.key(0), IMAGES)["params"]
  leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= ALLOWED_AXES, leaf.names
    named = [n for n in leaf.names if n is not None]
    assert len(named) == len(set(named)), leaf.names


def test_vq_straight_through_gradient_is_identity():
  vq = VectorQuantizer(codebook_size=8, token_size=4)
  z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4)), jnp.float32)
  weights = jnp.asarray(np.random.default_rng(2).normal(size=z.shape), jnp.float32)
  variables = vq.init(jax.random.key(0), z)
  grad = jax.grad(lambda z: jnp.sum(vq.apply(variables, z)[0] * weights))(z)
  # z + stop_gradient(z_q - z) has derivative exactly 1: equal; 1e-6 is margin only.
  np.testing.assert_allclose(grad, weights, rtol=1e-6)


def test_vq_picks_nearest_l2_normalised_code():
  vq = VectorQuantizer(codebook_size=8, token_size=4, use_l2_norm=True)
  z = jnp.asarray(np.random.default_rng(3).normal(size=(5, 4)), jnp.float32)
  variables = vq.init(jax.random.key(0), z)
  z_q, aux = vq.apply(variables, z)
  codes = np.asarray(variables["params"]["embedding"].unbox())
  codes = codes / np.linalg.norm(codes, axis=-1, keepdims=True)
  zn = np.asarray(z) / np.linalg.norm(z, axis=-1, keepdims=True)
  np.testing.assert_array_equal(aux["indices"], np.argmax(zn @ codes.T, axis=-1))
  # Codes normalised by jax and by numpy (sums of 4 squares), then the
  # straight-through z + (z_q - z) of unit vectors rounds twice more.
  helpers.assert_allclose_f32(z_q, codes[aux["indices"]], reduction=4, depth=3)
  assert 0.0 < float(aux["codebook_usage"]) <= 1.0
