"""Grain input pipelines for the image datasets.

`create_image_dataset` returns a grain `IterDataset` of host-local batches

  {'image': float32 (B_local, S, S, 3) in [-1, 1], 'label': int32 (B_local,)}

plus, on eval splits, 'mask': bool (B_local,) (False on padding and on corrupt
records). Image-caption sources (`captioned`) give label 0: their captions
stay out of image batches (a tokenizer trains on the images alone) and are
read from the records of `open_source`. Order and augmentations depend on
`seed` only (every record's crop/flip comes from `transforms.record_rng(seed,
position)`), and the iterator state (`get_state`/`set_state`, or grain's
checkpoint handlers) restores the exact next batches.

Corrupt images are logged with their record index, then skipped in training or
masked out in evaluation (so every process sees as many eval batches). The
count, in `stats()` and the checkpointed state, may not exceed
`data_config.max_corrupt_records` (else `TooManyCorruptRecordsError`).

`data_config` fields (see `default_data_config`):
  name: 'synthetic_shapes' (prepared under data_dir on first use),
    'imagenet2012' (prepared by the user, see `imagenet.py`), 'image_folder'
    (your own pictures, see `image_folder.py`), 'webdataset' (tar shards,
    see `webdataset.py`), 'image_text' (image-caption index files, see
    `image_text.py`) or 'packed' (any of them packed as ArrayRecord, see
    `packed.py`).
  data_dir: tfds data directory ('' = the tfds default); for image_folder the
    folder holding the split folders, for webdataset the shards' folder, for
    image_text the index files' folder, for packed the packed dataset.
  image_size: output height and width (resize shorter side + crop).
  train_split, eval_split: tfds split names (slices like 'train[:1%]' work);
    for image_folder the split folders' names, for webdataset shard patterns,
    for image_text index files, folders of them or patterns.
  captions: webdataset: image-caption pairs instead of labelled images.
  caption_key: image_text: which caption of LlamaGen's [blip, llava,
    llava_first] lists.
  eval_drop_remainder: drop the last partial eval batch instead of padding it.
  num_workers: grain worker processes per host; 0 = decode in-process.
  num_threads: reader threads per process (grain.ReadOptions.num_threads).
  prefetch: records read ahead per process (ReadOptions.prefetch_buffer_size).
  max_corrupt_records: corrupt records tolerated per host before raising.
  synthetic.*: the synthetic_shapes variant (`prepare_synthetic_shapes` arguments).
With several processes and a shared data_dir, prepare synthetic_shapes once
beforehand: preparation is not guarded against concurrent writers.
"""

import math

from absl import logging
import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vwt_jax.data import array_records
from vwt_jax.data import image_folder
from vwt_jax.data import image_text
from vwt_jax.data import imagenet
from vwt_jax.data import packed
from vwt_jax.data import synthetic_shapes
from vwt_jax.data import transforms
from vwt_jax.data import webdataset

# Per-example count of corrupt records skipped just before it, summed into the
# iterator's statistics; every reader given to `record_batches` sets it.
CORRUPT_KEY = 'num_corrupt'
# Optional per-example str: the names (newline-separated) of those records.
CORRUPT_NAMES_KEY = 'corrupt_names'
_NAMED_CORRUPT_RECORDS = 20


class TooManyCorruptRecordsError(RuntimeError):
  """More corrupt records than `data_config.max_corrupt_records`."""


def add_reader_fields(config):
  """Adds the splits, reader parallelism and corrupt-record limit to `config`."""
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.eval_drop_remainder = False
  config.num_workers = 0
  config.num_threads = 8
  config.prefetch = 128
  config.max_corrupt_records = 100
  return config


def default_data_config():
  """Defaults for `config.data`: a small synthetic_shapes run at 64px."""
  config = ml_collections.ConfigDict()
  config.name = 'synthetic_shapes'
  config.data_dir = ''
  config.image_size = 64
  add_reader_fields(config)
  # webdataset: samples are an image and its caption (.txt or .json), not a class.
  config.captions = False
  # image_text: the caption a LlamaGen [blip, llava, llava_first] list gives.
  config.caption_key = image_text.DEFAULT_CAPTION_KEY
  config.synthetic = ml_collections.ConfigDict(dict(
      resolution=64, num_train=synthetic_shapes.DEFAULT_NUM_TRAIN,
      num_validation=synthetic_shapes.DEFAULT_NUM_VALIDATION,
      seed=synthetic_shapes.DEFAULT_SEED, class_colours=False, upright=False))
  return config


def captioned(data_config):
  """Whether the source of `data_config` gives image-caption pairs: records
  {'image', 'caption'} and no classes."""
  if data_config.name == image_text.NAME:
    return True
  if data_config.name == webdataset.NAME:
    # Configs saved before captions existed lack the field.
    return data_config.get('captions', False)
  if data_config.name == packed.NAME:
    return packed.read_metadata(data_config.data_dir).get('captions', False)
  return False


def num_classes(data_config):
  if captioned(data_config):
    return 0
  if data_config.name == image_folder.NAME:
    return len(image_folder.classes(data_config.data_dir, data_config.train_split))
  if data_config.name == webdataset.NAME:
    return webdataset.data_source(data_config.data_dir, data_config.train_split).num_classes()
  if data_config.name == packed.NAME:
    return len(packed.read_metadata(data_config.data_dir)['classes'])
  return {'synthetic_shapes': synthetic_shapes.NUM_CLASSES,
          imagenet.NAME: imagenet.NUM_CLASSES}[data_config.name]


def open_source(data_config, split):
  """Returns (random-access source of encoded records, description for logs)."""
  data_dir = data_config.data_dir or None
  if data_config.name == 'synthetic_shapes':
    synthetic = data_config.synthetic
    builder = synthetic_shapes.prepare_synthetic_shapes(
        data_dir, resolution=synthetic.resolution,
        num_train=synthetic.num_train, num_validation=synthetic.num_validation,
        # Configs saved before these options existed lack their fields.
        seed=synthetic.seed, class_colours=synthetic.get('class_colours', False),
        upright=synthetic.get('upright', False))
    source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    where = f'synthetic_shapes/{builder.builder_config.name}'
  elif data_config.name == imagenet.NAME:
    source = imagenet.data_source(data_dir, split)
    where = imagenet.NAME
  elif data_config.name == image_folder.NAME:
    source = image_folder.data_source(data_config.data_dir, split, data_config.train_split)
    where = image_folder.NAME
  elif data_config.name == webdataset.NAME:
    source = webdataset.data_source(data_config.data_dir, split, captioned(data_config))
    where = webdataset.NAME
  elif data_config.name == image_text.NAME:
    source = image_text.data_source(data_config.data_dir, split, data_config.caption_key)
    where = image_text.NAME
  elif data_config.name == packed.NAME:
    source = packed.PackedSource(data_config.data_dir, split)
    where = packed.NAME
  else:
    raise ValueError(f'unknown data_config.name {data_config.name!r}; expected '
                     f"'synthetic_shapes', {imagenet.NAME!r}, {image_folder.NAME!r}, "
                     f'{webdataset.NAME!r}, {image_text.NAME!r} or {packed.NAME!r}')
  return NamedRecords(source), f'{where} split {split!r} (data_dir={data_config.data_dir!r})'


class NamedRecords:
  """A random-access source whose records have names (their image file, or the
  ArrayRecord shard holding them) and whose storage errors are corrupt records.

  ArrayRecord's reader raises RuntimeError for a damaged chunk and for a shard
  cut short or empty: here they become `transforms.CorruptRecordError`s naming
  the shard, skipped and counted like undecodable images.
  """

  def __init__(self, source):
    self._source = source
    # Each tfds shard's first record index and file.
    self._starts, self._files = [], []
    info = getattr(source, 'dataset_info', None)
    if info is not None:
      try:
        instructions = info.splits[source.split].file_instructions
      except KeyError:
        instructions = []  # a dataset info that lists no splits
      first = 0
      for instruction in instructions:
        self._starts.append(first)
        self._files.append(instruction.filename)
        first += instruction.take

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    try:
      return self._source[index]
    except RuntimeError as e:
      raise transforms.CorruptRecordError(
          f'{self.record_name(index) or "its shard"}: {e}') from None

  def record_name(self, index):
    """The file of record `index` ('' if unknown)."""
    if hasattr(self._source, 'record_name'):
      return self._source.record_name(index)
    if not self._files:
      return ''
    return self._files[array_records.locate(self._starts, index)[0]]


class CorruptRecord:
  """What a reader returns for a training record that failed to decode."""

  def __init__(self, name=''):
    self.name = name  # e.g. its file, listed by TooManyCorruptRecordsError


class RecordReader:
  """Base of the `read(position, record_index)` functions `record_batches` takes.

  Subclasses implement `_example(position, record_index)`, raising one of
  `corrupt_errors` for a record that fails to decode, and `_padding()`, the
  fields of a masked example. Reading inside the map (rather than
  `MapDataset.source`) keeps the record index at hand for the corrupt-record log line;
  a subclass reading a `NamedRecords` held as `self._source` names the record's file there.
  """
  corrupt_errors = (transforms.CorruptRecordError,)
  # What the warning says happens to a corrupt eval record.
  eval_corrupt_action = 'masked out'

  def __init__(self, num_records, description, *, train):
    self._num_records = num_records
    self._description = description
    self._train = train

  def _masked(self, num_corrupt):
    return {**self._padding(), 'mask': np.False_, CORRUPT_KEY: np.int32(num_corrupt)}

  def _source_index(self, record_index):
    """The index of record `record_index` in the source (a reader of a subset maps it)."""
    return record_index

  def _record_name(self, record_index):
    """What names record `record_index` in the error a run stops with ('' if nothing):
    the file of a `NamedRecords` source."""
    source = getattr(self, '_source', None)
    return (source.record_name(self._source_index(record_index))
            if hasattr(source, 'record_name') else '')

  def __call__(self, position, record_index):
    if record_index >= self._num_records:
      return self._masked(0)
    try:
      example = self._example(position, record_index)
    except self.corrupt_errors as e:
      name = self._record_name(record_index)
      logging.warning('Corrupt record %d%s of %s, %s: %s', self._source_index(record_index),
                      f' ({name})' if name else '', self._description,
                      'skipped' if self._train else self.eval_corrupt_action, e)
      return (CorruptRecord(self._record_name(record_index)) if self._train
              else self._masked(1))
    if not self._train:
      example['mask'] = np.True_
    example[CORRUPT_KEY] = np.int32(0)
    return example


class _ReadRecord(RecordReader):
  """(position in the stream, record index) -> preprocessed image example."""

  def __init__(self, source, description, *, image_size, train, seed):
    super().__init__(len(source), description, train=train)
    self._source = source
    self._image_size = image_size
    self._seed = seed

  def _padding(self):
    size = self._image_size
    return {'image': np.zeros((size, size, 3), np.uint8), 'label': np.int32(0)}

  def _example(self, position, record_index):
    record = self._source[record_index]
    rng = transforms.record_rng(self._seed, position) if self._train else None
    image = transforms.preprocess_image(
        record['image'], image_size=self._image_size, train=self._train, rng=rng)
    # Image-caption records have no class.
    return {'image': image, 'label': np.int32(record.get('label', 0))}


class _CorruptCountingIterator(grain.DatasetIterator):
  """Base of the iterators that count corrupt records in their saved state."""
  _STATE_KEY = 'num_corrupt'

  def __init__(self, parent, limit, description):
    super().__init__(parent)
    self._limit = limit
    self._description = description
    self._num_corrupt = 0
    self._names = []

  def _count(self, count, names):
    self._num_corrupt += count
    self._names = (self._names + [n for n in names if n])[-_NAMED_CORRUPT_RECORDS:]
    if self._num_corrupt > self._limit:
      listed = f'; the last ones: {", ".join(self._names)}' if self._names else ''
      raise TooManyCorruptRecordsError(
          f'{self._num_corrupt} corrupt records in {self._description} exceed '
          f'data_config.max_corrupt_records={self._limit}{listed}')

  def get_state(self):
    return {'parent': self._parent.get_state(), self._STATE_KEY: self._num_corrupt,
            'corrupt_names': list(self._names)}

  def set_state(self, state):
    self._parent.set_state(state['parent'])
    self._num_corrupt = state[self._STATE_KEY]
    # Checkpoints written before names were kept lack the field.
    self._names = list(state.get('corrupt_names', []))


class _SkipCorruptIterator(_CorruptCountingIterator):
  """Drops `CorruptRecord`s, charging them to the next good example."""

  def __next__(self):
    skipped = []
    element = next(self._parent)
    while isinstance(element, CorruptRecord):
      skipped.append(element.name)
      # Checked here too so an all-corrupt source fails instead of spinning.
      self._count(1, [element.name])
      element = next(self._parent)
    return {**element, CORRUPT_KEY: np.int32(len(skipped)),
            CORRUPT_NAMES_KEY: '\n'.join(n for n in skipped if n)}


class CountingIterator(_CorruptCountingIterator):
  """Batch iterator that also tracks the corrupt records met so far."""
  _STATE_KEY = 'num_corrupt_records'

  def __next__(self):
    batch = dict(next(self._parent))
    names = batch.pop(CORRUPT_NAMES_KEY, ())
    self._count(int(batch.pop(CORRUPT_KEY).sum()),
                [n for joined in names for n in str(joined).split('\n')])
    return batch

  def stats(self):
    """Counters for the trainer's logs: {'num_corrupt_records': int}."""
    return {'num_corrupt_records': self._num_corrupt}


class _CountingIterDataset(grain.IterDataset):
  """An IterDataset whose iterator is `iterator_cls(parent, limit, description)`."""

  def __init__(self, parent, limit, description, iterator_cls):
    super().__init__(parent)
    self._args = (limit, description)
    self._iterator_cls = iterator_cls

  def __iter__(self):
    return self._iterator_cls(self._parent.__iter__(), *self._args)


def batch_to_float(batch):
  """uint8 batch['image'] -> float32 in [-1, 1] (after batching: 4x fewer bytes
  cross worker processes)."""
  return {**batch, 'image': transforms.to_float(batch['image'])}


def create_image_dataset(data_config, *, split, global_batch_size, seed, train,
                         process_index=None, process_count=None):
  """Builds the host-local batch pipeline for one split.

  Args:
    data_config: ConfigDict with the fields listed in the module docstring.
    split: tfds split name, e.g. `data_config.train_split`.
    global_batch_size: batch size summed over processes; must divide evenly.
    seed: shuffle and augmentation seed, in [0, 2**32).
    train: True: shuffled, augmented, repeated forever, corrupt records
      skipped. False: one pass in record order, center crops, padded with
      masked examples to whole batches (unless `eval_drop_remainder`).
    process_index: this host's index; defaults to `jax.process_index()`.
    process_count: number of hosts; defaults to `jax.process_count()`.

  Returns:
    A grain IterDataset; `iter()` of it is a `CountingIterator` (with `stats()`).
  """
  source, description = open_source(data_config, split)
  read = _ReadRecord(source, description, image_size=data_config.image_size,
                     train=train, seed=seed)
  return record_batches(
      data_config, read, len(source), description=description, finalize=batch_to_float,
      global_batch_size=global_batch_size, seed=seed, train=train,
      process_index=process_index, process_count=process_count)


def record_batches(data_config, read, num_records, *, description, finalize,
                   global_batch_size, seed, train, process_index=None, process_count=None):
  """The record stream, per-process slicing, batching and corrupt counting.

  Args:
    data_config: ConfigDict with `num_threads`, `prefetch`, `num_workers`,
      `max_corrupt_records` and `eval_drop_remainder`.
    read: `read(position, record_index)` -> example dict carrying
      `CORRUPT_KEY` (and optionally `CORRUPT_NAMES_KEY`), as `RecordReader`
      does: in training a `CorruptRecord` for a record that fails to decode,
      in evaluation a masked padding example for it and for every
      `record_index >= num_records`. `position` is the global stream position.
    num_records: records in the source.
    description: names the source in logs and errors.
    finalize: function applied to every host-local batch.
    global_batch_size, seed, train, process_index, process_count: as in
      `create_image_dataset`.

  Returns:
    A grain IterDataset whose iterator is a `CountingIterator`.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible '
                     f'by process_count={process_count}')
  local_batch_size = global_batch_size // process_count

  if train:
    ds = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()
  else:
    # A whole number of global batches.
    batches = (num_records // global_batch_size if data_config.eval_drop_remainder
               else math.ceil(num_records / global_batch_size))
    ds = grain.MapDataset.range(batches * global_batch_size)
  # Mapping before slicing gives `read` the global stream position, so the
  # augmentation of a record does not depend on the process count.
  ds = ds.map_with_index(read)[process_index::process_count]
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data_config.num_threads, prefetch_buffer_size=data_config.prefetch))
  limit = data_config.max_corrupt_records
  if train:
    ds = _CountingIterDataset(ds, limit, description, _SkipCorruptIterator)
  ds = ds.batch(local_batch_size, drop_remainder=True).map(finalize)
  if data_config.num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return _CountingIterDataset(ds, limit, description, CountingIterator)
