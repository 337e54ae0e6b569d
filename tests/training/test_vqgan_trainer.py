"""The LlamaGen VQGAN trainer end to end on a tiny model and the synthetic shapes."""

import json
import os

import jax
import numpy as np

from helpers import tiny_vqgan_config
from vwt_jax import main as main_lib
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.families import vqgan as vqgan_family


def test_tiny_run_checkpoints_batch_stats_and_evaluates(shapes_dir, tmp_path):
  config = tiny_vqgan_config(shapes_dir, eval_every=4, checkpoint_every=4)
  result = main_lib.run(config, str(tmp_path))
  assert result["step"] == 4
  train = result["train"]
  for key in ("loss", "reconstruction_loss", "vq_loss", "commit_loss", "generator_adv_loss",
              "discriminator_loss", "codebook_usage"):
    assert np.isfinite(train[key]), key
  assert train["nonfinite"] == 0 and result["eval"]["psnr"] > 0
  # Whole-eval-set codebook usage: at least one of the 64 codes, at most all.
  assert 1 / 64 <= result["eval"]["codebook_usage"] <= 1
  assert 1 <= result["eval"]["codebook_perplexity"] <= 64 and -1 < result["eval"]["ssim"] < 1
  assert os.path.exists(tmp_path / "reconstructions.png")
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    assert any("train/loss" in json.loads(line) for line in f)

  # The discriminator's BatchNorm statistics are trained and checkpointed: the
  # running variance moves from 1 towards batch variances that differ by O(1),
  # far past allclose's 1e-5.
  stats = checkpoint_lib.load_state_subtree(str(tmp_path), "disc_batch_stats")
  assert not np.allclose(stats["layer_1_norm"]["var"], 1.0)
  # A run folder initialises the model (the tokenizer loader's path too).
  params = vqgan_family.load_params(str(tmp_path), config)
  state_params = jax.device_get(result["state"]["params"])
  np.testing.assert_array_equal(params["quantize"]["embedding"],
                                state_params["quantize"]["embedding"])
