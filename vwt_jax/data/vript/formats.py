"""The four Vriptor training formats, character-exact with the official builders.

Reimplements `vriptor/build_vript_training_data/build_training_vript_stage{1,2}_
{single,concat}.py` (mutonix/Vript @3dd89c7) on `schema.Video`s, plus the
prompt wrapping of ST-LLM's `ITImgTrainDataset.process_qa(simple=True)`:

  single_scene            one clip, caption content as target
  single_scene_voiceover  the same with the clip's ASR lines in the prompt
  multi_scene             consecutive clips, '[Scene i: title](Duration: [a, b])'
                          headers + contents joined by blank lines
  multi_scene_voiceover   the same with the window's ASR lines in the prompt

The 'single' builder emits one of the first two per clip and the 'concat'
builder one of the last two per window, by the official keyword rule
(`wants_voiceover`). Official details kept on purpose:

- Numbers print as `str(round(x, 1))` (half-to-even on the binary value:
  3.625 -> 3.6) and the sampling rate as `str(round(duration / 64, 2))`.
- Single: duration = max(ASR duration, end of every ASR span). Concat: scene
  ranges are cumulative ASR durations; spans past a clip's end do not count.
- Concat voice-over offsets: scene k's spans are shifted by the (already
  shifted) end of the last span of the closest earlier scene with ASR text,
  not by the scene's start time. Not reproduced: when a window's first scenes
  have no ASR text, the official code uses a stale span of the previous window
  (or raises UnboundLocalError, a dropped window); here the offset stays 0.
- Stage 2 uses units 's' instead of 'second' and merges concat ASR segments
  (`merge_voiceovers`); stage-2 single does not merge (commented out upstream).
- Stage-2 filters (single: duration < 9 skipped, 90 % of clips with sampling
  rate < 2 dropped; concat: voice-over of > 2048 space-separated words
  emptied, 90 % of windows with T / L < 50 or T < 600 dropped, voice-over
  format only with probability 0.3) run when `official_filters=True`, drawn
  from `random.Random(seed)` in the official order of draws.

Other differences: no final shuffle (the training pipeline shuffles), videos
in `load_dataset` order instead of `os.listdir` order, and ASR durations read
as floats (an integer duration prints '4.0' here, '4' upstream).
"""

import dataclasses
import random
from typing import Optional, Sequence

from vwt_jax.data.vript import schema

FORMATS = ('single_scene', 'single_scene_voiceover', 'multi_scene', 'multi_scene_voiceover')
STAGES = ('stage1', 'stage2')
KINDS = ('single', 'concat')

# Stage-2 concat greedily merges ASR segments until the text has more words.
MERGE_MIN_WORDS = 15
# Prompts state the sampling rate as if 64 frames were taken, at both stages.
NOMINAL_FRAMES = 64
_UNITS = {'stage1': 'second', 'stage2': 's'}
# What each format asks for (the voice-over variants ask the same).
REQUESTS = {
    'single_scene': 'in detail',
    'single_scene_voiceover': 'in detail',
    'multi_scene': 'scene by scene in detail',
    'multi_scene_voiceover': 'scene by scene in detail',
}
# Substrings of the lower-cased target that select the voice-over format
# ('voice' and 'over' must both occur).
_KEYWORDS = ('voicing', 'narrat', 'speak', 'talk', 'say')

# stage -> (window lengths, their weights, max tries per video, scenes per try).
_WINDOW_SAMPLING = {
    'stage1': (tuple(range(1, 7)), (1, 2, 3, 4, 3, 2), 30, 1.5),
    'stage2': (tuple(range(2, 21)), (1,) * 7 + (2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1), 120, 1.2),
}
_STAGE2_MIN_SINGLE_DURATION = 9
_STAGE2_LOW_RATE = 2
_STAGE2_MAX_VOICEOVER_WORDS = 2048
_STAGE2_MIN_SECONDS_PER_SCENE = 50
_STAGE2_MIN_WINDOW_SECONDS = 600
_STAGE2_DROP_PROB = 0.9
_STAGE2_VOICEOVER_PROB = 0.3


@dataclasses.dataclass(frozen=True)
class Sample:
  """One training example in the official builders' output."""
  format: str
  stage: str
  video_id: str
  clip_ids: tuple[str, ...]
  video: tuple[str, ...]  # relpaths of the clips, in order
  paths: tuple[Optional[str], ...]  # absolute paths (None if missing)
  prompt: str  # QA 'i'
  target: str  # QA 'a'
  model_input: str
  model_target: str


def fmt1(x: float) -> str:
  """`str(round(float(x), 1))`, the official timestamp printing."""
  return str(round(float(x), 1))


def sample_rate(duration: float) -> float:
  """Seconds per frame as printed in prompts: round(duration / 64, 2)."""
  return round(duration / NOMINAL_FRAMES, 2)


def _check_stage(stage: str) -> None:
  if stage not in STAGES:
    raise ValueError(f'stage should be one of {STAGES}, got {stage!r}')


def merge_voiceovers(segments: Sequence[schema.AsrSegment]) -> list[schema.AsrSegment]:
  """Stage-2 merging: accumulate segments until their text has > 15 words.

  Each merged segment spans the first start to the last end; texts are joined
  with ' ' and keep their leading spaces, so merged text has double spaces.
  """
  groups, pending = [], []
  for seg in segments:
    pending.append(seg)
    if len(' '.join(s.text for s in pending).split()) > MERGE_MIN_WORDS:
      groups.append(pending)
      pending = []
  return [schema.AsrSegment(g[0].start, g[-1].end, ' '.join(s.text for s in g))
          for g in groups + [pending] if g]


def voiceover_line(start: float, end: float, text: str) -> str:
  """One prompt line '[s, e] text\\n' for an ASR segment."""
  return f'[{fmt1(start)}, {fmt1(end)}] {text.strip()}\n'


def wants_voiceover(voiceover: str, target: str) -> bool:
  """The official keyword rule choosing the voice-over format.

  True iff there is voice-over text and the lower-cased target mentions
  speech: ('voice' and 'over') or 'voicing', 'narrat', 'speak', 'talk', 'say'
  as substrings. For windows the target includes the scene headers.
  """
  text = target.lower()
  return bool(voiceover) and (('voice' in text and 'over' in text)
                              or any(k in text for k in _KEYWORDS))


def model_input(prompt: str) -> str:
  """ST-LLM's `process_qa(simple=True)` input: note the two spaces before ###."""
  return '<ImageHere>###Human: ' + prompt + ' ' + ' ' + '###Assistant: '


def model_target(target: str) -> str:
  """The answer with ST-LLM's `end_sym`."""
  return target + '###'


def request_prompt(fmt: str, stage: str, duration: float, voiceover: Optional[str]) -> str:
  """The prompt of format `fmt`: the request, the duration and sampling rate,
  after the voice-over lines (already joined) for the voice-over formats."""
  what = REQUESTS[fmt]
  unit = _UNITS[stage]
  timing = (f'(Duration: [0.0, {fmt1(duration)}]{unit}, '
            f'Sampling Rate: {sample_rate(duration)}{unit}/frame).')
  if voiceover is None:
    return f'Describe the video {what} {timing}'
  return (f'Voiceover:"{voiceover}". Based on the video and voiceover, '
          f'describe the video {what} {timing}')


def _use_voiceover(text: 'SingleText | WindowText', force_voiceover: Optional[bool]) -> bool:
  if force_voiceover is None:
    return wants_voiceover(text.voiceover, text.target)
  return force_voiceover and bool(text.voiceover)


def _sample(fmt: str, stage: str, clips: Sequence[schema.Clip], duration: float,
            text: 'SingleText | WindowText', use_voiceover: bool) -> Sample:
  """The sample of `fmt` ('single_scene' or 'multi_scene') or of its voice-over variant."""
  prompt = request_prompt(fmt, stage, duration, text.voiceover if use_voiceover else None)
  return Sample(
      format=fmt + '_voiceover' if use_voiceover else fmt, stage=stage,
      video_id=clips[0].video_id, clip_ids=tuple(c.clip_id for c in clips),
      video=tuple(c.relpath for c in clips), paths=tuple(c.path for c in clips), prompt=prompt,
      target=text.target, model_input=model_input(prompt), model_target=model_target(text.target))


@dataclasses.dataclass(frozen=True)
class SingleText:
  """What the single-clip builder derives from a clip before choosing a format."""
  duration: float  # rounded to 1 dp
  voiceover: str  # ASR lines, each ending in '\n'; '' without ASR text
  target: str


def single_text(clip: schema.Clip) -> Optional[SingleText]:
  """Duration, voice-over lines and target of a clip; None if it has no ASR line."""
  if clip.asr is None:
    return None
  duration = clip.asr.duration
  lines = []
  for seg in clip.asr.segments:
    lines.append(voiceover_line(seg.start, seg.end, seg.text))
    duration = max(duration, seg.end)
  return SingleText(round(duration, 1), ''.join(lines), clip.caption.content)


def build_single(clip: schema.Clip, *, stage: str,
                 force_voiceover: Optional[bool] = None) -> Optional[Sample]:
  """The single-clip sample (no stage-2 filters); None if the clip has no ASR line.

  Args:
    clip: a clip with its ASR record.
    stage: 'stage1' or 'stage2' (units only: stage-2 single does not merge).
    force_voiceover: None applies the keyword rule; True uses the voice-over
      format whenever the clip has ASR text; False never does.
  """
  _check_stage(stage)
  text = single_text(clip)
  if text is None:
    return None
  return _sample('single_scene', stage, [clip], text.duration, text,
                 _use_voiceover(text, force_voiceover))


@dataclasses.dataclass(frozen=True)
class WindowText:
  """What the concat builder derives from a window before choosing a format."""
  total: float  # T, the rounded sum of the clips' ASR durations
  voiceover: str
  target: str


def window_text(clips: Sequence[schema.Clip], *, stage: str) -> Optional[WindowText]:
  """Scene headers, target and offset voice-over lines of consecutive clips.

  Returns None when a clip has no ASR line (the official builder drops the
  window). See the module docstring for the voice-over offset rule.
  """
  _check_stage(stage)
  if not clips or any(c.asr is None for c in clips):
    return None
  ranges, lines = [], []
  elapsed = 0.0
  offset = 0.0
  for clip in clips:
    ranges.append((elapsed, elapsed + clip.asr.duration))
    elapsed += clip.asr.duration
    segments = clip.asr.segments
    if stage == 'stage2':
      segments = merge_voiceovers(segments)
    shifted_end = None
    for seg in segments:
      shifted_end = seg.end + offset
      lines.append(voiceover_line(seg.start + offset, shifted_end, seg.text))
    if shifted_end is not None:
      offset = shifted_end
  total = round(elapsed, 1)
  parts = []
  for i, (clip, (a, b)) in enumerate(zip(clips, ranges), start=1):
    span = f'[{fmt1(a)}, {fmt1(b)}]'
    if stage == 'stage1':
      header = f'[Scene {i}: {clip.caption.scene_title}](Duration: {span})'
    else:
      header = (f'[Scene {i}/{len(clips)}: {clip.caption.scene_title}]'
                f'(Duration: {span}/{fmt1(total)}s)')
    parts.append(f'{header}\n{clip.caption.content}')
  return WindowText(total, ''.join(lines), '\n\n'.join(parts).strip())


def build_window(clips: Sequence[schema.Clip], *, stage: str,
                 force_voiceover: Optional[bool] = None) -> Optional[Sample]:
  """The multi-scene sample of consecutive clips (no stage-2 filters).

  Args:
    clips: consecutive clips of one video, in scene order.
    stage: 'stage1' or 'stage2'.
    force_voiceover: None applies the keyword rule (on the target including
      the scene headers); True uses the voice-over format whenever the window
      has ASR text; False never does.

  Returns:
    The sample, or None when a clip has no ASR line.
  """
  text = window_text(clips, stage=stage)
  if text is None:
    return None
  return _sample('multi_scene', stage, clips, text.total, text,
                 _use_voiceover(text, force_voiceover))


def sample_windows(clips: Sequence[schema.Clip], *, stage: str,
                   rng: random.Random) -> list[tuple[int, int]]:
  """Random windows [start, end) of one video's sorted clips, as upstream.

  min(30, n // 1.5) tries at stage 1 (length 1..6, weights 1,2,3,4,3,2) or
  min(120, n // 1.2) at stage 2 (length 2..20); start ~ randint(0, n - 2).
  Tries that run past the last clip or cover a gap in scene numbering are
  dropped; duplicates are kept. The draws match the official
  `random.randint` / `random.choices` calls one for one.
  """
  _check_stage(stage)
  lengths, weights, max_tries, per_try = _WINDOW_SAMPLING[stage]
  n = len(clips)
  windows = []
  for _ in range(min(max_tries, int(n // per_try))):
    start = rng.randint(0, n - 2)
    length = rng.choices(lengths, weights=weights)[0]
    end = start + length
    if end > n or clips[end - 1].scene - clips[start].scene + 1 != length:
      continue
    windows.append((start, end))
  return windows


def _fixed_windows(videos: Sequence[schema.Video],
                   windows: Sequence[Sequence[str]]) -> dict[str, list[tuple[int, int]]]:
  where = {c.clip_id: (v.video_id, i) for v in videos for i, c in enumerate(v.clips)}
  clips_of = {v.video_id: v.clips for v in videos}
  by_video: dict[str, list[tuple[int, int]]] = {}
  for window in windows:
    window = tuple(window)
    unknown = [c for c in window if c not in where]
    if not window or unknown:
      raise ValueError(f'window {window}: unknown clip ids {unknown} (or empty window)')
    video_id, start = where[window[0]]
    expected = tuple(c.clip_id for c in clips_of[video_id][start:start + len(window)])
    scenes = [c.scene for c in clips_of[video_id][start:start + len(window)]]
    if window != expected or scenes != list(range(scenes[0], scenes[0] + len(window))):
      raise ValueError(f'window {window}: expected consecutive scenes of one video, '
                       f'e.g. {expected}')
    by_video.setdefault(video_id, []).append((start, start + len(window)))
  return by_video


def _single_samples(videos, stage, rng, official_filters, force_voiceover):
  samples = []
  for video in videos:
    if not video.has_asr:
      continue
    for clip in video.clips:
      text = single_text(clip)
      if text is None:
        continue
      if stage == 'stage2' and official_filters:
        if text.duration < _STAGE2_MIN_SINGLE_DURATION:
          continue
        if (sample_rate(text.duration) < _STAGE2_LOW_RATE
            and rng.random() < _STAGE2_DROP_PROB):
          continue
      samples.append(_sample('single_scene', stage, [clip], text.duration, text,
                             _use_voiceover(text, force_voiceover)))
  return samples


def _concat_samples(videos, stage, rng, official_filters, force_voiceover, fixed):
  samples = []
  for video in videos:
    # Windows are drawn before the ASR check, as upstream, so that the random
    # stream does not depend on which videos have ASR.
    if fixed is None:
      spans = sample_windows(video.clips, stage=stage, rng=rng)
    else:
      spans = fixed.get(video.video_id, [])
    if not video.has_asr:
      continue
    for start, end in spans:
      clips = video.clips[start:end]
      text = window_text(clips, stage=stage)
      if text is None:
        continue
      filters = stage == 'stage2' and official_filters
      if filters:
        if len(text.voiceover.split(' ')) > _STAGE2_MAX_VOICEOVER_WORDS:
          text = dataclasses.replace(text, voiceover='')
        if ((text.total / len(clips) < _STAGE2_MIN_SECONDS_PER_SCENE
             or text.total < _STAGE2_MIN_WINDOW_SECONDS)
            and rng.random() < _STAGE2_DROP_PROB):
          continue
      use = _use_voiceover(text, force_voiceover)
      if use and filters and force_voiceover is None:
        use = rng.random() < _STAGE2_VOICEOVER_PROB
      samples.append(_sample('multi_scene', stage, clips, text.total, text, use))
  return samples


def build_samples(videos: Sequence[schema.Video], *, stage: str, seed: int,
                  kinds: Sequence[str] = KINDS, official_filters: bool = True,
                  force_voiceover: Optional[bool] = None,
                  windows: Optional[Sequence[Sequence[str]]] = None) -> list[Sample]:
  """All training samples of `videos` for one stage, as the official builders.

  Args:
    videos: from `schema.load_dataset`; videos without `_asr.jsonl` and clips
      without an ASR line give no samples.
    stage: 'stage1' or 'stage2'.
    seed: seeds one `random.Random` per kind (each official script seeds its
      own global `random`), used for window sampling and the stage-2 filters.
    kinds: 'single' (single_scene[_voiceover]) and/or 'concat'
      (multi_scene[_voiceover]); samples come in this order, by video.
    official_filters: apply the stage-2 duration filter, random drops,
      voice-over length cap and 30 % voice-over coin flip (no effect at
      stage 1).
    force_voiceover: None applies the keyword rule; True/False force the
      voice-over format on (when there is ASR text) or off, and skip the coin
      flip.
    windows: fixed concat windows as clip-id tuples (consecutive scenes of one
      video) instead of random sampling.

  Returns:
    The samples; the official final shuffle is left to the training pipeline.
  """
  _check_stage(stage)
  unknown = [k for k in kinds if k not in KINDS]
  if unknown:
    raise ValueError(f'kinds should be among {KINDS}, got {unknown}')
  fixed = None if windows is None else _fixed_windows(videos, windows)
  samples = []
  for kind in kinds:
    rng = random.Random(seed)
    if kind == 'single':
      samples += _single_samples(videos, stage, rng, official_filters, force_voiceover)
    else:
      samples += _concat_samples(videos, stage, rng, official_filters, force_voiceover, fixed)
  return samples
