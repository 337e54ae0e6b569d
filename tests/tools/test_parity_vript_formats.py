"""`python -m vwt_jax.tools.parity vript-formats` on the fixture and on a damaged copy."""

import json
import os
import shutil

import pytest

from vwt_jax.tools import parity
from vwt_jax.tools import parity_vript_formats


@pytest.fixture(scope="module")
def vript_dir(fixtures_dir):
  return os.path.join(fixtures_dir, "vript")


def test_fixture_passes(vript_dir, capsys):
  results = parity_vript_formats.run_vript_formats(vript_dir)
  assert all(r.ok for r in results)
  # 8 format/stage entries x (8 fields + format) + 10 keyword-rule entries x 8 fields + 3 counts.
  assert len(results) == 8 * 9 + 10 * 8 + 3
  assert parity.main(["vript-formats", vript_dir]) == 0
  assert capsys.readouterr().out.endswith("155 items compared, 0 failed -- all OK\n")


def _damaged_copy(vript_dir, tmp_path, edit):
  root = tmp_path / "vript"
  shutil.copytree(os.path.join(vript_dir, "annotations"), root / "annotations")
  with open(os.path.join(vript_dir, "formats.json")) as f:
    fixture = json.load(f)
  edit(fixture)
  with open(root / "formats.json", "w") as f:
    json.dump(fixture, f)
  return str(root)


def test_one_changed_character_fails(vript_dir, tmp_path, capsys):
  position = {}

  def edit(fixture):
    entry = fixture["all_samples_keyword_rule"]["stage2_concat"][1]
    i = entry["prompt"].index("[6.4, 10.7]") + 3
    position["index"] = i
    entry["prompt"] = entry["prompt"][:i] + "5" + entry["prompt"][i + 1:]

  root = _damaged_copy(vript_dir, tmp_path, edit)
  failed = [r for r in parity_vript_formats.run_vript_formats(root) if not r.ok]
  assert [r.name for r in failed] == ["all_samples_keyword_rule/stage2_concat[1]/prompt"]
  assert failed[0].max_abs_err == 1.0
  assert failed[0].tol.startswith(f"first difference at index {position['index']} ")
  assert "ours '4, 10.7]" in failed[0].tol and "ref '5, 10.7]" in failed[0].tol
  assert parity.main(["vript-formats", root]) == 1
  assert "155 items compared, 1 failed" in capsys.readouterr().out


def test_unknown_field_and_format_fail(vript_dir, tmp_path):
  def edit(fixture):
    fixture["formats"]["single_scene"]["stage1"]["num_frames"] = 64
    fixture["formats"]["multi_scene"]["stage1"]["patched"] = "random window sampling replaced"
    fixture["formats"]["single_scene_narrated"] = {}

  root = _damaged_copy(vript_dir, tmp_path, edit)
  failed = {r.name: r.tol for r in parity_vript_formats.run_vript_formats(root) if not r.ok}
  assert set(failed) == {
      "formats/single_scene_narrated", "formats/single_scene/stage1/num_frames",
      # Without the recorded patch the keyword rule picks the voice-over format.
      "formats/multi_scene/stage1/format", "formats/multi_scene/stage1/prompt",
      "formats/multi_scene/stage1/model_input"}
  assert failed["formats/single_scene_narrated"] == "unknown format"
  assert failed["formats/single_scene/stage1/num_frames"] == "no comparison known"
  assert failed["formats/multi_scene/stage1/prompt"].startswith(
      "first difference at index 0 (lengths 329 vs 106): ours 'Voiceover:")
