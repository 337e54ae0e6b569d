"""Numerical parity of our models against fixtures made with the official code.

  python -m vwt_jax.tools.parity titok FIXTURE_DIR

Each kind is a function registered in `KINDS`; it returns one `Result` per
fixture array. Every array of an io file must be either compared or declared
an input, so nothing is silently skipped. Exit status 1 on any failure.
"""

import argparse
import dataclasses
import functools
import glob
import json
import os
import sys
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Suggested tolerances of the fixture README (float32, highest matmul precision).
ACTIVATION_TOL = dict(atol=1e-4, rtol=1e-4)
PIXEL_TOL = dict(atol=2e-4, rtol=0.0)
LOSS_TOL = dict(atol=1e-7, rtol=1e-5)
EXACT = dict(atol=0.0, rtol=0.0)


@dataclasses.dataclass
class Result:
  name: str
  max_abs_err: float
  tol: str
  ok: bool

  def line(self) -> str:
    return f"{self.name}  {self.max_abs_err:.3e}  {self.tol}  {'OK' if self.ok else 'FAIL'}"


def compare(name: str, ours, ref, tol: dict) -> Result:
  ours, ref = np.asarray(ours), np.asarray(ref)
  if ours.shape != ref.shape:
    return Result(name, float("inf"), f"shape {ours.shape} vs {ref.shape}", False)
  if tol is EXACT:
    mismatches = int(np.sum(ours != ref))
    err = float(np.max(np.abs(ours.astype(np.float64) - ref))) if ours.size else 0.0
    return Result(name, err, "exact", mismatches == 0)
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  err = float(np.max(diff)) if diff.size else 0.0
  ok = bool(np.all(diff <= tol["atol"] + tol["rtol"] * np.abs(ref))) and np.isfinite(err)
  return Result(name, err, f"atol={tol['atol']:g},rtol={tol['rtol']:g}", ok)


# --------------------------------------------------------------------------- titok

def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _latent_to_torch(x):
  """Our (B,N,C) latent -> the official (B,C,1,N)."""
  return np.asarray(x).transpose(0, 2, 1)[:, :, None, :]


def _latent_from_torch(x):
  return np.asarray(x)[:, :, 0, :].transpose(0, 2, 1)


_TITOK_INPUTS = ("images", "sample_eps", "stage1_ce_targets")


def _titok_stem(fixture_dir: str, stem: str) -> list[Result]:
  # pylint: disable=g-import-not-at-top
  # Imported here so that argument parsing does not pay for building models.
  from vwt_jax.conversion import torch_state
  from vwt_jax.conversion.titok import convert_titok
  from vwt_jax.losses.classification import proxy_code_cross_entropy
  from vwt_jax.losses.quantizer import kl_divergence, vq_losses
  from vwt_jax.models.quantizers import DiagonalGaussian
  from vwt_jax.models.titok import TiTok, TiTokConfig
  # pylint: enable=g-import-not-at-top

  with open(os.path.join(fixture_dir, f"{stem}_config.json")) as f:
    meta = json.load(f)
  config = TiTokConfig.from_official(meta["official_config"], meta.get("sizes"),
                                     meta.get("pixel_decoder"),
                                     dtype=jnp.float32, param_dtype=jnp.float32)
  params = convert_titok(
      torch_state.load_state_dict(os.path.join(fixture_dir, f"{stem}_state_dict.npz")), config)
  io = torch_state.load_state_dict(os.path.join(fixture_dir, f"{stem}_io.npz"))
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
    ours["dbg_enc_patch_embed"] = _nchw(ours["dbg_enc_patch_embed"])
    ours["dbg_dec_ffn_out"] = _nchw(ours["dbg_dec_ffn_out"])
    ours["enc_out"] = _latent_to_torch(aux["enc_out"])

    if config.quantize_mode == "vq":
      z_q, _ = jax.jit(functools.partial(model.apply, method=TiTok.encode))(variables, images)
      ours["z_normed"] = _latent_to_torch(aux["z"])
      ours["z_quantized"] = _latent_to_torch(z_q)
      ours["indices"] = np.asarray(aux["indices"])[:, None, :]
      losses = vq_losses(aux["z"], aux["z_q_raw"], config.commitment_cost)
      ours["quantizer_loss"] = losses["quantizer_loss"]
      ours["commitment_loss"] = losses["commitment"]
      ours["codebook_loss"] = losses["codebook"]
      dist = np.sort(np.asarray(model.apply(
          variables, aux["z"], method=lambda m, z: m.quantize.distances(z))), axis=-1)
      ours["codebook_margin_min"] = np.min(dist[..., 1] - dist[..., 0])
      ours["z_from_tokens"] = _latent_to_torch(model.apply(
          variables, aux["indices"], method=TiTok.tokens_to_latents))
    else:
      posterior = DiagonalGaussian(aux["posterior_mean"], aux["posterior_logvar"])
      ours["posterior_mean"] = _latent_to_torch(posterior.mean)
      ours["posterior_logvar"] = _latent_to_torch(posterior.logvar)
      ours["posterior_std"] = _latent_to_torch(posterior.std)
      ours["kl"] = kl_divergence(posterior.mean, posterior.logvar)
      ours["posterior_sample"] = _latent_to_torch(
          posterior.reparameterize(jnp.asarray(_latent_from_torch(io["sample_eps"]))))
      ours["z_quantized"] = _latent_to_torch(posterior.mode())

    if config.is_legacy:
      logits = aux["proxy_logits"]
      ours["decoder_out"] = _nchw(logits)
      ours["proxy_codes_argmax"] = np.asarray(jnp.argmax(logits, axis=-1))
      batch = logits.shape[0]
      ours["stage1_ce_loss"] = proxy_code_cross_entropy(
          logits.reshape(batch, -1, logits.shape[-1]), jnp.asarray(io["stage1_ce_targets"]))
      if recon is not None:
        ours["pixel_decoder_in"] = _nchw(inter["pixel_decoder_in"][0])
        pixels = _nchw((recon + 1.0) / 2.0)
        ours["pixels"] = ours["forward_full"] = pixels
        ours["pixels_clamped"] = np.clip(pixels, 0.0, 1.0)
    else:
      ours["decoder_out"] = _nchw((recon + 1.0) / 2.0)

  results = []
  for name in io:
    label = f"{stem}/{name}"
    if name in _TITOK_INPUTS:
      results.append(Result(label, 0.0, "input", True))
      continue
    if name not in ours:
      results.append(Result(label, float("nan"), "no comparison known", False))
      continue
    results.append(compare(label, ours[name], io[name], _titok_tolerance(name, io[name])))
  return results


def _titok_tolerance(name: str, ref: np.ndarray) -> dict:
  if np.issubdtype(ref.dtype, np.integer):
    return EXACT
  # The margin is a difference of two O(|z|^2) distances, so its float32
  # rounding is absolute, like an activation's, not relative like a loss's.
  if ref.ndim == 0 and name != "codebook_margin_min":
    return LOSS_TOL
  if name in ("pixels", "pixels_clamped", "forward_full"):
    return PIXEL_TOL
  return ACTIVATION_TOL


def run_titok(fixture_dir: str) -> list[Result]:
  paths = sorted(glob.glob(os.path.join(fixture_dir, "titok_*_config.json")))
  if not paths:
    return [Result(f"{fixture_dir}/titok_*_config.json", float("nan"), "no fixtures", False)]
  results = []
  for path in paths:
    results += _titok_stem(fixture_dir, os.path.basename(path)[:-len("_config.json")])
  return results


KINDS: dict[str, Callable[[str], list[Result]]] = {
    "titok": run_titok,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.tools.parity", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="kind", required=True)
  for kind in KINDS:
    sub.add_parser(kind, help=f"compare {kind} fixtures").add_argument("fixture_dir")
  args = parser.parse_args(argv)
  results = KINDS[args.kind](args.fixture_dir)
  for r in results:
    print(r.line())
  failed = [r for r in results if not r.ok]
  print(f"parity {args.kind}: {len(results)} arrays compared, {len(failed)} failed"
        + ("" if failed else " -- all OK"))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
