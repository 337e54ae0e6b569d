"""Vriptor training formats: official number printing, merging, keyword rule, sampling, filters."""

import collections
import dataclasses
import os
import random

import pytest

from vwt_jax.data.vript import formats
from vwt_jax.data.vript import schema


def _clip(video_id, scene, duration, segments=(), content='A cat sits.', title='T'):
  clip_id = f'{video_id}-Scene-{scene:03d}'
  segs = tuple(schema.AsrSegment(s, e, t) for s, e, t in segments)
  asr = schema.AsrRecord(clip_id, float(duration), 'en', segs, ''.join(s.text + ' ' for s in segs))
  return schema.Clip(
      video_id=video_id, clip_id=clip_id, scene=scene,
      caption=schema.Caption(content, title, 'shot', 'static'),
      voiceover=asr.full_text.strip(), asr=asr, path=None,
      relpath=f'g_clips/{video_id}/{clip_id}.mp4')


def _video(video_id, clips, has_asr=True):
  return schema.Video(video_id=video_id, group='g', title='t', integrity=True,
                      clips=tuple(clips), has_asr=has_asr)


@pytest.fixture(scope='module')
def pasta(fixtures_dir):
  videos = schema.load_dataset(os.path.join(fixtures_dir, 'vript', 'annotations'))
  return next(v for v in videos if v.video_id == 'kTn3bC7xQ2w')


def test_rounding_is_python_half_even():
  assert [formats.fmt1(x) for x in (3.625, 6.25, 3.25, 3.52 + 2.9, 4)] == [
      '3.6', '6.2', '3.2', '6.4', '4.0']
  assert [str(formats.sample_rate(x)) for x in (9.6, 2.9, 13.6, 6.4)] == [
      '0.15', '0.05', '0.21', '0.1']


def test_merge_voiceovers():
  eight = ' one two three four five six seven eight'
  segs = [schema.AsrSegment(0.0, 1.0, eight), schema.AsrSegment(1.0, 2.5, eight),
          schema.AsrSegment(2.5, 3.0, ' tail words'),
          schema.AsrSegment(3.0, 9.0, ' ' + ' '.join(['w'] * 16)),
          schema.AsrSegment(9.0, 9.5, ' end')]
  merged = formats.merge_voiceovers(segs)
  assert merged == [
      schema.AsrSegment(0.0, 2.5, eight + '  ' + eight[1:]),
      schema.AsrSegment(2.5, 9.0, ' tail words  ' + ' '.join(['w'] * 16)),
      schema.AsrSegment(9.0, 9.5, ' end')]
  assert formats.merge_voiceovers([]) == []


def test_keyword_rule():
  rule = formats.wants_voiceover
  assert not rule('', 'She speaks.')
  assert rule('[0.0, 1.0] hi\n', 'She SPEAKS.')
  assert rule('x', 'a voice-over plays') and not rule('x', 'a soft voice')
  assert rule('x', 'the narrator') and rule('x', 'an essay')  # substring match, as upstream
  assert rule('x', 'talking') and rule('x', 'voicing') and not rule('x', 'a quiet room')


def test_prompt_wrapping():
  assert formats.model_input('Hi.') == '<ImageHere>###Human: Hi.  ###Assistant: '
  assert formats.model_target('A cat.') == 'A cat.###'


def test_single_duration_and_units(pasta):
  s1 = formats.build_single(pasta.clips[1], stage='stage1')
  s2 = formats.build_single(pasta.clips[3], stage='stage2')
  # Span ends 2.9 > 2.625 and 4.31 > 4.0 set the durations.
  assert s1.prompt == ('Describe the video in detail (Duration: [0.0, 2.9]second, '
                       'Sampling Rate: 0.05second/frame).')
  assert s2.format == 'single_scene_voiceover'
  assert s2.prompt.endswith('(Duration: [0.0, 4.3]s, Sampling Rate: 0.07s/frame).')
  # Stage-2 single does not merge segments.
  assert s2.prompt.startswith('Voiceover:"[0.0, 2.4] Roll it until you can almost see '
                              'your hand through it,\n[2.4, 4.3] then')
  forced = formats.build_single(pasta.clips[3], stage='stage1', force_voiceover=False)
  assert forced.format == 'single_scene' and forced.target == s2.target
  assert formats.build_single(pasta.clips[2], stage='stage1', force_voiceover=True).format == (
      'single_scene')  # no ASR text


def test_window_offsets(pasta):
  text = formats.window_text(pasta.clips[2:4], stage='stage1')
  # Scene-003 has no ASR text: the offset stays 0 (upstream: stale value).
  assert text.voiceover == ('[0.0, 2.4] Roll it until you can almost see your hand through it,\n'
                            '[2.4, 4.3] then cut it into ribbons.\n')
  assert text.total == 7.4
  assert text.target.startswith(
      '[Scene 1: Kneading the Dough Until Smooth](Duration: [0.0, 3.4])\n')
  assert '\n\n[Scene 2: Rolling and Cutting Tagliatelle](Duration: [3.4, 7.4])\n' in text.target
  text2 = formats.window_text(pasta.clips[:2], stage='stage2')
  assert text2.voiceover == (
      '[0.0, 3.5] Hi everyone, welcome back to my kitchen.  Today we are making fresh pasta '
      'from scratch.\n[3.7, 6.4] Crack the eggs right into the middle and whisk gently.\n')
  assert '(Duration: [3.6, 6.2]/6.2s)' in text2.target
  missing = [dataclasses.replace(pasta.clips[0], asr=None)]
  assert formats.window_text(missing, stage='stage1') is None


def test_fixed_windows_and_skips(pasta):
  samples = formats.build_samples(
      [pasta], stage='stage1', seed=3, kinds=['concat'],
      windows=[('kTn3bC7xQ2w-Scene-003', 'kTn3bC7xQ2w-Scene-004')])
  assert [s.clip_ids for s in samples] == [('kTn3bC7xQ2w-Scene-003', 'kTn3bC7xQ2w-Scene-004')]
  assert samples[0].format == 'multi_scene_voiceover'  # 'talking' in Scene-004
  with pytest.raises(ValueError, match='consecutive'):
    formats.build_samples([pasta], stage='stage1', seed=0,
                          windows=[('kTn3bC7xQ2w-Scene-001', 'kTn3bC7xQ2w-Scene-003')])
  with pytest.raises(ValueError, match='Scene-042'):
    formats.build_samples([pasta], stage='stage1', seed=0, windows=[('kTn3bC7xQ2w-Scene-042',)])
  no_asr = _video('v', [_clip('v', 1, 3.0)], has_asr=False)
  assert formats.build_samples([no_asr], stage='stage1', seed=0, kinds=['single']) == []
  singles = formats.build_samples([pasta], stage='stage1', seed=0, kinds=['single'])
  assert [s.format for s in singles] == ['single_scene_voiceover', 'single_scene',
                                         'single_scene', 'single_scene_voiceover']


def _gapped_video(n, gap_after=None):
  scenes = [i + 1 + (1 if gap_after is not None and i >= gap_after else 0) for i in range(n)]
  return _video('w', [_clip('w', s, 2.0) for s in scenes])


@pytest.mark.parametrize('stage,lengths,weights,max_tries,per_try', [
    ('stage1', range(1, 7), [1, 2, 3, 4, 3, 2], 30, 1.5),
    ('stage2', range(2, 21), [1] * 7 + [2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1], 120, 1.2)])
def test_window_sampling(stage, lengths, weights, max_tries, per_try):
  video = _gapped_video(400)
  first = formats.sample_windows(video.clips, stage=stage, rng=random.Random(7))
  assert first == formats.sample_windows(video.clips, stage=stage, rng=random.Random(7))
  assert first != formats.sample_windows(video.clips, stage=stage, rng=random.Random(8))
  # The draws are the upstream calls, one for one.
  replay, rng = [], random.Random(7)
  for _ in range(max_tries):
    start = rng.randint(0, 398)
    length = rng.choices(list(lengths), weights=weights)[0]
    if start + length <= 400:
      replay.append((start, start + length))
  assert first == replay
  counts = collections.Counter()
  for seed in range(40):
    for start, end in formats.sample_windows(video.clips, stage=stage, rng=random.Random(seed)):
      assert 0 <= start <= 398 and end <= 400
      counts[end - start] += 1
  total = sum(counts.values())
  assert set(counts) <= set(lengths) and total > 0.9 * 40 * max_tries
  for length, weight in zip(lengths, weights):
    assert abs(counts[length] / total - weight / sum(weights)) < 0.04
  # Few scenes: fewer tries; a gap in scene numbering is never crossed.
  small = _gapped_video(9, gap_after=4)
  for seed in range(30):
    windows = formats.sample_windows(small.clips, stage=stage, rng=random.Random(seed))
    assert len(windows) <= min(max_tries, int(9 // per_try))
    assert all(end <= 4 or start >= 4 for start, end in windows)


def _talk_video(video_id, n, duration, words=3):
  text = ' ' + ' '.join(['word'] * words)
  return _video(video_id, [
      _clip(video_id, i + 1, duration, [(0.0, 1.0, text)], content='She talks to us.')
      for i in range(n)])


def test_stage2_single_filters():
  short = _video('s', [_clip('s', i + 1, 8.94) for i in range(5)])  # rounds to 8.9 < 9
  long = _video('l', [_clip('l', i + 1, 200.0) for i in range(5)])  # 3.12 s/frame: kept
  mid = _video('m', [_clip('m', i + 1, 50.0) for i in range(300)])  # 0.78 s/frame: 90 % dropped
  def build(**kw):
    return formats.build_samples([short, long, mid], stage='stage2', kinds=['single'], **kw)

  off = build(seed=0, official_filters=False)
  assert [len([s for s in off if s.video_id == v]) for v in 'slm'] == [5, 5, 300]
  on = build(seed=0)
  kept_mid = len([s for s in on if s.video_id == 'm'])
  assert [len([s for s in on if s.video_id == v]) for v in 'sl'] == [0, 5]
  assert 10 <= kept_mid <= 55 and on == build(seed=0)
  assert len(formats.build_samples([short], stage='stage1', seed=0, kinds=['single'])) == 5


def test_stage2_concat_filters():
  video = _talk_video('c', 300, 3.0)
  windows = [tuple(c.clip_id for c in video.clips[i:i + 2]) for i in range(0, 300, 2)]
  def build(**kw):
    return formats.build_samples([video], stage='stage2', kinds=['concat'], windows=windows, **kw)

  off = build(seed=1, official_filters=False)
  assert len(off) == 150 and all(s.format == 'multi_scene_voiceover' for s in off)
  on = build(seed=1)
  assert 3 <= len(on) <= 30 and on == build(seed=1)  # T = 6 s < 600: 90 % dropped
  # Long windows are kept; the voice-over format survives its 30 % coin flip.
  long = _talk_video('L', 200, 700.0)
  pairs = [tuple(c.clip_id for c in long.clips[i:i + 2]) for i in range(0, 200, 2)]
  kept = formats.build_samples([long], stage='stage2', seed=2, kinds=['concat'], windows=pairs)
  with_vo = sum(s.format == 'multi_scene_voiceover' for s in kept)
  assert len(kept) == 100 and 15 <= with_vo <= 45
  forced = formats.build_samples([long], stage='stage2', seed=2, kinds=['concat'], windows=pairs,
                                 force_voiceover=True)
  assert all(s.format == 'multi_scene_voiceover' for s in forced)
  # A voice-over of more than 2048 space-separated words is emptied.
  wordy = _talk_video('W', 2, 700.0, words=1100)
  pair = [tuple(c.clip_id for c in wordy.clips)]
  assert [s.format for s in formats.build_samples(
      [wordy], stage='stage2', seed=0, kinds=['concat'], windows=pair, force_voiceover=True)] == [
          'multi_scene']
  assert [s.format for s in formats.build_samples(
      [wordy], stage='stage2', seed=0, kinds=['concat'], windows=pair, force_voiceover=True,
      official_filters=False)] == ['multi_scene_voiceover']


def test_build_samples_random_windows_are_seeded():
  video = _talk_video('r', 40, 2.0)
  a = formats.build_samples([video], stage='stage1', seed=5)
  assert a == formats.build_samples([video], stage='stage1', seed=5)
  singles = [s for s in a if s.format.startswith('single')]
  windows = [s for s in a if s.format.startswith('multi')]
  assert len(singles) == 40 and 0 < len(windows) <= 26
  assert [s.clip_ids for s in windows] != [
      s.clip_ids for s in formats.build_samples([video], stage='stage1', seed=6, kinds=['concat'])]
  with pytest.raises(ValueError, match='stage3'):
    formats.build_samples([video], stage='stage3', seed=0)
