"""`whisper_asr` offline: a stand-in for faster-whisper's model takes the
decoded audio of real clips (`helpers.REAL_VIDEOS`); faster-whisper itself is
not installed."""

import builtins
import sys
import types

import av
import numpy as np
import pytest

import helpers
from vwt_jax import caption
from vwt_jax.data.vript import frames
from vwt_jax.data.vript import schema
from vwt_jax.data.vript import whisper_asr


class _FakeWhisper:
  """faster-whisper's `WhisperModel.transcribe` interface; records its calls."""

  def __init__(self, segments, language='en'):
    self.segments = segments
    self.language = language
    self.calls = []

  def transcribe(self, audio, beam_size, vad_filter):
    self.calls.append({'audio': audio, 'beam_size': beam_size, 'vad_filter': vad_filter})
    # A generator, as faster-whisper's: the segments exist once iterated.
    segments = (types.SimpleNamespace(start=s, end=e, text=t) for s, e, t in self.segments)
    return segments, types.SimpleNamespace(language=self.language)


SEGMENTS = [(0.0, 2.46, ' Hello there.'), (3.25, 5.0, ' Bye now. ')]


def test_the_model_gets_16khz_mono_float32_of_the_whole_sound_track():
  path = helpers.real_video('bigbuckbunny.mp4')
  with av.open(path) as container:
    stream = container.streams.audio[0]
    assert (stream.rate, stream.layout.name) == (48000, '5.1')
    seconds = float(stream.duration * stream.time_base)
  model = _FakeWhisper(SEGMENTS)
  whisper_asr.transcribe(path, model)
  (call,) = model.calls
  audio = call['audio']
  assert (call['beam_size'], call['vad_filter']) == (3, True)
  assert audio.dtype == np.float32 and audio.ndim == 1
  assert len(audio) == round(seconds * 16000)
  # The AAC track runs 32 ms past the 132 frames at 25 fps of the video.
  assert abs(len(audio) / 16000 - 132 / 25) < 0.05
  assert 0 < np.abs(audio).max() <= 1


def test_the_record_reads_like_a_vript_asr_line():
  path = helpers.real_video('bigbuckbunny.mp4')
  record = whisper_asr.transcribe(path, _FakeWhisper(SEGMENTS, language='fr'))
  assert record == schema.AsrRecord(
      clip_id='bigbuckbunny', duration=5.312, lang='fr',
      segments=(schema.AsrSegment(0.0, 2.46, ' Hello there.'),
                schema.AsrSegment(3.25, 5.0, ' Bye now. ')),
      full_text=' Hello there.  Bye now.  ')


def test_settings_reach_the_model_and_silence_gives_no_lines():
  model = _FakeWhisper([])
  record = whisper_asr.transcribe(helpers.real_video('bigbuckbunny.mp4'), model,
                                  beam_size=5, vad_filter=False)
  assert (model.calls[0]['beam_size'], model.calls[0]['vad_filter']) == (5, False)
  assert record.segments == () and record.full_text == ''
  assert whisper_asr.voiceover_text(record) == ''


def test_a_clip_without_sound_has_no_voiceover():
  model = _FakeWhisper(SEGMENTS)
  assert whisper_asr.transcribe(helpers.real_video('bikes.mp4'), model) is None
  assert not model.calls


def test_a_missing_clip_is_named():
  with pytest.raises(frames.CorruptClipError, match='nowhere.mp4: file not found'):
    whisper_asr.transcribe('nowhere.mp4', _FakeWhisper(SEGMENTS))


def test_voiceover_text_is_the_demo_block():
  record = schema.AsrRecord('c', 5.0, 'en', tuple(schema.AsrSegment(*s) for s in SEGMENTS), '')
  # round(3.25, 1) is 3.2: the demo's Python rounding, halves to even.
  assert whisper_asr.voiceover_text(record) == '[0.0, 2.5] Hello there.\n[3.2, 5.0] Bye now.\n'


def test_written_records_read_back(tmp_path):
  record = whisper_asr.transcribe(helpers.real_video('bigbuckbunny.mp4'),
                                  _FakeWhisper(SEGMENTS))
  path = str(tmp_path / 'bigbuckbunny_asr.jsonl')
  whisper_asr.write_asr_file(path, [record])
  problems = schema.Problems()
  assert schema.read_asr_file(path, problems) == {'bigbuckbunny': record}
  assert not problems.items


def test_written_records_are_what_caption_voiceover_takes(tmp_path):
  folder = tmp_path / 'clips'
  folder.mkdir()
  (folder / 'bigbuckbunny.mp4').symlink_to(helpers.real_video('bigbuckbunny.mp4'))
  record = whisper_asr.transcribe(str(folder / 'bigbuckbunny.mp4'), _FakeWhisper(SEGMENTS))
  whisper_asr.write_asr_file(str(tmp_path / 'clips_asr.jsonl'), [record])
  (video,) = caption.find_videos(str(folder), voiceover=str(tmp_path / 'clips_asr.jsonl'))
  prompt = caption.single_prompt(video.clips[0].clip, 'stage1')
  assert f'Voiceover:"{whisper_asr.voiceover_text(record)}"' in prompt


def test_load_model_without_faster_whisper_names_the_extra(monkeypatch):
  real_import = builtins.__import__

  def no_faster_whisper(name, *args, **kwargs):
    if name == 'faster_whisper':
      raise ModuleNotFoundError(f"No module named '{name}'")
    return real_import(name, *args, **kwargs)

  monkeypatch.delitem(sys.modules, 'faster_whisper', raising=False)
  monkeypatch.setattr(builtins, '__import__', no_faster_whisper)
  with pytest.raises(ImportError, match=r"pip install 'vwt_jax\[whisper\]'"):
    whisper_asr.load_model()


def test_load_model_builds_the_demo_model(monkeypatch):
  built = []
  module = types.ModuleType('faster_whisper')
  module.WhisperModel = lambda *args, **kwargs: built.append((args, kwargs)) or 'model'
  monkeypatch.setitem(sys.modules, 'faster_whisper', module)
  assert whisper_asr.load_model() == 'model'
  assert built == [(('small',), {'device': 'auto', 'compute_type': 'int8',
                                 'download_root': None})]
