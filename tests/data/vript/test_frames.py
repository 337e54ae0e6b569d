"""Frame-index sampling (ST-LLM rules), PyAV decoding, video transforms."""

import os
import pickle

import av
import numpy as np
from PIL import Image
import pytest

import helpers
from vwt_jax.data.vript import frames


@pytest.fixture(scope='module')
def clips_dir(fixtures_dir):
  return os.path.join(fixtures_dir, 'vript', 'annotations',
                      'vript_long_videos_clips')


def _clip(clips_dir, clip_id):
  video_id = clip_id.split('-Scene-')[0]
  return os.path.join(clips_dir, video_id, f'{clip_id}.mp4')


def _decode_all(path):
  with av.open(path) as container:
    return np.stack([f.to_ndarray(format='rgb24')
                     for f in container.decode(video=0)])


@pytest.mark.parametrize('num_frames, num_clips, expected', [
    (64, 3, [22, 21, 21]),
    (4, 3, [2, 1, 1]),
    (2, 3, [1, 1, 0]),
    (256, 1, [256]),
    (6, 2, [3, 3]),
])
def test_split_frames_gives_remainder_to_first_clips(num_frames, num_clips,
                                                     expected):
  assert frames.split_frames(num_frames, num_clips) == expected


@pytest.mark.parametrize('num_frames, vlen, expected', [
    # linspace(0, 10, 5).astype(int) = [0, 2, 5, 7, 10].
    (4, 10, [0, 3, 5, 8]),
    # [0, 7, 14, 21, 29]: the 29-frame fixture clip.
    (4, 29, [3, 10, 17, 24]),
    # [0, 1, 3, 4, 6].
    (4, 6, [0, 1, 3, 4]),
    (1, 29, [14]),
    (1, 21, [10]),
    # Fewer frames than asked: every frame, then the last one repeated.
    (5, 3, [0, 1, 2, 2, 2]),
    (3, 1, [0, 0, 0]),
    (0, 7, []),
])
def test_middle_indices(num_frames, vlen, expected):
  assert frames.sample_frame_indices(num_frames, vlen, 'middle') == expected


def _rand_draws(num_frames, vlen, num_seeds=300):
  return np.array([
      frames.sample_frame_indices(num_frames, vlen, 'rand',
                                  np.random.default_rng(seed))
      for seed in range(num_seeds)])


def test_rand_never_draws_the_last_frame_of_a_range():
  # Ranges [0,2) [2,5) [5,7) [7,10): choice(range(a, b - 1)) leaves
  # {0}, {2,3}, {5}, {7,8}.
  draws = _rand_draws(4, 10)
  assert [sorted(set(column)) for column in draws.T] == [
      [0], [2, 3], [5], [7, 8]]


def test_rand_ranges_of_the_29_frame_clip():
  # Ranges [0,7) [7,14) [14,21) [21,29) minus their last frame.
  draws = _rand_draws(4, 29)
  assert draws.min(axis=0).tolist() == [0, 7, 14, 21]
  assert draws.max(axis=0).tolist() == [5, 12, 19, 27]


def test_rand_falls_back_to_a_sorted_subset_when_a_range_is_empty():
  # [0, 1, 3, 4, 6]: the range [0, 1) is empty once its last frame is
  # dropped, so the official draws 4 distinct sorted frames of all 6, which
  # can include frame 5 (never drawn by the per-range rule).
  draws = _rand_draws(4, 6)
  assert all(np.all(np.diff(row) > 0) for row in draws)
  assert sorted(set(draws.ravel().tolist())) == [0, 1, 2, 3, 4, 5]
  assert (draws[:, -1] == 5).any()


def test_rand_with_fewer_frames_than_asked_takes_all_and_pads():
  # One frame per range: always the fallback, which then keeps every frame.
  assert frames.sample_frame_indices(
      6, 4, 'rand', np.random.default_rng(3)) == [0, 1, 2, 3, 3, 3]


def test_rand_is_a_function_of_the_generator():
  a = frames.sample_frame_indices(8, 100, 'rand', np.random.default_rng(7))
  b = frames.sample_frame_indices(8, 100, 'rand', np.random.default_rng(7))
  assert a == b
  assert len(a) == 8
  assert a == sorted(a)


def test_unknown_sample_rule():
  with pytest.raises(ValueError, match='fps1'):
    frames.sample_frame_indices(4, 10, 'fps1')


@pytest.mark.parametrize('clip_id, num_frames', [
    ('kTn3bC7xQ2w-Scene-001', 29),
    ('kTn3bC7xQ2w-Scene-002', 21),
    ('Zp0-f9LmA_4-Scene-002', 19),
])
def test_count_frames_of_fixture_clips(clips_dir, clip_id, num_frames):
  assert frames.count_frames(_clip(clips_dir, clip_id)) == num_frames


def test_decode_frames_keeps_the_requested_frames_in_order(clips_dir):
  path = _clip(clips_dir, 'kTn3bC7xQ2w-Scene-001')
  every = _decode_all(path)
  assert every.shape == (29, 64, 64, 3)
  got = frames.decode_frames(path, [28, 3, 3, 0])
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, every[[28, 3, 3, 0]])


def test_read_clip_middle(clips_dir):
  path = _clip(clips_dir, 'kTn3bC7xQ2w-Scene-001')
  got, indices = frames.read_clip(path, 4, 'middle')
  assert indices == [3, 10, 17, 24]
  np.testing.assert_array_equal(got, _decode_all(path)[indices])


def test_read_window_splits_frames_across_clips(clips_dir):
  ids = ['kTn3bC7xQ2w-Scene-001', 'kTn3bC7xQ2w-Scene-002',
         'kTn3bC7xQ2w-Scene-003']
  paths = [_clip(clips_dir, i) for i in ids]
  got, indices = frames.read_window(paths, 4, 'middle')
  # 2 + 1 + 1 frames; middles of [0,14) [14,29) / [0,21) / [0,27).
  expected = [[6, 21], [10], [13]]
  assert indices == expected
  for clip_frames, path, indices in zip(got, paths, expected):
    np.testing.assert_array_equal(clip_frames, _decode_all(path)[indices])


def test_read_window_does_not_open_clips_given_no_frames(clips_dir, tmp_path):
  paths = [_clip(clips_dir, 'kTn3bC7xQ2w-Scene-001'),
           str(tmp_path / 'absent.mp4')]
  got, indices = frames.read_window(paths, 1, 'middle')
  assert [c.shape for c in got] == [(1, 64, 64, 3)]
  assert indices == [[14]]


def test_missing_file_raises(tmp_path):
  path = str(tmp_path / 'nothere.mp4')
  with pytest.raises(frames.CorruptClipError, match='file not found') as e:
    frames.read_clip(path, 4, 'middle')
  assert e.value.path == path


def test_random_bytes_raise(tmp_path):
  path = tmp_path / 'noise.mp4'
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(frames.CorruptClipError, match='noise.mp4') as e:
    frames.read_clip(str(path), 4, 'middle')
  assert e.value.path == str(path)


def test_file_without_video_stream_raises(tmp_path):
  path = str(tmp_path / 'audio.mp4')
  with av.open(path, 'w') as container:
    stream = container.add_stream('aac', rate=8000)
    samples = np.zeros((1, 1024), np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format='fltp', layout='mono')
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
      container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
  with pytest.raises(frames.CorruptClipError, match='no video stream'):
    frames.count_frames(path)


def test_video_stream_without_frames_raises(tmp_path):
  # AVI keeps a stream header without frames (mp4 drops the empty track).
  path = str(tmp_path / 'empty.avi')
  with av.open(path, 'w') as container:
    stream = container.add_stream('mpeg4', rate=8)
    stream.width = stream.height = 16
    container.start_encoding()
  with pytest.raises(frames.CorruptClipError, match='no frames'):
    frames.count_frames(path)


def test_corrupt_clip_error_pickles():
  error = pickle.loads(pickle.dumps(frames.CorruptClipError('/a.mp4', 'bad')))
  assert (error.path, error.reason, str(error)) == ('/a.mp4', 'bad',
                                                    '/a.mp4: bad')


def test_crop_box_stays_in_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = frames.random_resized_crop_box(64, 48, rng)
    assert 0 <= top <= 64 - h and 0 <= left <= 48 - w
    # Rounding h and w moves area and ratio slightly past the bounds.
    assert 0.45 <= h * w / (64 * 48) <= 1.0
    assert 0.7 <= w / h <= 1.4


def test_crop_box_falls_back_to_a_center_crop():
  # A 1x100 strip: no 10 tries fit, so the widest 4:3 center crop: 1x1.
  box = frames.random_resized_crop_box(1, 100, np.random.default_rng(0))
  assert box == (0, 49, 1, 1)
  box = frames.random_resized_crop_box(100, 10, np.random.default_rng(0))
  assert box == (43, 0, 13, 10)


def _gradient_frames(num, height, width):
  y, x = np.mgrid[:height, :width]
  frame = np.stack([x * 255 // width, y * 255 // height,
                    (x + y) * 127 // (height + width)], -1).astype(np.uint8)
  return np.repeat(frame[None], num, axis=0)


def test_train_transform_shares_one_crop_over_the_sample():
  clips = [_gradient_frames(3, 64, 64), _gradient_frames(2, 64, 64)]
  out = frames.transform_clips(clips, image_size=32, train=True,
                               rng=np.random.default_rng(1))
  assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
  for frame in out[1:]:
    np.testing.assert_array_equal(frame, out[0])
  # It is the crop of the box drawn from the same Generator state.
  top, left, h, w = frames.random_resized_crop_box(
      64, 64, np.random.default_rng(1))
  crop = clips[0][0, top:top + h, left:left + w]
  expected = np.asarray(Image.fromarray(crop).resize(
      (32, 32), Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(out[0], expected)
  assert (h, w) != (64, 64)


def test_eval_transform_resizes_shorter_side_and_center_crops():
  clip = _gradient_frames(2, 40, 80)
  out = frames.transform_clips([clip], image_size=32, train=False)
  resized = np.asarray(Image.fromarray(clip[0]).resize(
      (64, 32), Image.Resampling.BICUBIC))
  assert out.shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(out[0], resized[:, 16:48])


def test_normalize_uses_clip_statistics():
  pixels = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
  out = frames.normalize(pixels)
  assert out.dtype == np.float32
  # float32 x / 255 minus the rounded mean (two terms <= 1), divided by the
  # rounded std (>= 0.26); the constants are 8-digit prints (<= 5e-8 off).
  tol = dict(reduction=2, depth=2, scale=2 / min(frames.CLIP_STD))
  helpers.assert_allclose_f32(out[0], [-1.7922625, -1.7520971, -1.4802198], **tol)
  helpers.assert_allclose_f32(out[1], [1.9303363, 2.0748838, 2.1458970], **tol)


def test_seq_frame_indices_are_the_official_inference_frames():
  # `get_seq_frames(vlen, min(vlen, 64))` of stllm/test/video_utils.py, run on these lengths.
  assert frames.seq_frame_indices(64, 250)[:8] == [2, 6, 10, 14, 17, 21, 25, 29]
  assert frames.seq_frame_indices(64, 250)[-3:] == [239, 243, 247]
  assert frames.seq_frame_indices(64, 1000)[-3:] == [960, 975, 991]
  # A clip of exactly 64 frames repeats frame 32 and never reaches 63, as the official.
  assert frames.seq_frame_indices(64, 64)[30:36] == [30, 31, 32, 32, 33, 34]
  assert frames.seq_frame_indices(64, 64)[-1] == 62
  # Shorter clips give fewer frames.
  assert frames.seq_frame_indices(64, 7) == [0, 1, 2, 3, 3, 4, 5]
  assert frames.seq_frame_indices(64, 3) == [0, 1, 1]
  with pytest.raises(ValueError, match="from a clip of 0 frames"):
    frames.seq_frame_indices(64, 0)
