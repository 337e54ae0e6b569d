"""Reconstruction evaluation: the reconstruct_eval command, the shared metric loop, usage."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import save_random_titok_run, tiny_titok_config
from vwt_jax import reconstruct_eval
from vwt_jax.core import images as images_lib
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.evaluation import codebook
from vwt_jax.evaluation import evaluator
from vwt_jax.evaluation import reconstruction as recon_eval
from vwt_jax.families import common
from vwt_jax.families import tokenizer as tokenizer_lib
from vwt_jax.tools import parity_eval


def test_codebook_usage_and_perplexity_of_a_known_histogram():
  counts = codebook.code_histogram(np.array([[0, 0], [1, 2]]), 4)
  np.testing.assert_array_equal(counts, [2, 1, 1, 0])
  stats = codebook.usage_stats(counts)
  assert stats["codebook_usage"] == 0.75
  # p = (1/2, 1/4, 1/4): entropy 1.5 bits, perplexity 2**1.5. float64, a few
  # terms: rounding ~1e-16.
  np.testing.assert_allclose(stats["codebook_perplexity"], 2 ** 1.5, rtol=1e-12)
  uniform = codebook.usage_stats(codebook.code_histogram(np.arange(16).repeat(3), 16))
  np.testing.assert_allclose(uniform["codebook_perplexity"], 16.0, rtol=1e-12)
  assert codebook.usage_stats(codebook.code_histogram(np.full(10, 5), 16)) == {
      "codebook_usage": 1 / 16, "codebook_perplexity": 1.0}
  with pytest.raises(ValueError, match="outside a codebook of 8"):
    codebook.code_histogram(np.array([0, 8]), 8)


def _fake_inception(params, images):
  """Cheap stand-in features: per-channel means and a coarse 4x4 thumbnail."""
  x = images.astype(jnp.float32) * params["scale"]
  pool = jnp.concatenate([x.mean(axis=(1, 2)), (x ** 2).mean(axis=(1, 2))], axis=-1)
  thumb = jax.image.resize(x, (x.shape[0], 4, 4, 3), "linear").reshape(x.shape[0], -1)
  return pool, {"spatial": thumb}


def test_metric_loop_masks_truncates_and_scores_against_the_originals():
  rng = np.random.default_rng(0)
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
  batches = []
  for _ in range(3):
    images = transforms.to_float(rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8))
    batches.append({"image": images, "mask": np.arange(8) < 6})

  def reconstruct(images):
    codes = jnp.clip((images[:, ::6, ::6, 0] + 1) * 2, 0, 3).astype(jnp.int32)
    return jnp.clip(images * 0.8 + 0.05, -1, 1), codes.reshape(len(images), -1)

  runner = evaluator.InceptionRunner(None, mesh=mesh, batch_size=8, apply_fn=_fake_inception,
                                     params={"scale": np.float32(1.0)})
  lpips = jax.jit(lambda a, b: jnp.mean(jnp.abs(a - b), axis=(1, 2, 3)))
  networks = recon_eval.Networks(lpips=lpips, inception=runner)
  result = recon_eval.evaluate_reconstruction(reconstruct, iter(batches), mesh, num_images=15,
                                              grid_images=4, codebook_size=4,
                                              networks=networks)
  # 6 valid per batch: 6 + 6 + the first 3 of the third batch.
  valid = np.concatenate([b["image"][:6] for b in batches])[:15]
  recon = np.asarray(reconstruct(jnp.asarray(valid))[0])
  assert result["num_images"] == 15
  # PSNR is float64, of float32 reconstructions, jitted (maybe one fused rounding)
  # vs eager: pixels differ by <= f32_atol(0.5, reduction=2) on [0, 1]; an RMS
  # error moves by at most that, PSNR by <= -20 log10(1 - that / RMS).
  psnrs = recon_eval.psnr(valid, recon)
  np.testing.assert_allclose(result["psnr"], np.mean(psnrs), rtol=0, atol=-20 * np.log10(
      1 - helpers.f32_atol(0.5, reduction=2) * 10 ** (np.max(psnrs) / 20)))
  # float32 means of positive terms: 12*12*3 per image then over 15 images vs
  # numpy's over all 15*432; such a sum's terms sum to the value itself.
  want_l1 = np.mean(np.abs(valid - recon))
  helpers.assert_allclose_f32(result["lpips"], want_l1, reduction=15 * 432, depth=2,
                              scale=want_l1)
  assert 0 < result["ssim"] < 1
  counts = codebook.code_histogram(np.asarray(reconstruct(jnp.asarray(valid))[1]), 4)
  assert result["codebook_usage"] == codebook.usage_stats(counts)["codebook_usage"]
  want = evaluator.compute_metrics(
      runner.activations([images_lib.quantize(valid)]),
      runner.activations([images_lib.quantize(recon)]))
  # The same features accumulated in other chunks: float64 statistics, compared
  # as the parity tool compares FIDs; the 48-d sFID from 15 images is rank
  # deficient. Precision and recall are fractions of 15 counts: a miss is 1/15.
  counts_tol = dict(atol=0.5 / 15, rtol=0)
  tols = {"fid": parity_eval.FID_TOL, "sfid": parity_eval.FID_RANK_DEFICIENT_TOL,
          "precision": counts_tol, "recall": counts_tol}
  for key in ("fid", "sfid", "precision", "recall"):
    np.testing.assert_allclose(result["rfid" if key == "fid" else key], want[key], **tols[key])
  assert result["rfid"] > 1 and "inception_score" not in result
  # 12-px images shown 8x (`images_lib.upscale`: cells of at least 96 px).
  assert result["grid"].shape == (2 * 96, 4 * 96, 3)


def test_reconstruct_eval_writes_adm_batches_and_metrics(shapes_dir, tmp_path, capsys):
  config = tiny_titok_config(shapes_dir)
  run = str(tmp_path / "titok")
  save_random_titok_run(config, run)
  out = str(tmp_path / "rfid")
  # 16 validation images in batches of 8: the second batch is cut at 12.
  result = reconstruct_eval.run(common.run_config(run), run, out, num_images=12,
                                batch_size=8)
  with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  assert metrics["num_images"] == 12 and metrics == json.loads(json.dumps(result))
  with np.load(os.path.join(out, "originals.npz")) as f:
    originals = f["arr_0"]
  with np.load(os.path.join(out, "reconstructions.npz")) as f:
    reconstructions = f["arr_0"]
  assert originals.shape == reconstructions.shape == (12, 16, 16, 3)
  ds = pipeline.create_image_dataset(config.data, split="validation", global_batch_size=16,
                                     seed=config.seed, train=False)
  images = next(iter(ds))["image"][:12]
  np.testing.assert_array_equal(originals, images_lib.quantize(images))
  # Usage over every code of the 12 images, from the tokenizer itself.
  tok = tokenizer_lib.load_tokenizer(run)
  codes = np.asarray(tok.encode(jnp.asarray(np.concatenate([images, images[:4]]))))[:12]
  assert metrics["codebook_usage"] == codebook.usage_stats(
      codebook.code_histogram(codes, 64))["codebook_usage"]
  assert metrics["codebook_perplexity"] > 1
  # PSNR is of the float reconstructions; the uint8 files agree to rounding:
  # half a grey level (0.5/255 on [0, 1]) per pixel moves an RMS error by at
  # most that, so PSNR by <= -20 log10(1 - 0.5/255 / RMS) (the originals are exact).
  from_files = recon_eval.psnr(transforms.to_float(originals), transforms.to_float(reconstructions))
  np.testing.assert_allclose(metrics["psnr"], np.mean(from_files), rtol=0, atol=-20 * np.log10(
      1 - 0.5 / 255 * 10 ** (np.max(from_files) / 20)))
  assert -1 < metrics["ssim"] < 1
  assert "rfid" not in metrics and "lpips" not in metrics
  printed = capsys.readouterr().out
  assert "PSNR (dB):" in printed and "codebook usage:" in printed
  assert "rFID/IS/precision/recall skipped: set config.eval.inception_weights" in printed
  assert "LPIPS skipped" in printed
