"""The cached clip index and the SampleSource / KeyframeSource records."""

import dataclasses
import json
import os
import pickle

import av
import numpy as np
from PIL import Image
import pytest

from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import formats
from vwt_jax.data.vript import frames
from vwt_jax.data.vript import schema

from helpers import copy_vript_root

LONG = 'vript_long_videos'


@pytest.fixture(scope='module')
def root(fixtures_dir, tmp_path_factory):
  return copy_vript_root(fixtures_dir, tmp_path_factory.mktemp('vript'))


@pytest.fixture
def fresh_root(fixtures_dir, tmp_path):
  return copy_vript_root(fixtures_dir, tmp_path)


@pytest.fixture(scope='module')
def videos(root):
  return schema.load_dataset(root)


@pytest.fixture(scope='module')
def samples(videos):
  # Seed 1 draws a 3-clip and a 2-clip window besides the 9 single clips.
  return formats.build_samples(videos, stage='stage1', seed=1)


def _failing_load(*args, **kwargs):
  raise AssertionError('the index was rebuilt instead of read from the cache')


def _cache_files(directory):
  return sorted(f for f in os.listdir(directory) if f.endswith('.json'))


def test_index_is_cached_and_reused(fresh_root, monkeypatch):
  built = clip_source.load_videos(fresh_root)
  assert built == schema.load_dataset(fresh_root)
  cache = os.path.join(fresh_root, clip_source.CACHE_DIRNAME)
  assert len(_cache_files(cache)) == 1
  monkeypatch.setattr(schema, 'load_dataset', _failing_load)
  assert clip_source.load_videos(fresh_root) == built


def test_index_is_rebuilt_when_a_caption_file_changes(fresh_root):
  clip_source.load_videos(fresh_root)
  path = os.path.join(fresh_root, 'vript_captions', f'{LONG}_captions',
                      'kTn3bC7xQ2w_caption.json')
  with open(path, encoding='utf-8') as f:
    doc = json.load(f)
  doc['data']['kTn3bC7xQ2w-Scene-002']['caption']['content'] = 'A red kite.'
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(doc, f)
  videos = {v.video_id: v for v in clip_source.load_videos(fresh_root)}
  assert videos['kTn3bC7xQ2w'].clips[1].caption.content == 'A red kite.'


def test_index_is_rebuilt_when_a_clip_disappears(fresh_root):
  clip_source.load_videos(fresh_root)
  os.remove(os.path.join(fresh_root, f'{LONG}_clips', 'Zp0-f9LmA_4',
                         'Zp0-f9LmA_4-Scene-003.mp4'))
  videos = {v.video_id: v for v in clip_source.load_videos(fresh_root)}
  assert [c.path is None for c in videos['Zp0-f9LmA_4'].clips] == [
      False, False, True]


@pytest.mark.parametrize('inside_root', [False, True])
def test_index_goes_to_cache_dir_when_root_is_not_writable(
    fresh_root, tmp_path, monkeypatch, inside_root):
  # A file where the cache folder should be makes the root unusable for
  # caching whatever the user's permissions.
  open(os.path.join(fresh_root, clip_source.CACHE_DIRNAME), 'w').close()
  # Inside the root, the cache file must not change the root's fingerprint.
  cache_dir = os.path.join(fresh_root if inside_root else str(tmp_path),
                           'index_cache')
  built = clip_source.load_videos(fresh_root, cache_dir=cache_dir)
  assert len(_cache_files(cache_dir)) == 1
  monkeypatch.setattr(schema, 'load_dataset', _failing_load)
  assert clip_source.load_videos(fresh_root, cache_dir=cache_dir) == built


def test_groups_are_cached_separately(fresh_root):
  short = clip_source.load_videos(fresh_root, groups=['vript_short_videos'])
  assert [v.video_id for v in short] == ['q7Wm2xYv8Ra_0']
  assert len(clip_source.load_videos(fresh_root)) == 3
  assert len(_cache_files(
      os.path.join(fresh_root, clip_source.CACHE_DIRNAME))) == 2


def _decode_all(path):
  with av.open(path) as container:
    return np.stack([f.to_ndarray(format='rgb24')
                     for f in container.decode(video=0)])


def _resized(frame, size):
  return np.asarray(Image.fromarray(frame).resize(
      (size, size), Image.Resampling.BICUBIC))


def _by_clips(samples, *clip_ids):
  return next(i for i, s in enumerate(samples) if s.clip_ids == clip_ids)


def test_sample_source_single_clip(samples):
  source = clip_source.SampleSource(samples, num_frames=4, image_size=32,
                                    sample='middle', train=False)
  index = _by_clips(samples, 'kTn3bC7xQ2w-Scene-001')
  record = source[index]
  s = samples[index]
  assert record['frames'].shape == (4, 32, 32, 3)
  assert record['frames'].dtype == np.float32
  decoded = _decode_all(s.paths[0])
  expected = frames.normalize(np.stack(
      [_resized(decoded[i], 32) for i in (3, 10, 17, 24)]))
  # The same numpy normalisation of the same uint8 pixels: equal (1e-6 is margin
  # only); a pixel one grey level off would move by 1/255/0.28 = 0.014.
  np.testing.assert_allclose(record['frames'], expected, rtol=1e-6)
  # CLIP normalisation: uint8 0..255 maps into these per-channel bounds.
  assert record['frames'].min() >= -1.7923
  assert record['frames'].max() <= 2.1459
  assert record['num_frames'] == 4
  assert record['format'] == 'single_scene_voiceover'
  assert record['clip_ids'] == 'kTn3bC7xQ2w-Scene-001'
  for key in ('prompt', 'target', 'model_input', 'model_target'):
    assert record[key] == getattr(s, key)
  assert record['model_target'].endswith('###')


def test_sample_source_window_splits_frames_over_its_clips(samples):
  index = _by_clips(samples, 'Zp0-f9LmA_4-Scene-001', 'Zp0-f9LmA_4-Scene-002',
                    'Zp0-f9LmA_4-Scene-003')
  source = clip_source.SampleSource(samples, num_frames=4, image_size=32,
                                    sample='middle', train=False)
  record = source[index]
  assert record['format'] == 'multi_scene'
  assert record['clip_ids'] == ','.join(samples[index].clip_ids)
  # 2 + 1 + 1 frames of clips with 24, 19 and 30 frames.
  paths = samples[index].paths
  expected = [_decode_all(paths[0])[i] for i in (5, 17)]
  expected += [_decode_all(paths[1])[9], _decode_all(paths[2])[14]]
  # Equal pixels, equally normalised (as above): 1e-6 is margin only.
  np.testing.assert_allclose(
      record['frames'],
      frames.normalize(np.stack([_resized(f, 32) for f in expected])),
      rtol=1e-6)


def test_sample_source_pads_short_clips_with_the_last_frame(samples):
  index = _by_clips(samples, 'Zp0-f9LmA_4-Scene-002')
  source = clip_source.SampleSource(samples, num_frames=24, image_size=32,
                                    sample='rand', train=True, seed=3)
  record = source[index]
  # 19 frames: all of them once, then frame 18 five more times.
  assert record['num_frames'] == 19
  assert record['frames'].shape == (24, 32, 32, 3)
  for frame in record['frames'][19:]:
    np.testing.assert_array_equal(frame, record['frames'][18])


def test_sample_source_train_records_are_a_function_of_the_seed(samples):
  def first(seed):
    return clip_source.SampleSource(
        samples, num_frames=4, image_size=32, train=True, seed=seed,
        normalize=False)[0]['frames']
  np.testing.assert_array_equal(first(5), first(5))
  assert first(5).dtype == np.uint8
  assert not np.array_equal(first(5), first(6))


def test_sample_source_missing_clip_raises(samples):
  broken = dataclasses.replace(samples[0], paths=(None,))
  source = clip_source.SampleSource([broken], num_frames=4, image_size=32)
  with pytest.raises(frames.CorruptClipError) as e:
    source[0]
  assert str(e.value) == (f'{LONG}_clips/Zp0-f9LmA_4/Zp0-f9LmA_4-Scene-001.mp4'
                          ': clip mp4 missing')


def test_sample_source_rejects_unknown_rule(samples):
  with pytest.raises(ValueError, match='uniform'):
    clip_source.SampleSource(samples, num_frames=4, image_size=32,
                             sample='uniform')


def test_keyframe_source_middle_frame_and_caption(videos):
  source = clip_source.KeyframeSource(videos, image_size=32)
  assert len(source) == 9
  record = source[0]
  clip = videos[0].clips[0]
  assert record['clip_id'] == clip.clip_id == 'Zp0-f9LmA_4-Scene-001'
  assert record['caption'] == clip.caption.content
  assert record['scene_title'] == 'Golden Hour over the Harbor'
  assert record['image'].dtype == np.uint8
  # 24 frames: the middle rule for one frame takes (24 - 1) // 2 = 11.
  np.testing.assert_array_equal(
      record['image'], _resized(_decode_all(clip.path)[11], 32))


def test_keyframe_source_rand_draws_any_frame_but_the_last(videos):
  source = clip_source.KeyframeSource(videos, image_size=32, keyframe='rand')
  decoded = [_resized(f, 32) for f in _decode_all(videos[0].clips[0].path)]
  picked = set()
  for seed in range(40):
    image = source.read(0, np.random.default_rng(seed))['image']
    picked.add(next(i for i, f in enumerate(decoded)
                    if np.array_equal(f, image)))
  assert picked <= set(range(23))
  assert len(picked) > 8


def test_keyframe_source_leaves_out_clips_without_mp4(fresh_root):
  os.remove(os.path.join(fresh_root, f'{LONG}_clips', 'kTn3bC7xQ2w',
                         'kTn3bC7xQ2w-Scene-004.mp4'))
  source = clip_source.KeyframeSource(schema.load_dataset(fresh_root),
                                      image_size=32)
  assert len(source) == 8


def test_sources_pickle(samples, videos):
  for source in (clip_source.SampleSource(samples, num_frames=4,
                                          image_size=32, seed=2),
                 clip_source.KeyframeSource(videos, image_size=32)):
    copy = pickle.loads(pickle.dumps(source))
    a, b = source[1], copy[1]
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
