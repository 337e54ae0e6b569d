"""vwt_jax.sample for t2i runs: captions -> the recorded caption encoder -> captioned grid."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import save_random_generator_run, save_random_titok_run
from helpers import save_tiny_t5_encoder, tiny_titok_config
from vwt_jax import sample as sample_lib
from vwt_jax.core import images as images_lib
from vwt_jax.data import codes
from vwt_jax.families import text_encoders

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
CAPTIONS = ["A red disc moves left over a blue sky.", "Two green squares grow.",
            "A yellow star spins on a sandy beach while the camera pans right."]
# The tiny tokenizer cuts these into 32, 18 and 55 tokens.
LENGTH = 24


@pytest.fixture(scope="module")
def t2i_run(shapes_dir, tmp_path_factory):
  """A random tiny t2i GPT over a random tiny TiTok's codes, its captions encoded by a
  random tiny T5 recorded in the code dataset (as `extract_codes --vript_root` does)."""
  titok = str(tmp_path_factory.mktemp("titok"))
  titok_config = tiny_titok_config(shapes_dir)
  save_random_titok_run(titok_config, titok)
  encoder = text_encoders.load_caption_encoder(
      "t5", save_tiny_t5_encoder(str(tmp_path_factory.mktemp("t5")), CAPTIONS),
      max_length=LENGTH)
  code_dir = str(tmp_path_factory.mktemp("codes"))
  meta = codes.CodeMetadata(
      tokenizer="titok", code_shape=(8,), vocab_size=64, num_classes=0, views="center",
      image_size=16, caption_dim=encoder.dim, caption_length=LENGTH,
      source={"checkpoint": titok, "config": titok_config.to_dict(),
              "caption_encoder": text_encoders.describe(encoder)})
  features, mask = encoder.encode(CAPTIONS)
  with codes.CodeDatasetWriter(code_dir, meta, split="train") as writer:
    for i in range(3):
      writer.add(np.full((1, 8), i), 0, caption_emb=features[i], caption_mask=mask[i])
  run = str(tmp_path_factory.mktemp("gpt"))
  return save_random_generator_run("tiny,cond=t2i", code_dir, run), run


def test_captions_are_encoded_by_the_recorded_encoder_and_left_padded(t2i_run):
  # Sampling itself runs in the command-line test below (one compile).
  gen, _ = sample_lib.load(*t2i_run)
  # Prefix length and width come from the code dataset.
  assert (gen.cfg.cls_token_num, gen.cfg.caption_dim) == (LENGTH, 32)
  encoder = sample_lib.caption_encoder(gen)
  assert text_encoders.describe(encoder) == gen.metadata.source["caption_encoder"]
  cond, emb_mask = sample_lib.caption_conditions(encoder, CAPTIONS)
  # As the code reader lays out training captions: the real tokens at the end,
  # zeros before them (the 18-token caption; the others fill all 24).
  features, mask = encoder.encode(CAPTIONS)
  assert emb_mask.sum(1).tolist() == [24, 18, 24] and not cond[1, :6].any()
  np.testing.assert_array_equal(cond[1, 6:], features[1, :18])
  np.testing.assert_array_equal(cond[[0, 2]], features[[0, 2]])
  with pytest.raises(ValueError, match="gives 8 tokens of 32-d features; the generator takes "
                     f"{LENGTH} of 32"):
    sample_lib.caption_encoder(gen, "t5", encoder.model_dir, max_length=8)


def test_command_line_writes_captions_to_images(t2i_run, tmp_path):
  _, run = t2i_run
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(CAPTIONS[:2]) + "\n\n")
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.sample", "--checkpoint", run, "--captions",
       str(prompts), "--per_caption", "2", "--cfg", "3.0", "--batch_size", "4"],
      env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["grid"] == "captions_to_images.png" and summary["num_samples"] == 4
  assert summary["cfg_scale"] == 3.0
  # Two rows (one per caption) of two 16 px samples shown at 128 px, text below.
  picture = np.asarray(Image.open(tmp_path / "captions_to_images.png"))
  assert picture.shape == (2 * images_lib.caption_cell_height(128), 2 * 128, 3)
  text = picture[128:images_lib.caption_cell_height(128), :128]
  assert (text < 128).any() and np.median(text) == 255
