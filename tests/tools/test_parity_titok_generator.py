"""`parity titok-generator` passes on the official fixtures and fails on perturbed ones."""

import os
import shutil

import numpy as np

from vwt_jax.tools import parity

STEM = "generator_uvitbert"


def _perturbed_copy(fixtures_dir, dst, **changes):
  for suffix in ("_config.json", "_state_dict.npz", "_io.npz"):
    shutil.copy(os.path.join(fixtures_dir, "titok", STEM + suffix), dst)
  path = os.path.join(dst, f"{STEM}_io.npz")
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays.update({k: fn(arrays.get(k)) for k, fn in changes.items()})
  np.savez(path, **arrays)


def test_parity_passes_on_fixtures(fixtures_dir, capsys):
  assert parity.main(["titok-generator", os.path.join(fixtures_dir, "titok")]) == 0
  out = capsys.readouterr().out
  for name in ("generator_imagebert/generate_T0_linear", "generator_uvitbert/logits_uncond",
               "generator_uvitbert/schedule_power_cosine"):
    assert name in out
  assert "20 items compared, 0 failed" in out


def test_perturbed_and_unknown_arrays_fail(fixtures_dir, tmp_path, capsys):
  def flip_one_token(ids):
    ids = ids.copy()
    ids[1, 2] = (ids[1, 2] + 1) % 128
    return ids

  _perturbed_copy(fixtures_dir, tmp_path,
                  generate_T0_power_cosine=flip_one_token,
                  logits_cond=lambda x: x + 1e-3,
                  schedule_linear=lambda x: x + np.eye(*x.shape)[:, ::-1],
                  mystery=lambda _: np.zeros(3, np.float32))
  assert parity.main(["titok-generator", str(tmp_path)]) == 1
  failed = {line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.endswith("FAIL")}
  assert failed == {f"{STEM}/{name}" for name in
                    ("generate_T0_power_cosine", "logits_cond", "schedule_linear", "mystery")}


def test_empty_dir_fails(tmp_path):
  assert parity.main(["titok-generator", str(tmp_path)]) == 1
