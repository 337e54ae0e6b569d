"""`parity titok`: TiTok tokenizers (legacy two-stage, single-stage VQ and VAE)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion.titok import convert_titok
from vwt_jax.losses.classification import proxy_code_cross_entropy
from vwt_jax.losses.quantizer import kl_divergence, vq_losses
from vwt_jax.models.quantizers import DiagonalGaussian
from vwt_jax.models.titok import TiTok, TiTokConfig
from vwt_jax.tools.parity_common import (ACTIVATION_TOL, LOSS_TOL, PIXEL_TOL, Result, compare_io,
                                         load_arrays, load_json, nchw, run_stems, tolerance_table)


def _latent_to_torch(x):
  """Our (B,N,C) latent -> the official (B,C,1,N)."""
  return np.asarray(x).transpose(0, 2, 1)[:, :, None, :]


_TITOK_INPUTS = ("images", "sample_eps", "stage1_ce_targets")


def _titok_stem(fixture_dir: str, stem: str) -> list[Result]:
  meta = load_json(fixture_dir, f"{stem}_config.json")
  config = TiTokConfig.from_official(meta["official_config"], meta.get("sizes"),
                                     meta.get("pixel_decoder"),
                                     dtype=jnp.float32, param_dtype=jnp.float32)
  params = convert_titok(load_arrays(fixture_dir, f"{stem}_state_dict.npz"), config)
  io = load_arrays(fixture_dir, f"{stem}_io.npz")
  model, variables = TiTok(config), {"params": params}

  images = jnp.asarray(io["images"].transpose(0, 2, 3, 1)) * 2.0 - 1.0
  ours = {}
  with jax.default_matmul_precision("highest"):
    # One jitted forward: op-by-op dispatch of the whole model is much slower.
    forward = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))
    (recon, aux), state = forward(variables, images)
    inter = state["intermediates"]
    for part in ("encoder", "decoder"):
      for key, (value,) in inter.get(part, {}).items():
        ours[f"dbg_{key}"] = value
    ours["dbg_enc_patch_embed"] = nchw(ours["dbg_enc_patch_embed"])
    ours["dbg_dec_ffn_out"] = nchw(ours["dbg_dec_ffn_out"])
    ours["enc_out"] = _latent_to_torch(aux["enc_out"])

    if config.quantize_mode == "vq":
      z_q, _ = jax.jit(functools.partial(model.apply, method=TiTok.encode))(variables, images)
      ours["z_normed"] = _latent_to_torch(aux["z"])
      ours["z_quantized"] = _latent_to_torch(z_q)
      ours["indices"] = np.asarray(aux["indices"])[:, None, :]
      losses = vq_losses(aux["z"], aux["z_q_raw"], config.commitment_cost)
      ours.update(quantizer_loss=losses["quantizer_loss"], commitment_loss=losses["commitment"],
                  codebook_loss=losses["codebook"])
      dist = np.sort(np.asarray(model.apply(
          variables, aux["z"], method=lambda m, z: m.quantize.distances(z))), axis=-1)
      ours["codebook_margin_min"] = np.min(dist[..., 1] - dist[..., 0])
      ours["z_from_tokens"] = _latent_to_torch(model.apply(
          variables, aux["indices"], method=TiTok.tokens_to_latents))
    else:
      posterior = DiagonalGaussian(aux["posterior_mean"], aux["posterior_logvar"])
      ours["posterior_mean"] = _latent_to_torch(posterior.mean)
      ours["posterior_logvar"] = _latent_to_torch(posterior.logvar)
      ours["posterior_std"] = _latent_to_torch(jnp.exp(0.5 * posterior.logvar))
      ours["kl"] = kl_divergence(posterior.mean, posterior.logvar)
      eps = jnp.asarray(io["sample_eps"][:, :, 0, :].transpose(0, 2, 1))
      ours["posterior_sample"] = _latent_to_torch(posterior.reparameterize(eps))
      ours["z_quantized"] = _latent_to_torch(posterior.mode())

    if config.is_legacy:
      logits = aux["proxy_logits"]
      ours["decoder_out"] = nchw(logits)
      ours["proxy_codes_argmax"] = np.asarray(jnp.argmax(logits, axis=-1))
      batch = logits.shape[0]
      ours["stage1_ce_loss"] = proxy_code_cross_entropy(
          logits.reshape(batch, -1, logits.shape[-1]), jnp.asarray(io["stage1_ce_targets"]))
      if recon is not None:
        ours["pixel_decoder_in"] = nchw(inter["pixel_decoder_in"][0])
        pixels = nchw((recon + 1.0) / 2.0)
        ours["pixels"] = ours["forward_full"] = pixels
        ours["pixels_clamped"] = np.clip(pixels, 0.0, 1.0)
    else:
      ours["decoder_out"] = nchw((recon + 1.0) / 2.0)

  return compare_io(stem, io, ours, _TITOK_INPUTS, _titok_tolerance)


# The margin is a difference of two O(|z|^2) distances, so its float32 rounding
# is absolute, like an activation's, not relative like a loss's.
_titok_tolerance = tolerance_table(ACTIVATION_TOL, LOSS_TOL, codebook_margin_min=ACTIVATION_TOL,
                                   pixels=PIXEL_TOL, pixels_clamped=PIXEL_TOL,
                                   forward_full=PIXEL_TOL)


def run_titok(fixture_dir: str) -> list[Result]:
  """Every `titok_*` stem: its config, converted weights and each io array."""
  return run_stems(fixture_dir, "titok", _titok_stem)
