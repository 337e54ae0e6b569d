"""`parity llamagen-vq` passes on the official fixtures and fails on perturbed ones."""

import os
import shutil

import numpy as np

from vwt_jax.tools import parity


def test_parity_passes_on_fixtures(fixtures_dir, capsys):
  assert parity.main(["llamagen-vq", os.path.join(fixtures_dir, "llamagen")]) == 0
  out = capsys.readouterr().out
  assert "vq/indices" in out and "vq/entropy_loss_unweighted" in out and "0 failed" in out


def test_perturbed_and_unknown_arrays_fail(fixtures_dir, tmp_path, capsys):
  for name in ("vq_config.json", "vq_state_dict.npz", "vq_io.npz"):
    shutil.copy(os.path.join(fixtures_dir, "llamagen", name), tmp_path)
  io_path = str(tmp_path / "vq_io.npz")
  with np.load(io_path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays["dec"] = arrays["dec"] + 1e-3
  arrays["indices"] = arrays["indices"].copy()
  arrays["indices"][0, 0] += 1
  arrays["mystery"] = np.zeros(3, np.float32)
  np.savez(io_path, **arrays)
  assert parity.main(["llamagen-vq", str(tmp_path)]) == 1
  failed = [line for line in capsys.readouterr().out.splitlines() if line.endswith("FAIL")]
  assert [line.split()[0] for line in failed] == ["vq/indices", "vq/dec", "vq/mystery"]


def test_empty_dir_fails(tmp_path):
  assert parity.main(["llamagen-vq", str(tmp_path)]) == 1
