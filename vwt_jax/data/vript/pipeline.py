"""Host-local grain pipelines over Vript.

`create_vript_dataset` returns a grain `IterDataset` of host-local batches in
one of two views (`data_config.view`; batch keys in docs/vript.md):
'formats' (Vriptor training, `clip_source.SampleSource`, frames normalised
once batched) and 'keyframes' (text-conditional image generation,
`clip_source.KeyframeSource`), plus, when not training, 'mask': bool (B,).
The stream is the image pipeline's (`vwt_jax.data.pipeline.record_batches`):
seeded global shuffle, a slice per process, per-record randomness from
`transforms.record_rng(seed, position)` and a checkpointable iterator.

Vript has no held-out split: evaluation is one pass over the same samples in
record order, with center crops and `eval_sample` frame indices, padded with
masked examples to whole batches. Missing or undecodable clips are logged,
skipped in training (masked out in evaluation) and counted; past
`data_config.max_corrupt_records` the iterator raises
`pipeline.TooManyCorruptRecordsError` listing the last files.

`data_config` fields (see `default_vript_data_config`):
  root: extracted Vript root (see `schema`), a local folder or a URL.
  cache_dir: where the clip index is cached when `{root}/.vwt_cache` is not
    writable ('' = not cached then).
  groups: groups to read, e.g. ('vript_short_videos',); empty = all.
  view: 'formats' or 'keyframes'.
  formats: the Vriptor formats kept (subset of `formats.FORMATS`).
  stage: 'stage1' or 'stage2'.
  seed: seeds `formats.build_samples`, so the sample list is fixed for a run
    whatever the pipeline seed.
  official_filters: the stage-2 drops of the official builders.
  num_frames: frames per sample, split over the clips of a window.
  image_size: output height and width.
  sample / eval_sample: training / evaluation frame index rule.
  keyframe: 'middle' or 'rand' (keyframes view).
  plus the reader fields of `pipeline.add_reader_fields`.
"""

from absl import logging
import jax
import ml_collections
import numpy as np

from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import formats
from vwt_jax.data.vript import frames

VIEWS = ('formats', 'keyframes')
_SINGLE_FORMATS = ('single_scene', 'single_scene_voiceover')
_TEXT_KEYS = {
    'formats': ('prompt', 'target', 'model_input', 'model_target', 'clip_ids', 'format'),
    'keyframes': ('caption', 'scene_title', 'clip_id'),
}


def default_vript_data_config():
  """Defaults for `config.data`: stage-1 Vriptor samples of all four formats."""
  config = ml_collections.ConfigDict()
  config.root = ''
  config.cache_dir = ''
  config.groups = ()
  config.view = 'formats'
  config.formats = formats.FORMATS
  config.stage = 'stage1'
  config.seed = 0
  config.official_filters = True
  config.num_frames = 64
  config.image_size = 224
  config.sample = 'rand'
  config.eval_sample = 'middle'
  config.keyframe = 'middle'
  pipeline.add_reader_fields(config)
  # A 64-frame 224px sample is 9.6 MB of uint8: read ahead far less than the
  # image default.
  config.prefetch = 16
  return config


def build_samples(data_config, videos):
  """The `formats.Sample`s of `data_config.formats` at `data_config.stage`."""
  unknown = sorted(set(data_config.formats) - set(formats.FORMATS))
  if unknown or not data_config.formats:
    raise ValueError(f'data_config.formats={tuple(data_config.formats)} should '
                     f'be a non-empty subset of {formats.FORMATS}')
  kinds = sorted({'single' if f in _SINGLE_FORMATS else 'concat' for f in data_config.formats},
                 key=formats.KINDS.index)
  samples = formats.build_samples(videos, stage=data_config.stage, seed=data_config.seed,
                                  kinds=kinds, official_filters=data_config.official_filters)
  return [s for s in samples if s.format in data_config.formats]


def open_vript_source(data_config, *, train):
  """Returns (random-access source of the configured view, description)."""
  if not data_config.root:
    raise ValueError('data_config.root is empty; set it to the extracted Vript root')
  videos = clip_source.load_videos(data_config.root, cache_dir=data_config.cache_dir,
                                   groups=tuple(data_config.groups) or None)
  if data_config.view == 'formats':
    source = clip_source.SampleSource(
        build_samples(data_config, videos), num_frames=data_config.num_frames,
        image_size=data_config.image_size,
        sample=data_config.sample if train else data_config.eval_sample, train=train,
        normalize=False)
    what = f'{data_config.stage} samples of {",".join(data_config.formats)}'
  elif data_config.view == 'keyframes':
    source = clip_source.KeyframeSource(videos, image_size=data_config.image_size,
                                        keyframe=data_config.keyframe)
    what = 'keyframes'
  else:
    raise ValueError(f'data_config.view={data_config.view!r} is not one of {VIEWS}')
  if not len(source):
    raise ValueError(f'no {what} under {data_config.root!r}')
  return source, f'Vript {what} under {data_config.root!r}'


class _ReadVript:
  """(position in the stream, record index) -> example, as the image
  pipeline's `_ReadRecord`: corrupt clips become `CorruptRecord`s (train) or
  masked padding (eval)."""

  def __init__(self, source, description, *, view, num_frames, image_size, train, seed):
    self._source = source
    self._num_records = len(source)
    self._description = description
    self._view = view
    self._num_frames = num_frames
    self._image_size = image_size
    self._train = train
    self._seed = seed

  def _padding(self, corrupt_name):
    size = self._image_size
    if self._view == 'formats':
      example = {'frames': np.zeros((self._num_frames, size, size, 3), np.uint8),
                 'num_frames': np.int32(0)}
    else:
      example = {'image': np.zeros((size, size, 3), np.uint8)}
    example.update(dict.fromkeys(_TEXT_KEYS[self._view], ''))
    example['mask'] = np.False_
    example[pipeline.CORRUPT_KEY] = np.int32(bool(corrupt_name))
    example[pipeline.CORRUPT_NAMES_KEY] = corrupt_name
    return example

  def __call__(self, position, record_index):
    if record_index >= self._num_records:
      return self._padding('')
    rng = transforms.record_rng(self._seed, position)
    try:
      example = self._source.read(record_index, rng)
    except frames.CorruptClipError as e:
      logging.warning('Corrupt clip in record %d of %s, %s: %s', record_index, self._description,
                      'skipped' if self._train else 'masked out', e)
      if self._train:
        return pipeline.CorruptRecord(e.path)
      return self._padding(e.path)
    if not self._train:
      example['mask'] = np.True_
    example[pipeline.CORRUPT_KEY] = np.int32(0)
    example[pipeline.CORRUPT_NAMES_KEY] = ''
    return example


def _normalize_frames(batch):
  """uint8 frames -> CLIP-normalised float32, after batching."""
  return {**batch, 'frames': frames.normalize(batch['frames'])}


def _unchanged(batch):
  return batch


def create_vript_dataset(data_config, *, train, seed, batch_size_per_host,
                         process_index=None, process_count=None):
  """Builds this host's batch pipeline over Vript.

  Args:
    data_config: ConfigDict with the fields listed in the module docstring.
    train: True: shuffled, augmented, repeated forever, corrupt clips
      skipped. False: one pass in record order, padded to whole batches
      (unless `eval_drop_remainder`), corrupt clips masked out.
    seed: shuffle and augmentation seed, in [0, 2**32).
    batch_size_per_host: examples per host-local batch.
    process_index: this host's index; defaults to `jax.process_index()`.
    process_count: number of hosts; defaults to `jax.process_count()`.

  Returns:
    A grain IterDataset whose iterator is a `pipeline.CountingIterator`
    (`stats()` gives {'num_corrupt_records': int}).
  """
  if process_count is None:
    process_count = jax.process_count()
  source, description = open_vript_source(data_config, train=train)
  read = _ReadVript(source, description, view=data_config.view,
                    num_frames=data_config.num_frames, image_size=data_config.image_size,
                    train=train, seed=seed)
  finalize = _normalize_frames if data_config.view == 'formats' else _unchanged
  return pipeline.record_batches(
      data_config, read, len(source), description=description, finalize=finalize,
      global_batch_size=batch_size_per_host * process_count, seed=seed, train=train,
      process_index=process_index, process_count=process_count)
