"""MaskGIT-VQGAN: shapes, code round trip and the nin_shortcut quirk."""

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models.maskgit_vqgan import MaskGitVQGAN, MaskGitVQGANConfig, ResnetBlock

CONFIG = MaskGitVQGANConfig(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            z_channels=8, codebook_size=16)


def test_encode_decode_shapes():
  model = MaskGitVQGAN(CONFIG)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), images)
  codes, aux = model.apply(variables, images, method=MaskGitVQGAN.encode)
  assert codes.shape == (2, 4, 4) and aux["z"].shape == (2, 4, 4, 8)
  recon = model.apply(variables, codes, method=MaskGitVQGAN.decode_codes)
  assert recon.shape == images.shape and bool(jnp.all(jnp.isfinite(recon)))
  np.testing.assert_allclose(recon, model.apply(variables, images)[0], atol=1e-5)


def test_channel_changing_shortcut_acts_on_block_output():
  block = ResnetBlock(32)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 64)), jnp.float32)
  params = block.init(jax.random.key(0), x)["params"]
  params = jax.tree_util.tree_map(lambda p: p, params)

  def run(nin):
    kernel = params["nin_shortcut"]["kernel"].replace_boxed(nin[None, None])
    new = dict(params, nin_shortcut={"kernel": kernel})
    return block.apply({"params": new}, x)

  # Official quirk: out = h + W h, so an identity shortcut doubles h.
  np.testing.assert_allclose(run(jnp.eye(32)), 2 * run(jnp.zeros((32, 32))), rtol=1e-5)
