"""Readers for the extracted Vript release (captions, ASR, clip files).

Layout under `root` (the extracted HF `Mutonix/Vript` zips; the Chinese and
multilingual sets use the same schema with other group names):

  vript_captions/{group}_captions/{video_id}_caption.json
  vript_captions/{group}_captions.jsonl        (one clip record per line; read
                                                when the folder above is absent)
  {group}_clips/{video_id}/{video_id}-Scene-NNN.mp4
  {group}_clips/{video_id}/{video_id}_asr.jsonl

Groups (e.g. 'vript_long_videos') are discovered from these folder names.
`_cut_meta.json` is not read: clip timing comes from the ASR `duration`, as in
the official Vriptor builders.

The real release has defects that must not stop a run: empty folders from
broken zips, malformed JSON lines, clips whose mp4 is missing, gaps in the
scene numbering (`integrity: false`), unsorted `data` keys, ASR lines in any
order and ASR spans ending after the clip. Everything skipped or incomplete is
recorded in a `Problems` collector, naming the file.

  problems = schema.Problems()
  videos = schema.load_dataset('/data/vript', problems=problems)

`root` may be a URL (`gs://bucket/vript`). Each video's clip folder is listed
once and its files are looked up in that listing, so an object store answers
a few requests per video rather than one per clip.
"""

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

from etils import epath

from vwt_jax.core import files

CAPTIONS_DIR = 'vript_captions'
_CAPTIONS_SUFFIX = '_captions'
_CLIPS_SUFFIX = '_clips'
_CAPTION_FILE_SUFFIX = '_caption.json'
_ASR_FILE_SUFFIX = '_asr.jsonl'
SCENE_MARK = '-Scene-'


@dataclasses.dataclass(frozen=True)
class AsrSegment:
  """One Whisper segment; times in seconds relative to the clip start."""
  start: float
  end: float
  text: str  # raw, with its leading space


@dataclasses.dataclass(frozen=True)
class AsrRecord:
  """One line of `{video_id}_asr.jsonl`."""
  clip_id: str
  duration: float
  lang: str
  segments: tuple[AsrSegment, ...]
  full_text: str


@dataclasses.dataclass(frozen=True)
class Caption:
  """The `caption` dict of one clip record."""
  content: str
  scene_title: str
  shot_type: str
  camera_movement: str


@dataclasses.dataclass(frozen=True)
class Clip:
  """One captioned scene of a video."""
  video_id: str
  clip_id: str
  scene: int  # 1-based number parsed from '-Scene-NNN'
  caption: Caption
  voiceover: str  # the caption record's voiceover[0]; '' when empty
  asr: Optional[AsrRecord]  # None when the clip has no line in _asr.jsonl
  path: Optional[str]  # absolute mp4 path (or URL) if the file exists, else None
  relpath: str  # '{group}_clips/{video_id}/{clip_id}.mp4'


@dataclasses.dataclass(frozen=True)
class Video:
  """A video with its captioned clips, sorted by scene number."""
  video_id: str
  group: str
  title: str
  integrity: bool
  clips: tuple[Clip, ...]
  has_asr: bool  # {video_id}_asr.jsonl exists


class Problems:
  """Collects inputs that were skipped or are incomplete; never raises."""

  def __init__(self):
    self.items: list[tuple[str, str]] = []

  def add(self, path: str, reason: str) -> None:
    self.items.append((path, reason))

  def __len__(self) -> int:
    return len(self.items)

  def __repr__(self) -> str:
    return f'Problems({len(self.items)} items)'


def scene_number(clip_id: str) -> int:
  """The scene number of '{video_id}-Scene-NNN' (ValueError if absent)."""
  if SCENE_MARK not in clip_id:
    raise ValueError(f'clip id {clip_id!r} has no {SCENE_MARK!r}')
  return int(clip_id.split(SCENE_MARK)[-1])


def _describe(exc: Exception) -> str:
  return f'{type(exc).__name__}: {exc}'


def _require(record: Any, key: str, kind: type) -> Any:
  if not isinstance(record, dict):
    raise ValueError(f'expected a JSON object, got {type(record).__name__}')
  if key not in record:
    raise ValueError(f'missing key {key!r}')
  value = record[key]
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if not isinstance(value, kind):
    raise ValueError(f'key {key!r} should be {kind.__name__}, got {type(value).__name__}')
  return value


def _parse_asr_record(record: Any) -> AsrRecord:
  segments = []
  for i, seg in enumerate(_require(record, 'scene_text', list)):
    span = _require(seg, 'span', list)
    if len(span) != 2:
      raise ValueError(f'scene_text[{i}].span should be [start, end], got {span!r}')
    segments.append(AsrSegment(float(span[0]), float(span[1]), _require(seg, 'text', str)))
  return AsrRecord(
      clip_id=_require(record, 'clip_id', str),
      duration=_require(record, 'duration', float),
      lang=str(record.get('lang', '')),
      segments=tuple(segments),
      full_text=str(record.get('full_text', '')))


def read_asr_file(path: str, problems: Problems) -> dict[str, AsrRecord]:
  """Reads `{video_id}_asr.jsonl` into clip_id -> record.

  Lines may come in any order; malformed lines are skipped and recorded as
  'line N: ...'. A repeated clip_id keeps its last line, as the official
  builders' dict does.
  """
  records = {}
  with files.open_text(path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        rec = _parse_asr_record(json.loads(line))
      except (ValueError, TypeError) as e:
        problems.add(path, f'line {n}: {_describe(e)}')
        continue
      if rec.clip_id in records:
        problems.add(path, f'line {n}: clip {rec.clip_id} repeated; the last line is kept')
      records[rec.clip_id] = rec
  return records


@dataclasses.dataclass(frozen=True)
class _ClipText:
  """A clip's caption record, before the clip files are looked up."""
  clip_id: str
  caption: Caption
  voiceover: str


def _parse_clip_record(record: Any) -> _ClipText:
  cap = _require(record, 'caption', dict)
  voiceover = record.get('voiceover', [''])
  if isinstance(voiceover, list):
    voiceover = voiceover[0] if voiceover else ''
  if not isinstance(voiceover, str):
    raise ValueError(f'voiceover should be [str], got {record.get("voiceover")!r}')
  clip_id = _require(record, 'clip_id', str)
  scene_number(clip_id)
  return _ClipText(
      clip_id=clip_id,
      caption=Caption(
          content=_require(cap, 'content', str),
          scene_title=_require(cap, 'scene_title', str),
          shot_type=str(cap.get('shot_type', '')),
          camera_movement=str(cap.get('camera_movement', ''))),
      voiceover=voiceover)


@dataclasses.dataclass(frozen=True)
class _VideoText:
  video_id: str
  title: str
  integrity: bool
  clips: tuple[_ClipText, ...]


def _contiguous(clips: Sequence[_ClipText]) -> bool:
  numbers = [scene_number(c.clip_id) for c in clips]
  return numbers == list(range(1, len(numbers) + 1))


def _read_caption_file(path: str, problems: Problems) -> Optional[_VideoText]:
  """Reads one `{video_id}_caption.json`; None (recorded) if unreadable.

  Clips are sorted by the number after '-Scene-' of their `data` key, as the
  official builders do; a clip record that cannot be parsed is skipped.
  """
  video_id = os.path.basename(path)[:-len(_CAPTION_FILE_SUFFIX)]
  try:
    with files.open_text(path) as f:
      doc = json.load(f)
    data = _require(doc, 'data', dict)
  except (ValueError, TypeError) as e:
    problems.add(path, f'unreadable caption file: {_describe(e)}')
    return None
  meta = doc.get('meta') if isinstance(doc.get('meta'), dict) else {}
  keyed = []
  for key, record in data.items():
    try:
      keyed.append((scene_number(key), _parse_clip_record(record)))
    except (ValueError, TypeError) as e:
      problems.add(path, f'data[{key!r}]: {_describe(e)}')
  clips = tuple(c for _, c in sorted(keyed, key=lambda kc: kc[0]))
  title = meta.get('video_title')
  if not isinstance(title, str):
    title = next((r.get('video_title') for r in data.values()
                  if isinstance(r, dict) and isinstance(r.get('video_title'), str)), '')
  integrity = meta.get('integrity')
  if not isinstance(integrity, bool):
    integrity = _contiguous(clips)
  return _VideoText(video_id, title, integrity, clips)


def _read_caption_jsonl(path: str, problems: Problems) -> list[_VideoText]:
  """Reads `{group}_captions.jsonl` (one clip record per line), grouped by video.

  This file has no per-video meta, so `integrity` means "scenes numbered 1..n
  without gaps" here.
  """
  by_video: dict[str, list[_ClipText]] = {}
  titles: dict[str, str] = {}
  with files.open_text(path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        video_id = _require(record, 'video_id', str)
        clip = _parse_clip_record(record)
      except (ValueError, TypeError) as e:
        problems.add(path, f'line {n}: {_describe(e)}')
        continue
      by_video.setdefault(video_id, []).append(clip)
      titles.setdefault(video_id, str(record.get('video_title', '')))
  videos = []
  for video_id, clips in by_video.items():
    clips = tuple(sorted(clips, key=lambda c: scene_number(c.clip_id)))
    videos.append(_VideoText(video_id, titles[video_id], _contiguous(clips), clips))
  return videos


def discover_groups(root: str) -> list[str]:
  """Group names found under `root` (captions folders/jsonl and *_clips folders).

  Raises:
    FileNotFoundError: `root` has neither `vript_captions/` nor a `*_clips/` folder.
  """
  if not epath.Path(root).is_dir():
    raise FileNotFoundError(f'Vript root {root!r} is not a directory')
  groups = {entry.name[:-len(_CLIPS_SUFFIX)] for entry in epath.Path(root).iterdir()
            if entry.name.endswith(_CLIPS_SUFFIX) and entry.is_dir()}
  captions_dir = epath.Path(root, CAPTIONS_DIR)
  has_captions = captions_dir.is_dir()
  if has_captions:
    for entry in captions_dir.iterdir():
      name = entry.name
      if name.endswith(_CAPTIONS_SUFFIX) and entry.is_dir():
        groups.add(name[:-len(_CAPTIONS_SUFFIX)])
      elif name.endswith(_CAPTIONS_SUFFIX + '.jsonl') and entry.is_file():
        groups.add(name[:-len(_CAPTIONS_SUFFIX + '.jsonl')])
  if not has_captions and not groups:
    raise FileNotFoundError(
        f'{root!r} is not an extracted Vript root: expected a {CAPTIONS_DIR}/ folder '
        f'(with {{group}}{_CAPTIONS_SUFFIX}/ or {{group}}{_CAPTIONS_SUFFIX}.jsonl) '
        f'or {{group}}{_CLIPS_SUFFIX}/ folders')
  return sorted(groups)


def _read_group_captions(root: str, group: str, problems: Problems) -> list[_VideoText]:
  captions_dir = os.path.join(root, CAPTIONS_DIR)
  folder = os.path.join(captions_dir, group + _CAPTIONS_SUFFIX)
  jsonl = folder + '.jsonl'
  names = []
  if epath.Path(folder).is_dir():
    names = sorted(p.name for p in epath.Path(folder).iterdir()
                   if p.name.endswith(_CAPTION_FILE_SUFFIX))
    if not names:
      problems.add(folder, 'no *_caption.json files (empty folder from a broken zip?)')
  if names:
    videos = [_read_caption_file(os.path.join(folder, f), problems) for f in names]
    return [v for v in videos if v is not None]
  if epath.Path(jsonl).is_file():
    return _read_caption_jsonl(jsonl, problems)
  problems.add(os.path.join(root, group + _CLIPS_SUFFIX),
               f'no captions for group {group!r} (neither {folder} nor {jsonl})')
  return []


@dataclasses.dataclass(frozen=True)
class _ClipDir:
  """A video's non-empty clip folder and its files' names."""
  path: str
  names: frozenset[str]


def _video_clip_dirs(root: str, group: str,
                     problems: Problems) -> tuple[dict[str, _ClipDir], set[str]]:
  """(video_id -> its non-empty clip folder, ids of empty folders)."""
  clips_root = epath.Path(root, group + _CLIPS_SUFFIX)
  dirs, empty = {}, set()
  if not clips_root.is_dir():
    return dirs, empty
  for entry in sorted(clips_root.iterdir(), key=lambda p: p.name):
    if not entry.is_dir():
      continue
    full = os.path.join(root, group + _CLIPS_SUFFIX, entry.name)
    names = frozenset(p.name for p in entry.iterdir())
    if names:
      dirs[entry.name] = _ClipDir(full, names)
    else:
      problems.add(full, 'empty folder (broken zip); video skipped')
      empty.add(entry.name)
  return dirs, empty


def _assemble(root: str, group: str, text: _VideoText, clip_dir: Optional[_ClipDir],
              problems: Problems) -> Video:
  asr = {}
  has_asr = False
  if clip_dir is None:
    problems.add(os.path.join(root, group + _CLIPS_SUFFIX, text.video_id),
                 'clip folder missing; clips have no mp4 and no ASR')
  else:
    asr_name = text.video_id + _ASR_FILE_SUFFIX
    has_asr = asr_name in clip_dir.names
    if has_asr:
      asr = read_asr_file(os.path.join(clip_dir.path, asr_name), problems)
  clips = []
  for c in text.clips:
    relpath = f'{group}{_CLIPS_SUFFIX}/{text.video_id}/{c.clip_id}.mp4'
    path = files.absolute(os.path.join(root, relpath))
    if clip_dir is None or f'{c.clip_id}.mp4' not in clip_dir.names:
      if clip_dir is not None:
        problems.add(path, 'clip mp4 missing')
      path = None
    clips.append(Clip(
        video_id=text.video_id, clip_id=c.clip_id, scene=scene_number(c.clip_id),
        caption=c.caption, voiceover=c.voiceover, asr=asr.get(c.clip_id), path=path,
        relpath=relpath))
  return Video(video_id=text.video_id, group=group, title=text.title,
               integrity=text.integrity, clips=tuple(clips), has_asr=has_asr)


def load_dataset(root: str, *, groups: Optional[Sequence[str]] = None,
                 problems: Optional[Problems] = None) -> list[Video]:
  """Loads every captioned video under `root`, sorted by (group, video_id).

  Args:
    root: the folder holding `vript_captions/` and the `{group}_clips/` folders.
    groups: only these groups (default: all discovered ones).
    problems: collects what was skipped or incomplete (a fresh, discarded one
      when None).

  Returns:
    One `Video` per caption record set. Videos whose clip folder is empty (a
    broken zip) are skipped; clip folders without captions are recorded and
    ignored, as the official builders only iterate over caption files.

  Raises:
    FileNotFoundError: `root` is not an extracted Vript root.
    ValueError: a requested group does not exist under `root`.
  """
  problems = Problems() if problems is None else problems
  found = discover_groups(root)
  if groups is not None:
    unknown = sorted(set(groups) - set(found))
    if unknown:
      raise ValueError(f'groups {unknown} not found under {root!r}; found {found}')
    found = [g for g in found if g in set(groups)]
  videos = []
  for group in found:
    clip_dirs, empty = _video_clip_dirs(root, group, problems)
    captioned = set()
    for text in _read_group_captions(root, group, problems):
      if text.video_id in captioned:
        problems.add(os.path.join(root, CAPTIONS_DIR, group + _CAPTIONS_SUFFIX),
                     f'video {text.video_id} captioned twice; the first is kept')
        continue
      captioned.add(text.video_id)
      if text.video_id in empty:
        continue
      videos.append(_assemble(root, group, text, clip_dirs.get(text.video_id), problems))
    for video_id in sorted(set(clip_dirs) - captioned):
      problems.add(clip_dirs[video_id].path, 'clip folder without captions; ignored')
  return sorted(videos, key=lambda v: (v.group, v.video_id))
