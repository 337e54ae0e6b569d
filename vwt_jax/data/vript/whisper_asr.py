"""Voice-over of a clip transcribed with faster-whisper, as Vript ASR records.

The official captioner demo (`vriptor/demo.py`, its `--voice-enable` option
and `process_audio`) transcribes a video's sound with faster-whisper's
`WhisperModel('small', compute_type='int8')` and `transcribe(beam_size=3,
vad_filter=True)`, and prints each segment into the prompt as
'[start, end] text' (times rounded to 0.1 s, text stripped, one line each).
Here:

- `load_model` builds that WhisperModel (faster-whisper is the optional
  `whisper` extra; it downloads the weights from the Hugging Face Hub on first
  use). The demo pins the GPU; `device='auto'` takes one when there is one.
- `transcribe` returns the transcription as a `schema.AsrRecord`, the form of
  a line of Vript's `{video_id}_asr.jsonl`: segment texts as Whisper gives
  them (with their leading space), `full_text` each text followed by a space,
  `lang` Whisper's detected language. So the records go wherever Vript's ASR
  goes: `write_asr_file` writes them as an `_asr.jsonl` that
  `schema.read_asr_file` reads and `python -m vwt_jax.caption --voiceover`
  takes, and the captioner prompts print them as the demo does.
- `voiceover_text` is the demo's voice-over block, for prompts built by hand;
  the lines are `formats.voiceover_line`, the training builders' own.

Differences from the demo: the demo writes the sound to an mp3 with the
ffmpeg program and lets faster-whisper decode that file; here PyAV decodes
the first audio stream straight to 16 kHz mono float32 (what faster-whisper
resamples any input to), without the lossy mp3 round trip, so transcripts may
differ slightly. A clip without an audio stream gives no record (the demo's
ffmpeg call fails and it captions without voice-over). The record's
`duration` is the audio's length; Vript's is the clip's, which the captioner
measures from the video frames anyway (`caption.timed`).
"""

import json
import os
from typing import Any, Iterable, Optional

import av
import numpy as np

from vwt_jax.core import files
from vwt_jax.data.vript import formats
from vwt_jax.data.vript import frames
from vwt_jax.data.vript import schema

# Whisper's input: faster-whisper takes a numpy array only at this rate, mono.
SAMPLE_RATE = 16000


def load_model(name: str = 'small', *, device: str = 'auto', compute_type: str = 'int8',
               download_root: Optional[str] = None) -> Any:
  """The demo's `faster_whisper.WhisperModel`.

  Args:
    name: a faster-whisper model size ('small' as in the demo, 'large-v3', ...)
      or a converted model folder.
    device: 'auto', 'cuda' or 'cpu'.
    compute_type: 'int8' as in the demo; 'float16' and others on a GPU.
    download_root: where the weights are stored (default: the Hugging Face
      cache).

  Raises:
    ImportError: faster-whisper is not installed.
  """
  try:
    import faster_whisper  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('transcribing voice-over needs faster-whisper: '
                      "pip install 'vwt_jax[whisper]'") from e
  return faster_whisper.WhisperModel(name, device=device, compute_type=compute_type,
                                     download_root=download_root)


def decode_audio(path: str) -> Optional[np.ndarray]:
  """The first audio stream of the clip at `path` as 16 kHz mono float32
  samples; None when the clip has no audio stream or it holds no samples.

  Raises:
    frames.CorruptClipError: missing or unreadable file, no video stream, or
      an audio stream that cannot be decoded.
  """
  chunks = []
  with frames.open_clip(path) as container:
    if not container.streams.audio:
      return None
    resampler = av.AudioResampler(format='flt', layout='mono', rate=SAMPLE_RATE)
    try:
      for frame in container.decode(container.streams.audio[0]):
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
      # The resampler holds back the last samples until it is flushed.
      chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.FFmpegError as e:
      raise frames.CorruptClipError(
          path, f'audio decoding failed ({type(e).__name__}: {e})') from e
  if not chunks:
    return None
  return np.concatenate(chunks)


def transcribe(path: str, model: Any, *, beam_size: int = 3,
               vad_filter: bool = True) -> Optional[schema.AsrRecord]:
  """The Vript ASR record of the clip at `path`; None for a clip without sound.

  Args:
    path: the clip (local path or URL); its file name without extension is
      the record's `clip_id`, as `python -m vwt_jax.caption` names clips.
    model: a `load_model` model (anything with faster-whisper's
      `transcribe(audio, beam_size=, vad_filter=)`).
    beam_size, vad_filter: the demo's decoding settings.

  Raises:
    frames.CorruptClipError: as `decode_audio`.
  """
  audio = decode_audio(path)
  if audio is None:
    return None
  segments, info = model.transcribe(audio, beam_size=beam_size, vad_filter=vad_filter)
  # faster-whisper yields segments lazily: this loop runs the decoding.
  segments = tuple(schema.AsrSegment(float(s.start), float(s.end), s.text) for s in segments)
  return schema.AsrRecord(
      clip_id=os.path.splitext(os.path.basename(path))[0],
      duration=len(audio) / SAMPLE_RATE,
      lang=info.language,
      segments=segments,
      full_text=''.join(s.text + ' ' for s in segments))


def voiceover_text(record: schema.AsrRecord) -> str:
  """The demo's voice-over block: '[start, end] text\\n' per segment."""
  return ''.join(formats.voiceover_line(s.start, s.end, s.text) for s in record.segments)


def write_asr_file(path: str, records: Iterable[schema.AsrRecord]) -> None:
  """Writes `records` as a Vript `_asr.jsonl` (one JSON object a line, the
  keys of Vript's files), which `schema.read_asr_file` reads back."""
  lines = []
  for record in records:
    lines.append(json.dumps({
        'clip_id': record.clip_id, 'duration': record.duration, 'lang': record.lang,
        'scene_text': [{'span': [s.start, s.end], 'text': s.text} for s in record.segments],
        'full_text': record.full_text}) + '\n')
  files.write_text(path, ''.join(lines))
