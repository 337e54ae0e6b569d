"""`python -m vwt_jax.reconstruct` on a user's own pictures."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from helpers import save_random_titok_run, tiny_titok_config
from vwt_jax import reconstruct as reconstruct_lib
from vwt_jax.core import images as images_lib
from vwt_jax.data import transforms
from vwt_jax.families import tokenizer as tokenizer_lib


def _photos(folder):
  """Pictures of several sizes and formats, one nested, one broken, one not an image."""
  rng = np.random.default_rng(0)
  (folder / "nested").mkdir(parents=True)
  shapes = {"b.png": (30, 45), "a.jpg": (40, 23), "nested/c.webp": (16, 16)}
  for name, shape in shapes.items():
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / name)
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  (folder / "notes.txt").write_text("not a picture")
  return [str(folder / n) for n in ("a.jpg", "b.png", "nested/c.webp")]


def test_image_paths_walks_folders_in_name_order_and_names_what_is_missing(tmp_path):
  expected = _photos(tmp_path / "photos")
  found = reconstruct_lib.image_paths([str(tmp_path / "photos")])
  assert [p for p in found if not p.endswith("broken.png")] == expected
  assert reconstruct_lib.image_paths([str(tmp_path / "photos" / "*.png")]) == [
      str(tmp_path / "photos" / n) for n in ("b.png", "broken.png")]
  with pytest.raises(FileNotFoundError, match="nothing.jpg: no such file"):
    reconstruct_lib.image_paths([str(tmp_path / "nothing.jpg")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no image file"):
    reconstruct_lib.image_paths([str(tmp_path / "empty")])


def test_reconstruct_command_tokenizes_your_pictures(shapes_dir, tmp_path):
  config = tiny_titok_config(shapes_dir)
  run = str(tmp_path / "run")
  save_random_titok_run(config, run)
  photos = _photos(tmp_path / "photos")
  grid, tokens = str(tmp_path / "grid.png"), str(tmp_path / "out" / "tokens.npz")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.reconstruct", "--checkpoint", run, "--output", grid,
       "--tokens", tokens, str(tmp_path / "photos")],
      env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "skipped 1 of 4 files" in result.stdout and "broken.png skipped" in result.stderr

  # The tokens are the tokenizer's codes of the TiTok evaluation crops.
  size = config.data.image_size
  crops = np.stack([transforms.resize_center_crop(np.asarray(Image.open(p).convert("RGB")),
                                                  size) for p in photos])
  # (Padded to a batch of 8: the test process has 8 devices.)
  padded = np.concatenate([crops, np.repeat(crops[-1:], 5, 0)])
  expected = np.asarray(tokenizer_lib.load_tokenizer(run).encode(transforms.to_float(padded)))[:3]
  with np.load(tokens) as saved:
    assert list(saved["paths"]) == photos
    np.testing.assert_array_equal(saved["codes"], expected)
    assert saved["psnr"].shape == (3,) and np.all(np.isfinite(saved["psnr"]))
  printed = {line.split(": ")[0]: line.split(": ")[1] for line in result.stdout.splitlines()
             if ": " in line and not line.startswith("{")}
  assert [list(map(int, printed[p].split())) for p in photos] == expected.tolist()
  summary = json.loads(result.stdout.splitlines()[-1])
  assert summary["num_images"] == 3 and summary["tokens"] == tokens
  # Crops (enlarged pixel by pixel) above reconstructions, one column per picture.
  cells = images_lib.upscale(crops)
  with Image.open(grid) as image:
    shown = np.asarray(image)
  assert shown.shape == (2 * cells.shape[1], 3 * cells.shape[2], 3)
  np.testing.assert_array_equal(shown[:cells.shape[1]], np.concatenate(list(cells), axis=1))
