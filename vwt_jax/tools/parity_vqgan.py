"""`parity llamagen-vq`: the LlamaGen VQ tokenizer (vq_config/vq_state_dict/vq_io)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion.vqgan import convert_vqgan
from vwt_jax.losses.quantizer import entropy_loss, vq_losses
from vwt_jax.models.vqgan import VQGANConfig, VQModel
from vwt_jax.tools.parity_common import (LOSS_TOL, PIXEL_TOL, Result, compare_io, load_arrays,
                                         load_json, missing_files, nchw, tolerance_table)

# Fixture README: encoder activations atol 1e-5, quant 1e-6, indices exact, dec 2e-4.
LATENT_TOL = dict(atol=1e-5, rtol=0.0)
QUANT_TOL = dict(atol=1e-6, rtol=0.0)
# Softmax at temperature 0.01 scales distance rounding by 100.
ENTROPY_TOL = dict(atol=1e-4, rtol=1e-4)
# LATENT_TOL: enc_out, h_prequant(_l2) and code_margin (a difference of O(1) distances).
_tolerance = tolerance_table(LATENT_TOL, LOSS_TOL, quant=QUANT_TOL, dec=PIXEL_TOL,
                             entropy_loss_unweighted=ENTROPY_TOL)


def config_from_fixture(meta: dict) -> VQGANConfig:
  ch = meta.get("non_default", {}).get("ch")
  overrides = {"ch": int(ch)} if ch is not None else {}
  return VQGANConfig.from_official(meta["model_args"], dtype=jnp.float32,
                                   param_dtype=jnp.float32, **overrides)


@functools.lru_cache(maxsize=4)
def _forward(config: VQGANConfig):
  """One jitted forward per config (repeated runs, e.g. in tests, compile once)."""
  model = VQModel(config)

  def forward(variables, images):
    enc_out = model.apply(variables, images, method=lambda m, x: m.encoder(x))
    z_q, aux = model.apply(variables, images, method=VQModel.encode)
    return enc_out, z_q, aux, model.apply(variables, z_q, method=VQModel.decode)

  return jax.jit(forward)


def run_vq(fixture_dir: str) -> list[Result]:
  """`vq_{config.json,state_dict.npz,io.npz}`: encoder, quantizer, decoder and losses."""
  if absent := missing_files(fixture_dir, "vq_", ("config.json", "state_dict.npz", "io.npz")):
    return absent
  config = config_from_fixture(load_json(fixture_dir, "vq_config.json"))
  params = convert_vqgan(load_arrays(fixture_dir, "vq_state_dict.npz"), config)
  io = load_arrays(fixture_dir, "vq_io.npz")
  images = jnp.asarray(io["x"].transpose(0, 2, 3, 1))
  with jax.default_matmul_precision("highest"):
    enc_out, z_q, aux, dec = _forward(config)({"params": params}, images)
    losses = vq_losses(aux["z"], aux["z_q_raw"], config.commit_loss_beta)
    dist = np.sort(np.asarray(aux["distances"]), axis=-1)
    batch = images.shape[0]
    ours = {
        "enc_out": nchw(enc_out),
        "h_prequant": nchw(aux["h_prequant"]),
        "h_prequant_l2": nchw(aux["z"]),
        "quant": nchw(z_q),
        "indices": np.asarray(aux["indices"]),
        "code_margin": (dist[..., 1] - dist[..., 0]).reshape(batch, -1),
        "dec": nchw(dec),
        "vq_loss": losses["codebook"],
        "commit_loss": losses["commitment"],
        "entropy_loss_unweighted": entropy_loss(aux["distances"], config.entropy_temperature),
    }
  return compare_io("vq", io, ours, ("x",), _tolerance)
