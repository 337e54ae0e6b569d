"""`parity llamagen-gpt/-t2i` pass on the official fixtures and fail on perturbed copies.

The tool memoizes its model outputs by config/weights/inputs, so the perturbed
runs only redo the comparison.
"""

import os
import shutil

import numpy as np
import pytest

from vwt_jax.tools import parity


def _copy(fixtures_dir, stem, dst):
  for suffix in ("_config.json", "_state_dict.npz", "_io.npz"):
    shutil.copy(os.path.join(fixtures_dir, "llamagen", stem + suffix), dst)


def _rewrite_io(path, **changes):
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays.update({k: v(arrays) for k, v in changes.items()})
  np.savez(path, **arrays)


@pytest.mark.parametrize("kind,stem,marker", [
    ("llamagen-gpt", "gpt", "gpt/gen_greedy_cfg4_interval16"),
    ("llamagen-t2i", "t2i", "t2i/gen_cfg7p5_step_logits_mixed"),
])
def test_parity_passes_then_fails_on_perturbed_copy(fixtures_dir, tmp_path, capsys, kind, stem,
                                                    marker):
  assert parity.main([kind, os.path.join(fixtures_dir, "llamagen")]) == 0
  out = capsys.readouterr().out
  assert marker in out and "0 failed" in out

  _copy(fixtures_dir, stem, tmp_path)
  io_path = str(tmp_path / f"{stem}_io.npz")

  def flip_one_token(a):
    tokens = a["gen_greedy_nocfg"].copy()
    tokens[1, 100] = (tokens[1, 100] + 1) % 512
    return tokens

  _rewrite_io(io_path, gen_greedy_nocfg=flip_one_token,
              logits=lambda a: a["logits"] + 2e-4, mystery=lambda a: np.zeros(3))
  assert parity.main([kind, str(tmp_path)]) == 1
  lines = {l.split()[0]: l for l in capsys.readouterr().out.splitlines() if "/" in l.split()[0]}
  for name in ("gen_greedy_nocfg", "logits", "mystery"):
    assert lines[f"{stem}/{name}"].endswith("FAIL"), lines[f"{stem}/{name}"]
  assert lines[f"{stem}/h_layer0"].endswith("OK")


def test_missing_fixtures_fail(tmp_path):
  assert parity.main(["llamagen-gpt", str(tmp_path)]) == 1
  assert parity.main(["llamagen-t2i", str(tmp_path)]) == 1


@pytest.mark.parametrize("grid", [24, 32])
def test_the_384_and_512_px_grids_decode_as_the_official_gpt(capsys, grid):
  # Sets of this repository (tests/fixtures/README.md), not of VWT_FIXTURES.
  fixture = os.path.join(os.path.dirname(__file__), "..", "fixtures", f"llamagen_grid{grid}")
  assert parity.main(["llamagen-gpt", fixture]) == 0
  out = capsys.readouterr().out
  assert "gpt/freqs_cis" in out and "gpt/gen_greedy_cfg4" in out and "0 failed" in out
