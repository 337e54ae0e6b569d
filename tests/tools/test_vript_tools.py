"""The Vript command-line tools: training files, preview picture, HAL baselines."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from vwt_jax.core import images as images_lib
from vwt_jax.data.vript import clip_source
from vwt_jax.tools import build_vript_formats
from vwt_jax.tools import preview_vript
from vwt_jax.tools import vript_baselines

from helpers import copy_vript_root


@pytest.fixture
def root(fixtures_dir, tmp_path):
  return copy_vript_root(fixtures_dir, tmp_path)


def test_stage1_files_hold_the_official_single_samples(root, fixtures_dir, tmp_path):
  counts = build_vript_formats.write(root, "stage1", str(tmp_path / "out"))

  with open(os.path.join(fixtures_dir, "vript", "formats.json")) as f:
    expected = json.load(f)["all_samples_keyword_rule"]["stage1_single"]
  with open(tmp_path / "out" / "vript_stage1_single.json") as f:
    single = json.load(f)
  ours = [r for r in single if "/kTn3bC7xQ2w/" in r["video"]]
  assert [r["video"] for r in ours] == [e["video"] for e in expected]
  assert [r["QA"] for r in ours] == [[{"i": e["prompt"], "q": "", "a": e["target"]}]
                                     for e in expected]
  # 9 captioned clips with ASR lines over the 3 videos; two of them pass the
  # keyword rule (Scene-001 and Scene-004 of kTn3bC7xQ2w).
  assert counts["single_scene"] + counts["single_scene_voiceover"] == len(single) == 9
  assert counts["single_scene_voiceover"] == 2

  with open(tmp_path / "out" / "vript_stage1_concat.json") as f:
    concat = json.load(f)
  assert len(concat) == counts["multi_scene"] + counts["multi_scene_voiceover"] > 0
  for record in concat:
    assert isinstance(record["video"], list) and record["video"]
    assert record["QA"][0]["a"].startswith("[Scene 1: ")


def test_preview_shows_each_clip_with_its_caption(root, tmp_path):
  out = str(tmp_path / "preview.png")
  assert preview_vript.preview(root, out, num_clips=5, columns=3, cell=64) == (5, [])
  picture = np.asarray(Image.open(out))
  # 64-px frames are shown twice as large (images_lib.MIN_CELL_SIZE).
  size = 128
  cell_h = images_lib.caption_cell_height(size)
  assert picture.shape == (2 * cell_h, 3 * size, 3)
  # Frames above, dark text on white below, an empty white sixth cell.
  assert picture[:size, :size].std() > 0
  text = picture[size:cell_h, :size]
  assert (text < 128).any() and np.median(text) == 255
  assert (picture[cell_h:, 2 * size:] == 255).all()


def test_baselines_pair_each_clip_with_itself_and_another_video(root, tmp_path):
  paths = vript_baselines.write(root, str(tmp_path / "hal"), seed=3)
  read = {name: [json.loads(line) for line in open(path)] for name, path in paths.items()}
  captions = {r["id"]: r["gt"][0] for r in read["ground_truth"]}
  # All 9 clips of the fixture are captioned.
  assert len(captions) == 9 and all(r["pred"] == r["gt"][0] for r in read["ground_truth"])
  assert [r["id"] for r in read["other_scene"]] == list(captions)
  for r in read["other_scene"]:
    source = next(i for i, c in captions.items() if c == r["pred"])
    assert source.split("-Scene-")[0] != r["id"].split("-Scene-")[0]
    assert r["gt"] == [captions[r["id"]]]
  again = vript_baselines.write(root, str(tmp_path / "again"), seed=3)
  assert open(again["other_scene"]).read() == open(paths["other_scene"]).read()


def test_preview_skips_and_reports_unreadable_clips(root, tmp_path):
  videos = clip_source.load_videos(root)
  first = next(c for v in videos for c in v.clips if c.path and c.caption.content.strip())
  with open(first.path, "wb") as f:
    f.write(b"not a video")
  shown, skipped = preview_vript.preview(root, str(tmp_path / "p.png"), num_clips=5, cell=64)
  assert shown == 5 and len(skipped) == 1 and first.path in skipped[0]
