"""MaskGIT-VQGAN: shapes, code round trip and the nin_shortcut quirk."""

import jax
import jax.numpy as jnp
import numpy as np

import helpers
from vwt_jax.conversion.titok import convert_maskgit_vqgan
from vwt_jax.models.maskgit_vqgan import MaskGitVQGAN, MaskGitVQGANConfig, ResnetBlock

CONFIG = MaskGitVQGANConfig(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            z_channels=8, codebook_size=16)


def test_encode_decode_shapes():
  model = MaskGitVQGAN(CONFIG)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)

  @jax.jit
  def run(images):
    variables = model.init(jax.random.key(0), images)
    codes, aux = model.apply(variables, images, method=MaskGitVQGAN.encode)
    recon = model.apply(variables, codes, method=MaskGitVQGAN.decode_codes)
    return codes, aux, recon, model.apply(variables, images)[0]

  codes, aux, recon, forward = run(images)
  assert codes.shape == (2, 4, 4) and aux["z"].shape == (2, 4, 4, 8)
  assert recon.shape == images.shape and bool(jnp.all(jnp.isfinite(recon)))
  # The decoder on the looked-up codes vs on the straight-through z + (z_q - z)
  # (2 roundings off): the longest sum is a 3x3 conv over 64 channels; 9 convs.
  helpers.assert_allclose_f32(recon, forward, reduction=3 * 3 * 64, depth=10)


def test_channel_changing_shortcut_acts_on_block_output():
  block = ResnetBlock(32)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 64)), jnp.float32)
  params = block.init(jax.random.key(0), x)["params"]

  def run(nin):
    kernel = params["nin_shortcut"]["kernel"].replace_boxed(nin[None, None])
    new = dict(params, nin_shortcut={"kernel": kernel})
    return block.apply({"params": new}, x)

  # Official quirk: out = h + W h, so an identity shortcut doubles h. Exact: the
  # identity 1x1 conv sums one nonzero term, h + h = 2h; 1e-5 is margin only.
  np.testing.assert_allclose(run(jnp.eye(32)), 2 * run(jnp.zeros((32, 32))), rtol=1e-5)


def _official_resnet(sd, prefix, cin, cout):
  sd[f"{prefix}.norm1.weight"] = sd[f"{prefix}.norm1.bias"] = np.ones(cin, np.float32)
  sd[f"{prefix}.norm2.weight"] = sd[f"{prefix}.norm2.bias"] = np.ones(cout, np.float32)
  sd[f"{prefix}.conv1.weight"] = np.zeros((cout, cin, 3, 3), np.float32)
  sd[f"{prefix}.conv2.weight"] = np.zeros((cout, cout, 3, 3), np.float32)
  if cin != cout:
    sd[f"{prefix}.nin_shortcut.weight"] = np.zeros((cout, cout, 1, 1), np.float32)


def test_official_key_layout_converts():
  """A state dict shaped like the official module tree converts without leftovers."""
  cfg, sd = CONFIG, {}
  hid, mult = cfg.hidden_channels, cfg.channel_mult
  sd["encoder.conv_in.weight"] = np.zeros((hid, 3, 3, 3), np.float32)
  cin = hid
  for i, m in enumerate(mult):
    for j in range(cfg.num_res_blocks):
      _official_resnet(sd, f"encoder.down.{i}.block.{j}", cin, hid * m)
      cin = hid * m
  for prefix in ("encoder", "decoder"):
    for j in range(cfg.num_res_blocks):
      _official_resnet(sd, f"{prefix}.mid.{j}", hid * mult[-1], hid * mult[-1])
  sd["encoder.norm_out.weight"] = sd["encoder.norm_out.bias"] = np.ones(hid * mult[-1])
  sd["encoder.conv_out.weight"] = np.zeros((cfg.z_channels, hid * mult[-1], 1, 1))
  sd["encoder.conv_out.bias"] = np.zeros(cfg.z_channels)
  sd["decoder.conv_in.weight"] = np.zeros((hid * mult[-1], cfg.z_channels, 3, 3))
  sd["decoder.conv_in.bias"] = np.zeros(hid * mult[-1])
  for i in range(len(mult)):
    cin = hid * mult[min(i + 1, len(mult) - 1)]
    for j in range(cfg.num_res_blocks):
      _official_resnet(sd, f"decoder.up.{i}.block.{j}", cin, hid * mult[i])
      cin = hid * mult[i]
    if i:
      sd[f"decoder.up.{i}.upsample_conv.weight"] = np.zeros((cin, cin, 3, 3))
      sd[f"decoder.up.{i}.upsample_conv.bias"] = np.zeros(cin)
  sd["decoder.norm_out.weight"] = sd["decoder.norm_out.bias"] = np.ones(hid * mult[0])
  sd["decoder.conv_out.weight"] = np.zeros((3, hid * mult[0], 3, 3))
  sd["decoder.conv_out.bias"] = np.zeros(3)
  sd["quantize.embedding.weight"] = np.zeros((cfg.codebook_size, cfg.z_channels))
  params = convert_maskgit_vqgan(sd, cfg, image_size=8)
  assert params["encoder"]["down_1_block_0"]["nin_shortcut"]["kernel"].shape == (1, 1, 64, 64)
