"""The clip readers on real videos (`helpers.REAL_VIDEOS`) as they come, and
remuxed the ways clips in the wild differ: display rotation, variable frame
rate, a few frames, a sound track, other containers. Remuxing copies the
H.264 packets, so every copy holds the real bitstream and decodes to the same
pictures."""

from fractions import Fraction

import av
import numpy as np
import pytest

import helpers
from vwt_jax.data.vript import frames

IMAGE_SIZE = 224


def _reference(path, indices):
  """The frames at display `indices`, decoded by plain PyAV from the first frame on."""
  wanted = set(indices)
  with av.open(path) as container:
    decoded = {i: frame.to_ndarray(format='rgb24')
               for i, frame in enumerate(container.decode(video=0)) if i in wanted}
  return np.stack([decoded[i] for i in indices])


def _packets(path):
  """(pts, is_keyframe) of the video packets, in decode order."""
  with av.open(path) as container:
    return [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]


def _remux(source, destination, *, keep=None, retime=None, rotation=None, sound=False,
           muxer=None, options=None):
  """Copies the video packets of `source` (the first `keep` in decode order)
  into `destination`; `retime` maps a display index to a new pts (dts follow,
  shifted so that none passes its pts); `rotation`: a display matrix turning
  the picture this many degrees counter-clockwise; `sound`: a 440 Hz AAC
  track alongside; `muxer`: the output format when the extension does not
  name it; `options`: the muxer's."""
  with av.open(source) as src, av.open(destination, 'w', format=muxer, options=options) as out:
    video = src.streams.video[0]
    stream = out.add_stream_from_template(video)
    if rotation is not None:
      stream.set_display_rotation(rotation)
    packets = [p for p in src.demux(video) if p.size][:keep]
    if retime is not None:
      rank = {t: i for i, t in enumerate(sorted(p.pts for p in packets))}
      shown = [retime(rank[p.pts]) for p in packets]
      shift = max(a - b for a, b in zip(sorted(shown), shown))
      for packet, pts, dts in zip(packets, shown, sorted(shown)):
        packet.pts, packet.dts = pts, dts - shift
    if sound:
      tone = out.add_stream('aac', rate=48000, layout='stereo')
      t = np.arange(int(video.duration * video.time_base * 48000)) / 48000
      samples = np.tile(0.2 * np.sin(2 * np.pi * 440 * t, dtype=np.float32), (2, 1))
      for start in range(0, samples.shape[1] - 1023, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]),
                                           format='fltp', layout='stereo')
        frame.sample_rate, frame.pts = 48000, start
        out.mux(tone.encode(frame))
      out.mux(tone.encode(None))
    for packet in packets:
      packet.stream = stream
      out.mux(packet)
  return destination


@pytest.mark.parametrize('name, profile, size, rate, num_frames, has_audio', [
    ('bikes.mp4', 'High', (640, 272), 25, 250, False),
    ('carphone_pristine.mp4', 'High', (176, 144), Fraction(30000, 1001), 120, False),
    ('bigbuckbunny.mp4', 'Main', (1280, 720), 25, 132, True),
])
def test_real_videos_are_those_described(name, profile, size, rate, num_frames, has_audio):
  path = helpers.real_video(name)
  with av.open(path) as container:
    stream = container.streams.video[0]
    assert (stream.codec_context.name, stream.profile) == ('h264', profile)
    assert (stream.codec_context.width, stream.codec_context.height) == size
    assert stream.average_rate == rate
    assert bool(container.streams.audio) == has_audio
  assert frames.count_frames(path) == num_frames


@pytest.mark.parametrize('name', helpers.REAL_VIDEOS)
def test_decoded_frames_are_those_decoding_from_the_start_shows(name):
  path = helpers.real_video(name)
  n = frames.count_frames(path)
  # Unordered, repeated, both ends, and the frames the captioner samples.
  indices = [n - 1, 0, n // 2, n // 2, 1] + frames.sample_frame_indices(8, n, 'middle')
  got = frames.decode_frames(path, indices)
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, _reference(path, indices))


class _CountingClip:
  """A PyAV input container that records the pts of every frame it decodes."""

  def __init__(self, container, decoded):
    self._container = container
    self._decoded = decoded

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._container.close()

  def __getattr__(self, name):
    return getattr(self._container, name)

  def decode(self, *args, **kwargs):
    for frame in self._container.decode(*args, **kwargs):
      self._decoded.append(frame.pts)
      yield frame


@pytest.fixture
def decoded(monkeypatch):
  """The pts of the frames `frames` decodes, in order."""
  pts, open_clip = [], frames.open_clip
  monkeypatch.setattr(frames, 'open_clip',
                      lambda path, media=None: _CountingClip(open_clip(path, media), pts))
  return pts


def test_a_late_frame_is_decoded_from_the_keyframe_before_it(decoded):
  path = helpers.real_video('bikes.mp4')
  packets = _packets(path)
  keys = [k for k, (_, is_key) in enumerate(packets) if is_key]
  assert len(packets) == 250 and len(keys) == 6
  got = frames.decode_frames(path, [249])
  np.testing.assert_array_equal(got, _reference(path, [249]))
  # After a seek to the last keyframe only the packets from it on reach the
  # decoder: at most that many frames, where decoding from the start shows 250.
  assert 1 <= len(decoded) <= len(packets) - keys[-1]


def test_spread_frames_skip_the_frames_between_keyframes(decoded):
  path = helpers.real_video('bikes.mp4')
  indices = frames.sample_frame_indices(8, 250, 'middle')
  np.testing.assert_array_equal(frames.decode_frames(path, indices), _reference(path, indices))
  # Decoding from the start shows every frame up to the last one asked for.
  assert len(decoded) < indices[-1] + 1
  assert len(set(decoded)) == len(decoded)


@pytest.mark.parametrize('degrees, quarter_turns', [(90, 1), (-90, 3), (180, 2)])
def test_display_rotation_turns_frames_upright(tmp_path, degrees, quarter_turns):
  source = helpers.real_video('bikes.mp4')
  path = _remux(source, str(tmp_path / 'phone.mp4'), rotation=degrees)
  indices = [0, 137, 249]
  got = frames.decode_frames(path, indices)
  # `degrees` counter-clockwise, as np.rot90 turns for positive k.
  expected = np.rot90(_reference(source, indices), quarter_turns, axes=(1, 2))
  assert got.shape == expected.shape == (3,) + ((640, 272) if degrees % 180 else (272, 640)) + (3,)
  np.testing.assert_array_equal(got, expected)


def test_variable_frame_rate_indices_count_frames(tmp_path):
  source = helpers.real_video('carphone_pristine.mp4')
  # Display durations of 1, 2 and 3 frame periods (1001/30000 s) in turn.
  period = 1001
  starts = np.cumsum([0] + [period * (1 + i % 3) for i in range(119)])
  path = _remux(source, str(tmp_path / 'vfr.mp4'), retime=lambda i: int(starts[i]))
  shown = sorted(pts for pts, _ in _packets(path))
  assert len(set(np.diff(shown).tolist())) == 3
  assert frames.count_frames(path) == frames.count_frames(source) == 120
  indices = frames.sample_frame_indices(8, 120, 'middle') + [119, 0]
  np.testing.assert_array_equal(frames.decode_frames(path, indices), _reference(source, indices))


def test_a_clip_shorter_than_the_frames_asked_repeats_its_last_frame(tmp_path):
  source = helpers.real_video('carphone_pristine.mp4')
  # The first three packets in decode order (I, P, B) show frames 0, 1, 2.
  path = _remux(source, str(tmp_path / 'short.mp4'), keep=3)
  assert frames.count_frames(path) == 3
  got, indices = frames.read_clip(path, 8, 'middle')
  assert indices == [0, 1, 2, 2, 2, 2, 2, 2]
  np.testing.assert_array_equal(got, _reference(source, indices))
  _, drawn = frames.read_clip(path, 8, 'rand', np.random.default_rng(0))
  assert drawn == indices


def test_a_sound_track_leaves_the_video_frames_alone(tmp_path):
  source = helpers.real_video('bikes.mp4')
  path = _remux(source, str(tmp_path / 'with_sound.mp4'), sound=True)
  with av.open(path) as container:
    assert [s.type for s in container.streams] == ['video', 'audio']
    assert sum(p.size > 0 for p in container.demux(audio=0)) > 0
  assert frames.count_frames(path) == 250
  indices = frames.sample_frame_indices(8, 250, 'middle')
  np.testing.assert_array_equal(frames.decode_frames(path, indices), _reference(source, indices))


@pytest.mark.parametrize('extension, muxer', [
    ('mkv', None), ('mov', None), ('ts', None),
    # Raw H.264 has no timestamps: frames are counted from the first one.
    ('h264', 'h264'),
])
def test_other_containers_decode_the_same_frames(tmp_path, extension, muxer):
  source = helpers.real_video('bikes.mp4')
  path = _remux(source, str(tmp_path / f'bikes.{extension}'), muxer=muxer)
  assert frames.count_frames(path) == 250
  indices = [249, 0, 137, 136, 60]
  np.testing.assert_array_equal(frames.decode_frames(path, indices), _reference(source, indices))


def test_a_file_cut_short_has_the_frames_it_holds(tmp_path):
  source = helpers.real_video('bikes.mp4')
  # The index first (as cameras and web encoders write it), then half the data.
  whole = _remux(source, str(tmp_path / 'whole.mp4'), options={'movflags': 'faststart'})
  path = tmp_path / 'cut.mp4'
  with open(whole, 'rb') as f:
    data = f.read()
  path.write_bytes(data[:len(data) // 2])
  path = str(path)
  held = frames.count_frames(path)
  assert 0 < held < 250
  got, indices = frames.read_clip(path, 4, 'middle')
  assert indices[-1] < held and got.shape == (4, 272, 640, 3)
  np.testing.assert_array_equal(got[:1], _reference(source, indices[:1]))
  with pytest.raises(frames.CorruptClipError, match=f'frame 249 requested of a clip of {held}'):
    frames.decode_frames(path, [0, 249])


def _odd_sized_copy(path, destination, height, width):
  """The first frames of `path` cropped to an odd size and re-encoded (x264
  4:4:4: 4:2:0 needs even sides)."""
  with av.open(destination, 'w') as out:
    stream = out.add_stream('libx264', rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv444p'
    for image in _reference(path, list(range(10))):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]))
      out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
  return destination


@pytest.mark.parametrize('train', [True, False])
def test_any_frame_size_reaches_the_model_size(tmp_path, train):
  clips = [helpers.real_video(name) for name in helpers.REAL_VIDEOS]
  clips.append(_odd_sized_copy(clips[1], str(tmp_path / 'odd.mp4'), 143, 175))
  rng = np.random.default_rng(0)
  for path, (height, width) in zip(clips, [(272, 640), (144, 176), (720, 1280), (143, 175)]):
    clip, _ = frames.read_clip(path, 4, 'rand', rng)
    assert clip.shape == (4, height, width, 3)
    out = frames.transform_clips([clip], image_size=IMAGE_SIZE, train=train, rng=rng)
    assert out.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and out.dtype == np.uint8
