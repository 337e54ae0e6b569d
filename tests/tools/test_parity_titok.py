"""The parity tool passes on the official fixtures and fails on perturbed ones."""

import os
import shutil

import numpy as np

from vwt_jax.tools import parity

STEM = "titok_single_stage_vq"


def _copy_stem(fixtures_dir, dst):
  for suffix in ("_config.json", "_state_dict.npz", "_io.npz"):
    shutil.copy(os.path.join(fixtures_dir, "titok", STEM + suffix), dst)


def _rewrite_io(path, **changes):
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays.update(changes)
  np.savez(path, **arrays)


def test_parity_passes_on_fixtures(fixtures_dir, capsys):
  assert parity.main(["titok", os.path.join(fixtures_dir, "titok")]) == 0
  out = capsys.readouterr().out
  assert "titok_legacy_vq/forward_full" in out and "0 failed" in out


def test_perturbed_array_fails(fixtures_dir, tmp_path, capsys):
  _copy_stem(fixtures_dir, tmp_path)
  io_path = str(tmp_path / f"{STEM}_io.npz")
  with np.load(io_path) as data:
    decoder_out = data["decoder_out"]
  _rewrite_io(io_path, decoder_out=decoder_out + 1e-2)
  assert parity.main(["titok", str(tmp_path)]) == 1
  assert f"{STEM}/decoder_out" in capsys.readouterr().out


def test_unknown_array_fails(fixtures_dir, tmp_path, capsys):
  _copy_stem(fixtures_dir, tmp_path)
  _rewrite_io(str(tmp_path / f"{STEM}_io.npz"), mystery=np.zeros(3, np.float32))
  assert parity.main(["titok", str(tmp_path)]) == 1
  assert "mystery" in capsys.readouterr().out


def test_empty_dir_fails(tmp_path):
  assert parity.main(["titok", str(tmp_path)]) == 1
