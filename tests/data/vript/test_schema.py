"""Vript annotation readers on the fixture layout and on a damaged copy of it."""

import json
import os
import shutil

import pytest

from vwt_jax.data.vript import schema

LONG = 'vript_long_videos'
SHORT = 'vript_short_videos'
PASTA = 'kTn3bC7xQ2w'
DRONE = 'Zp0-f9LmA_4'
CAT = 'q7Wm2xYv8Ra_0'


@pytest.fixture(scope='module')
def annotations(fixtures_dir):
  return os.path.join(fixtures_dir, 'vript', 'annotations')


@pytest.fixture(scope='module')
def clean(annotations):
  problems = schema.Problems()
  videos = schema.load_dataset(annotations, problems=problems)
  return videos, problems


def test_fixture_videos_and_clips(clean, annotations):
  videos, problems = clean
  assert problems.items == []
  assert [(v.group, v.video_id) for v in videos] == [(LONG, DRONE), (LONG, PASTA), (SHORT, CAT)]
  assert [len(v.clips) for v in videos] == [3, 4, 2]
  assert all(v.integrity and v.has_asr for v in videos)
  pasta = videos[1]
  assert pasta.title == 'Making Fresh Pasta at Home - Easy Weeknight Recipe'
  assert [c.scene for c in pasta.clips] == [1, 2, 3, 4]
  first = pasta.clips[0]
  assert first.clip_id == 'kTn3bC7xQ2w-Scene-001'
  assert first.relpath == 'vript_long_videos_clips/kTn3bC7xQ2w/kTn3bC7xQ2w-Scene-001.mp4'
  assert first.path == os.path.join(os.path.abspath(annotations), first.relpath)
  assert first.caption.scene_title == 'Introducing the Fresh Pasta Recipe'
  assert first.caption.shot_type.startswith('Medium close-up of a home cook')
  assert first.voiceover == ('Hi everyone, welcome back to my kitchen.  '
                             'Today we are making fresh pasta from scratch.')
  assert first.asr.segments[1] == schema.AsrSegment(
      1.84, 3.52, ' Today we are making fresh pasta from scratch.')
  assert first.asr.full_text == ''.join(s.text + ' ' for s in first.asr.segments)


def test_fixture_durations_and_quirks(clean):
  videos, _ = clean
  durations = {c.clip_id: c.asr.duration for v in videos for c in v.clips}
  assert durations == {
      'kTn3bC7xQ2w-Scene-001': 3.625, 'kTn3bC7xQ2w-Scene-002': 2.625,
      'kTn3bC7xQ2w-Scene-003': 3.375, 'kTn3bC7xQ2w-Scene-004': 4.0,
      'Zp0-f9LmA_4-Scene-001': 3.0, 'Zp0-f9LmA_4-Scene-002': 2.375,
      'Zp0-f9LmA_4-Scene-003': 3.75,
      'q7Wm2xYv8Ra_0-Scene-001': 2.75, 'q7Wm2xYv8Ra_0-Scene-002': 3.125}
  pasta = videos[1].clips
  assert pasta[2].voiceover == '' and pasta[2].asr.segments == ()
  # ASR spans past the clip end are kept as they are.
  assert pasta[1].asr.segments[-1].end == 2.9 > pasta[1].asr.duration
  assert pasta[3].asr.segments[-1].end == 4.31 > pasta[3].asr.duration


def test_group_filter_and_errors(annotations, tmp_path):
  videos = schema.load_dataset(annotations, groups=[SHORT])
  assert [v.video_id for v in videos] == [CAT]
  with pytest.raises(ValueError, match='vript_tiny_videos'):
    schema.load_dataset(annotations, groups=['vript_tiny_videos'])
  (tmp_path / 'something_else').mkdir()
  with pytest.raises(FileNotFoundError, match='vript_captions/.*_clips/') as err:
    schema.load_dataset(str(tmp_path))
  assert str(tmp_path) in str(err.value)


@pytest.fixture(scope='module')
def damaged(annotations, tmp_path_factory):
  """The fixture with the defects of the real release, and its loaded videos."""
  root = str(tmp_path_factory.mktemp('vript') / 'annotations')
  shutil.copytree(annotations, root)
  captions = os.path.join(root, 'vript_captions')
  long_clips = os.path.join(root, 'vript_long_videos_clips')
  os.makedirs(os.path.join(long_clips, 'brokenZip001'))
  asr = os.path.join(long_clips, PASTA, PASTA + '_asr.jsonl')
  with open(asr, 'a') as f:
    f.write('{"clip_id": "kTn3bC7xQ2w-Scene-009", "duration": \n')
  os.remove(os.path.join(long_clips, DRONE, DRONE + '-Scene-003.mp4'))
  # Drone: unsorted keys and a gap (Scene-002 uncaptioned, integrity false).
  drone_caption = os.path.join(captions, 'vript_long_videos_captions', DRONE + '_caption.json')
  with open(drone_caption) as f:
    doc = json.load(f)
  doc['meta']['integrity'] = False
  doc['data'] = {k: doc['data'][k] for k in reversed(list(doc['data'])) if not k.endswith('002')}
  with open(drone_caption, 'w') as f:
    json.dump(doc, f)
  # Shorts: captions only as jsonl, and no ASR file.
  shutil.rmtree(os.path.join(captions, 'vript_short_videos_captions'))
  os.remove(os.path.join(root, 'vript_short_videos_clips', CAT, CAT + '_asr.jsonl'))
  problems = schema.Problems()
  videos = schema.load_dataset(root, problems=problems)
  return root, videos, problems


def test_damaged_problems_name_the_paths(damaged):
  root, _, problems = damaged
  long_clips = os.path.join(root, 'vript_long_videos_clips')
  assert len(problems) == 3
  paths = dict(problems.items)
  assert paths[os.path.join(long_clips, 'brokenZip001')].startswith('empty folder')
  reason = paths[os.path.join(long_clips, PASTA, PASTA + '_asr.jsonl')]
  assert reason.startswith('line 5: JSONDecodeError')
  missing = os.path.abspath(os.path.join(long_clips, DRONE, DRONE + '-Scene-003.mp4'))
  assert paths[missing] == 'clip mp4 missing'


def test_damaged_videos(damaged, clean):
  _, videos, _ = damaged
  assert [v.video_id for v in videos] == [DRONE, PASTA, CAT]
  drone, pasta, cat = videos
  assert [c.clip_id for c in drone.clips] == ['Zp0-f9LmA_4-Scene-001', 'Zp0-f9LmA_4-Scene-003']
  assert not drone.integrity
  assert [c.path is None for c in drone.clips] == [False, True]
  assert drone.clips[1].relpath == f'vript_long_videos_clips/{DRONE}/{DRONE}-Scene-003.mp4'
  # The malformed line is skipped; the other ASR records are unchanged.
  assert [c.asr for c in pasta.clips] == [c.asr for c in clean[0][1].clips]
  # The jsonl-only group gives the same clip records as the caption folder.
  assert not cat.has_asr and all(c.asr is None for c in cat.clips)
  assert cat.title == clean[0][2].title and cat.integrity
  assert [(c.clip_id, c.caption, c.voiceover) for c in cat.clips] == [
      (c.clip_id, c.caption, c.voiceover) for c in clean[0][2].clips]
