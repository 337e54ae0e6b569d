"""The cached Vript index and grain random-access sources over it.

`load_videos(root)` parses the release once with `schema.load_dataset` and
keeps the result as JSON in `{root}/.vwt_cache/` (or `cache_dir` when the
root is read-only), with a `fingerprint` of the tree: any change (a new or
removed clip, an edited caption or ASR file) rebuilds it. A root on an object
store (`gs://bucket/vript`) is not fingerprinted (walking the release would
cost thousands of requests at every start, and a bucket's dataset is written
once): its index is used until the cache file is deleted.

Two sources read records by index (`__getitem__`, with a per-index Generator),
or with a caller's Generator (`read`, so that the pipeline's augmentations
depend on the stream position):

- `SampleSource`: Vriptor training samples (`formats.Sample`), their frames
  sampled over the window's clips as ST-LLM does (`frames.read_window`).
- `KeyframeSource`: one frame per captioned clip with its caption, for
  text-conditional image generation.

Both raise `frames.CorruptClipError` for a missing or undecodable clip.
"""

import dataclasses
import hashlib
import json
import os

from absl import logging
import numpy as np

from vwt_jax.core import files
from vwt_jax.data import transforms
from vwt_jax.data.vript import frames
from vwt_jax.data.vript import schema

CACHE_DIRNAME = '.vwt_cache'
# Bumped whenever the cached layout of `schema.Video` changes.
INDEX_VERSION = 1
_ANNOTATION_SUFFIXES = ('.json', '.jsonl')
_LOGGED_PROBLEMS = 10


def fingerprint(root, exclude=()):
  """Hash of the folder/file names under `root` and of the sizes and mtimes
  of its annotation files (`.json`, `.jsonl`).

  Clip files count by name only: their presence decides `Clip.path`, and
  statting every mp4 would cost more than it could catch.

  Args:
    root: extracted Vript root.
    exclude: absolute folder paths left out (the cache folders), besides
      every folder named `CACHE_DIRNAME`.
  """
  digest = hashlib.sha256()
  exclude = {os.path.abspath(e) for e in exclude}
  # Symlinked folders are followed, as `schema.load_dataset` reads through
  # them.
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames
                         if d != CACHE_DIRNAME and os.path.join(dirpath, d) not in exclude)
    rel = os.path.relpath(dirpath, root)
    digest.update(f'd {rel}\n'.encode())
    for name in sorted(filenames):
      entry = f'f {rel}/{name}'
      if name.endswith(_ANNOTATION_SUFFIXES):
        stat = os.stat(os.path.join(dirpath, name))
        entry += f' {stat.st_size} {stat.st_mtime_ns}'
      digest.update(f'{entry}\n'.encode())
  return digest.hexdigest()


def _video_from_json(record):
  clips = []
  for c in record['clips']:
    asr = c['asr']
    if asr is not None:
      asr = schema.AsrRecord(
          **{**asr, 'segments': tuple(schema.AsrSegment(**s) for s in asr['segments'])})
    clips.append(schema.Clip(**{**c, 'caption': schema.Caption(**c['caption']), 'asr': asr}))
  return schema.Video(**{**record, 'clips': tuple(clips)})


def _cache_name(root, groups):
  key = json.dumps({'root': root, 'groups': groups})
  return f'vript_index_{hashlib.sha256(key.encode()).hexdigest()[:16]}.json'


def _read_cache(path, root, groups, fprint):
  """The cached (videos, problems), or None if absent, stale or unreadable."""
  try:
    with files.open_text(path) as f:
      cached = json.load(f)
  except (FileNotFoundError, NotADirectoryError):
    return None
  except (OSError, ValueError) as e:
    logging.warning('Ignoring unreadable Vript index cache %s: %s', path, e)
    return None
  expected = {'version': INDEX_VERSION, 'root': root, 'groups': groups, 'fingerprint': fprint}
  if any(cached.get(k) != v for k, v in expected.items()):
    return None
  videos = [_video_from_json(v) for v in cached['videos']]
  return videos, [tuple(p) for p in cached['problems']]


def _write_cache(directory, name, payload):
  """Writes atomically (several hosts may build at once); False if the
  folder is not writable."""
  try:
    files.makedirs(directory)
    with files.write_file(os.path.join(directory, name)) as f:
      json.dump(payload, f)
  except OSError as e:
    logging.warning('Cannot write the Vript index cache in %s: %s', directory, e)
    return False
  return True


def _log_problems(problems, root, how):
  if not problems:
    return
  examples = '\n'.join(f'  {path}: {reason}' for path, reason in problems[:_LOGGED_PROBLEMS])
  logging.warning('Vript index of %s (%s): %d inputs skipped or incomplete, e.g.:\n%s', root,
                  how, len(problems), examples)


def load_videos(root, *, cache_dir='', groups=None):
  """`schema.load_dataset(root, groups=groups)`, cached as JSON.

  Args:
    root: extracted Vript root.
    cache_dir: where the index goes when `{root}/.vwt_cache` is not
      writable ('' = nowhere: the index is then rebuilt on every call).
    groups: only these groups (None = all).

  Returns:
    list of `schema.Video`, as `schema.load_dataset` returns it.
  """
  root = files.absolute(root)
  groups = sorted(groups) if groups is not None else None
  name = _cache_name(root, groups)
  candidates = [os.path.join(root, CACHE_DIRNAME)]
  if cache_dir:
    candidates.append(files.absolute(cache_dir))
  fprint = None if files.is_remote(root) else fingerprint(root, exclude=candidates)
  for directory in candidates:
    cached = _read_cache(os.path.join(directory, name), root, groups, fprint)
    if cached is not None:
      videos, problems = cached
      logging.info('Vript index of %s read from %s (%d videos)', root, directory, len(videos))
      _log_problems(problems, root, 'cached')
      return videos
  problems = schema.Problems()
  videos = schema.load_dataset(root, groups=groups, problems=problems)
  _log_problems(problems.items, root, 'built')
  payload = {'version': INDEX_VERSION, 'root': root, 'groups': groups,
             'fingerprint': fprint, 'problems': problems.items,
             'videos': [dataclasses.asdict(v) for v in videos]}
  for directory in candidates:
    if _write_cache(directory, name, payload):
      logging.info('Vript index of %s (%d videos) cached in %s', root, len(videos), directory)
      break
  else:
    logging.warning('Vript index of %s not cached: %s not writable; set cache_dir', root,
                    ' nor '.join(candidates))
  return videos


def _require_path(path, relpath):
  if path is None:
    raise frames.CorruptClipError(relpath, 'clip mp4 missing')
  return path


class SampleSource:
  """Vriptor training samples with their frames.

  A record is
    'frames': float32 (num_frames, S, S, 3), CLIP-normalised (uint8 RGB when
      `normalize=False`);
    'num_frames': int32, distinct frames decoded (< num_frames when a clip
      has fewer frames than its share and the last one is repeated);
    'prompt', 'target', 'model_input', 'model_target', 'format': str;
    'clip_ids': str, the clip ids joined by ','.
  """

  def __init__(self, samples, *, num_frames, image_size, sample='rand',
               train=True, seed=0, normalize=True):
    """Wraps `samples`.

    Args:
      samples: sequence of `formats.Sample`.
      num_frames: frames per sample, split over its clips.
      image_size: output height and width.
      sample: frame index rule, 'rand' or 'middle'.
      train: random resized crop (else resize + center crop).
      seed: seeds the per-index Generator of `__getitem__`.
      normalize: CLIP-normalised float32 frames, or uint8.
    """
    if sample not in frames.SAMPLE_RULES:
      raise ValueError(f'sample={sample!r} is not one of {frames.SAMPLE_RULES}')
    self._samples = list(samples)
    self._num_frames = num_frames
    self._image_size = image_size
    self._sample = sample
    self._train = train
    self._seed = seed
    self._normalize = normalize

  def __len__(self):
    return len(self._samples)

  def __getitem__(self, index):
    return self.read(index, transforms.record_rng(self._seed, index))

  def __repr__(self):
    return (f'SampleSource({len(self)} samples, num_frames='
            f'{self._num_frames}, image_size={self._image_size})')

  def read(self, index, rng):
    """Record `index`, its random choices drawn from `rng`.

    Raises:
      frames.CorruptClipError: a clip of the sample is missing or broken.
    """
    s = self._samples[index]
    paths = [_require_path(p, r) for p, r in zip(s.paths, s.video)]
    clips, indices = frames.read_window(paths, self._num_frames, self._sample, rng)
    video = frames.transform_clips(clips, image_size=self._image_size, train=self._train, rng=rng)
    if self._normalize:
      video = frames.normalize(video)
    return {'frames': video, 'num_frames': np.int32(sum(len(set(i)) for i in indices)),
            'prompt': s.prompt, 'target': s.target, 'model_input': s.model_input,
            'model_target': s.model_target, 'clip_ids': ','.join(s.clip_ids), 'format': s.format}


@dataclasses.dataclass(frozen=True)
class _Keyframe:
  path: str
  clip_id: str
  caption: str
  scene_title: str


class KeyframeSource:
  """One frame per captioned clip, with its caption.

  A record is {'image': uint8 (S, S, 3) (shorter side resized to S, bicubic,
  center crop), 'caption': the caption content, 'scene_title', 'clip_id'}.
  Clips without an mp4 or with an empty caption are left out.
  """

  def __init__(self, videos, *, image_size, keyframe='middle', seed=0):
    """Lists the usable clips of `videos`.

    Args:
      videos: sequence of `schema.Video`.
      image_size: output height and width.
      keyframe: 'middle' (the ST-LLM middle rule for one frame: frame
        (vlen - 1) // 2) or 'rand' (its random rule for one frame: uniform
        over all frames but the last).
      seed: seeds the per-index Generator of `__getitem__`.
    """
    if keyframe not in frames.SAMPLE_RULES:
      raise ValueError(f'keyframe={keyframe!r} is not one of {frames.SAMPLE_RULES}')
    self._clips = [
        _Keyframe(c.path, c.clip_id, c.caption.content, c.caption.scene_title)
        for v in videos for c in v.clips
        if c.path is not None and c.caption.content.strip()]
    self._image_size = image_size
    self._keyframe = keyframe
    self._seed = seed

  def __len__(self):
    return len(self._clips)

  def __getitem__(self, index):
    return self.read(index, transforms.record_rng(self._seed, index))

  def __repr__(self):
    return (f'KeyframeSource({len(self)} clips, keyframe={self._keyframe!r}, '
            f'image_size={self._image_size})')

  def read(self, index, rng):
    """Record `index`; a 'rand' keyframe is drawn from `rng`.

    Raises:
      frames.CorruptClipError: the clip cannot be decoded.
    """
    clip = self._clips[index]
    image, _ = frames.read_clip(clip.path, 1, self._keyframe, rng)
    image = frames.transform_clips([image], image_size=self._image_size, train=False)[0]
    return {'image': image, 'caption': clip.caption, 'scene_title': clip.scene_title,
            'clip_id': clip.clip_id}
