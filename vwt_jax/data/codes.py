"""Token-code datasets: tokenizer codes (+ labels, captions) in ArrayRecord.

A code dataset is a directory:

  metadata.json                 `CodeMetadata` as JSON (format, sizes, origin)
  train-00000.array_record      one record per image, `shard_size` per file
  train-00001.array_record
  validation-00000.array_record ...

Each record is a fixed little-endian layout (no pickle), sized by the metadata:

  int32[4]                      label, source record index, views V, caption
                                tokens L (0 without captions)
  dtype[V, *code_shape]         codes of every augmented view (int16 or int32)
  float16[L, caption_dim]       the caption's real text-encoder tokens

Views are the augmentations LlamaGen extracts (see `VIEW_SETS`).
`vwt_jax.tools.extract_codes` writes these datasets from a trained tokenizer.

`create_code_dataset` streams one split as `pipeline.create_image_dataset`
does (per-process slices, exact resume, corrupt records counted). Batches:

  {'codes': int32 (B, seq_len), 'labels': int32 (B,)}
  + 'caption_emb': float32 (B, caption_length, caption_dim) and
    'caption_mask': int32 (B, caption_length) when the dataset has captions,
    left-padded (real tokens at the end, padded embeddings zero), and
  + 'mask': bool (B,) on eval splits (False on padding and corrupt records).

The directory may be a URL (`gs://bucket/codes`); ArrayRecord's writer only
writes local files, so a remote shard is written locally and uploaded whole.
"""

import dataclasses
import json
import math
import os
import re
from typing import Any

from etils import epath
import ml_collections
import numpy as np

from vwt_jax.core import files
from vwt_jax.data import array_records
from vwt_jax.data import pipeline
from vwt_jax.data import transforms

FORMAT_VERSION = 1
METADATA_FILE = 'metadata.json'
TOKENIZER_KINDS = ('titok', 'vqgan')
# View set name -> (number of views, index of the unaugmented centre view).
VIEW_SETS = {'center': (1, 0), 'flip': (2, 0), 'ten_crop': (10, 4)}
DEFAULT_SHARD_SIZE = 10_000

_HEADER = np.dtype('<i4')
_HEADER_SIZE = 4
_CAPTION_DTYPE = np.dtype('<f2')
_SPLIT_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')
# Fields metadata.json must state; the others have defaults.
_REQUIRED_FIELDS = ('format_version', 'tokenizer', 'code_shape', 'vocab_size',
                    'num_classes', 'views', 'num_views', 'dtype', 'splits')
# Fields a dataset and its `extra_dirs` (other crops of the same images) share.
_FORMAT_FIELDS = ('tokenizer', 'code_shape', 'vocab_size', 'num_classes',
                  'caption_dim', 'caption_length')
# Fields every split of one directory shares (one metadata describes them all).
_DIRECTORY_FIELDS = _FORMAT_FIELDS + ('views', 'num_views', 'crop_range', 'image_size',
                                      'dtype', 'format_version')


class CorruptCodeRecordError(ValueError):
  """A record's bytes do not match the layout its metadata describes."""


def make_views(image: np.ndarray, views: str, image_size: int,
               crop_range: float = 1.0) -> np.ndarray:
  """A decoded uint8 (H, W, 3) image -> its views, uint8 (V, S, S, 3).

  'center': ADM `center_crop_arr` to `image_size`; 'flip': that and its
  mirror; 'ten_crop': `center_crop_arr` to int(image_size * crop_range), then
  torchvision TenCrop order (4 corners + centre, then the same of the mirror).
  `crop_range` only affects 'ten_crop'.
  """
  if views == 'ten_crop':
    if crop_range < 1.0:
      raise ValueError(f'crop_range={crop_range} must be >= 1')
    big = transforms.center_crop_arr(image, int(image_size * crop_range))
    crops = transforms.ten_crop(big, image_size)
  elif views in ('center', 'flip'):
    crop = transforms.center_crop_arr(image, image_size)
    crops = (crop, crop[:, ::-1]) if views == 'flip' else (crop,)
  else:
    raise ValueError(f'views={views!r}: expected one of {sorted(VIEW_SETS)}')
  return np.stack(crops)


@dataclasses.dataclass(frozen=True)
class CodeMetadata:
  """What a code dataset holds; `metadata.json` of its directory.

  Attributes:
    tokenizer: 'titok' (1-D codes, code_shape [N]) or 'vqgan' ([h, w] grid).
    code_shape: shape of one view's codes; a generator sees them flattened
      in raster order, `seq_len` long.
    vocab_size: codebook size; every code is in [0, vocab_size).
    num_classes: label classes (0: no class labels, e.g. text-to-image).
    views: 'center', 'flip' or 'ten_crop' (see `VIEW_SETS`).
    num_views: views per record (fixed by `views`).
    crop_range: ten_crop's pre-crop scale (1.0 for the other view sets).
    image_size: tokenizer input resolution.
    dtype: on-disk code dtype, 'int16' or 'int32' (from vocab_size).
    caption_dim, caption_length: text-encoder width and maximum token count
      (0, 0 without captions).
    source: where the codes came from (tokenizer config, checkpoint, data).
    splits: split name -> {'num_records', 'shards': [{'file', 'num_records'}],
      plus free-form provenance such as 'num_corrupt'}.
    format_version: layout version of the records.
  """
  tokenizer: str
  code_shape: tuple[int, ...]
  vocab_size: int
  num_classes: int
  views: str = 'center'
  num_views: int = 0
  crop_range: float = 1.0
  image_size: int = 0
  dtype: str = ''
  caption_dim: int = 0
  caption_length: int = 0
  source: dict[str, Any] = dataclasses.field(default_factory=dict)
  splits: dict[str, Any] = dataclasses.field(default_factory=dict)
  format_version: int = FORMAT_VERSION

  def __post_init__(self):
    # Plain Python ints (numpy ones do not serialise), and derived defaults.
    if isinstance(self.code_shape, (list, tuple)):
      object.__setattr__(self, 'code_shape', tuple(
          int(s) if _is_int(s) else s for s in self.code_shape))
    for field in ('vocab_size', 'num_classes', 'num_views', 'image_size', 'caption_dim',
                  'caption_length'):
      if isinstance(getattr(self, field), np.integer):
        object.__setattr__(self, field, int(getattr(self, field)))
    if not self.num_views and self.views in VIEW_SETS:
      object.__setattr__(self, 'num_views', VIEW_SETS[self.views][0])
    if not self.dtype and _is_int(self.vocab_size):
      object.__setattr__(self, 'dtype', 'int16' if self.vocab_size <= 2**15 else 'int32')
    _validate(self)

  @property
  def seq_len(self) -> int:
    """Tokens per image as the generator sees them (code_shape flattened)."""
    return math.prod(self.code_shape)

  @property
  def center_view(self) -> int:
    """Index of the unaugmented centre crop among the views."""
    return VIEW_SETS[self.views][1]

  @property
  def has_captions(self) -> bool:
    return self.caption_dim > 0

  def num_records(self, split: str) -> int:
    return self.splits[split]['num_records']

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, default=list)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate(m: CodeMetadata) -> None:
  """Raises ValueError naming the first bad field and what was expected."""
  def check(ok, field, expected):
    if not ok:
      raise ValueError(f'field {field!r} is {getattr(m, field)!r}; expected {expected}')

  check(m.format_version == FORMAT_VERSION, 'format_version', FORMAT_VERSION)
  check(m.tokenizer in TOKENIZER_KINDS, 'tokenizer', f'one of {TOKENIZER_KINDS}')
  check(isinstance(m.code_shape, tuple) and m.code_shape
        and all(_is_int(s) and s > 0 for s in m.code_shape),
        'code_shape', 'a non-empty list of positive ints')
  check(_is_int(m.vocab_size) and m.vocab_size > 0, 'vocab_size', 'a positive int')
  check(_is_int(m.num_classes) and m.num_classes >= 0, 'num_classes', 'an int >= 0')
  check(m.views in VIEW_SETS, 'views', f'one of {sorted(VIEW_SETS)}')
  check(m.num_views == VIEW_SETS[m.views][0], 'num_views',
        f'{VIEW_SETS[m.views][0]} for views={m.views!r}')
  check(isinstance(m.crop_range, (int, float)) and m.crop_range >= 1.0,
        'crop_range', 'a number >= 1')
  check(_is_int(m.image_size) and m.image_size >= 0, 'image_size', 'an int >= 0')
  check(m.dtype in ('int16', 'int32') and np.iinfo(m.dtype).max >= m.vocab_size - 1,
        'dtype', f"'int16' or 'int32' holding codes up to {m.vocab_size - 1}")
  check(_is_int(m.caption_dim) and m.caption_dim >= 0, 'caption_dim', 'an int >= 0')
  check(_is_int(m.caption_length) and m.caption_length >= 0
        and (m.caption_length > 0) == (m.caption_dim > 0), 'caption_length',
        'an int >= 0, positive exactly when caption_dim is')
  check(isinstance(m.source, dict), 'source', 'an object')
  check(isinstance(m.splits, dict), 'splits', 'an object')
  for name, split in m.splits.items():
    shards = split.get('shards') if isinstance(split, dict) else None
    ok = (isinstance(shards, list) and _is_int(split.get('num_records'))
          and all(isinstance(s, dict) and isinstance(s.get('file'), str)
                  and _is_int(s.get('num_records')) for s in shards)
          and sum(s['num_records'] for s in shards) == split['num_records'])
    check(ok, 'splits', f"for split {name!r} {{'num_records': int, 'shards': "
          "[{'file': str, 'num_records': int}, ...]} with matching counts")


def metadata_path(path: str) -> str:
  return os.path.join(path, METADATA_FILE)


def read_metadata(path: str) -> CodeMetadata:
  """Reads and validates `path/metadata.json`; errors name the file and field."""
  file = metadata_path(path)
  if not epath.Path(file).exists():
    raise FileNotFoundError(
        f'{file} not found: {path!r} is not a code dataset (write one with '
        'python -m vwt_jax.tools.extract_codes)')
  try:
    with files.open_text(file) as f:
      fields = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{file}: not valid JSON ({e})') from e
  if not isinstance(fields, dict):
    raise ValueError(f'{file}: expected a JSON object, got {type(fields).__name__}')
  known = [f.name for f in dataclasses.fields(CodeMetadata)]
  missing = [name for name in _REQUIRED_FIELDS if name not in fields]
  if missing:
    raise ValueError(f'{file}: missing field(s) {missing}')
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise ValueError(f'{file}: unknown field(s) {unknown}; expected {sorted(known)}')
  try:
    return CodeMetadata(**fields)
  except (ValueError, TypeError) as e:
    raise ValueError(f'{file}: {e}') from e


def _check_compatible(a: CodeMetadata, b: CodeMetadata, where_a: str, where_b: str,
                      fields=_FORMAT_FIELDS):
  for field in fields:
    if getattr(a, field) != getattr(b, field):
      raise ValueError(f'{where_b} does not match {where_a}: {field} '
                       f'{getattr(b, field)!r} vs {getattr(a, field)!r}')


def encode_record(metadata: CodeMetadata, codes, label: int, index: int,
                  caption_emb=None, caption_mask=None) -> bytes:
  """One record's bytes; checks shapes and ranges against `metadata`."""
  codes = np.asarray(codes)
  shape = (metadata.num_views, *metadata.code_shape)
  if codes.shape != shape or not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f'codes: expected integers of shape {shape}, got '
                     f'{codes.dtype} {codes.shape}')
  if codes.size and (codes.min() < 0 or codes.max() >= metadata.vocab_size):
    raise ValueError(f'codes: values must lie in [0, {metadata.vocab_size}), got '
                     f'[{codes.min()}, {codes.max()}]')
  if metadata.num_classes and not 0 <= label < metadata.num_classes:
    raise ValueError(f'label {label} is not in [0, {metadata.num_classes})')
  caption = np.zeros((0, metadata.caption_dim), _CAPTION_DTYPE)
  if metadata.has_captions:
    if caption_emb is None:
      raise ValueError(f'this dataset has captions (caption_dim={metadata.caption_dim}): '
                       'pass caption_emb')
    caption_emb = np.asarray(caption_emb)
    if caption_emb.ndim != 2 or caption_emb.shape[1] != metadata.caption_dim:
      raise ValueError(f'caption_emb: expected (T, {metadata.caption_dim}), got '
                       f'{caption_emb.shape}')
    if caption_mask is not None:
      caption_emb = caption_emb[np.asarray(caption_mask).astype(bool)]
    if len(caption_emb) > metadata.caption_length:
      raise ValueError(f'caption has {len(caption_emb)} real tokens, more than '
                       f'caption_length={metadata.caption_length}')
    caption = caption_emb.astype(_CAPTION_DTYPE)
  elif caption_emb is not None:
    raise ValueError('caption_emb given but the metadata has caption_dim=0')
  header = np.array([label, index, metadata.num_views, len(caption)], _HEADER)
  return (header.tobytes() + codes.astype(np.dtype(metadata.dtype).newbyteorder('<')).tobytes()
          + caption.tobytes())


def decode_record(data: bytes, metadata: CodeMetadata) -> dict[str, Any]:
  """Record bytes -> {'codes' (V, *code_shape), 'label', 'index'}, plus
  'caption_emb' (L, caption_dim) float16 if the dataset has captions.

  Raises:
    CorruptCodeRecordError: the bytes do not fit the metadata's layout, or a
      code or label is out of range.
  """
  header_bytes = _HEADER_SIZE * _HEADER.itemsize
  if len(data) < header_bytes:
    raise CorruptCodeRecordError(f'{len(data)} bytes, shorter than the header')
  label, index, num_views, caption_len = np.frombuffer(data, _HEADER, _HEADER_SIZE)
  dtype = np.dtype(metadata.dtype).newbyteorder('<')
  code_count = metadata.num_views * metadata.seq_len
  expected = (header_bytes + code_count * dtype.itemsize
              + caption_len * metadata.caption_dim * _CAPTION_DTYPE.itemsize)
  if (num_views != metadata.num_views or not 0 <= caption_len <= metadata.caption_length
      or len(data) != expected):
    raise CorruptCodeRecordError(
        f'{len(data)} bytes with header (views {num_views}, caption tokens '
        f'{caption_len}); expected {metadata.num_views} views, <= '
        f'{metadata.caption_length} caption tokens and {expected} bytes')
  codes = np.frombuffer(data, dtype, code_count, header_bytes)
  if codes.min() < 0 or codes.max() >= metadata.vocab_size:
    raise CorruptCodeRecordError(f'codes outside [0, {metadata.vocab_size})')
  if metadata.num_classes and not 0 <= label < metadata.num_classes:
    raise CorruptCodeRecordError(f'label {label} outside [0, {metadata.num_classes})')
  record = {'codes': codes.reshape(metadata.num_views, *metadata.code_shape),
            'label': int(label), 'index': int(index)}
  if metadata.has_captions:
    record['caption_emb'] = np.frombuffer(
        data, _CAPTION_DTYPE, caption_len * metadata.caption_dim,
        header_bytes + code_count * dtype.itemsize).reshape(caption_len, metadata.caption_dim)
  return record


def written_split(path: str, metadata: CodeMetadata, split: str) -> dict[str, Any] | None:
  """The metadata entry of `split` in the dataset `path` (None when it has none).

  Creates `path` if need be, and checks that `metadata` may join the splits
  already there (one metadata describes a directory's splits).
  """
  if not _SPLIT_NAME.match(split):
    raise ValueError(f'split {split!r}: use letters, digits, "_", "-" or "."')
  files.makedirs(path)
  if not epath.Path(metadata_path(path)).exists():
    return None
  existing = read_metadata(path)
  _check_compatible(existing, metadata, metadata_path(path), f'split {split!r}',
                    _DIRECTORY_FIELDS)
  return existing.splits.get(split)


def record_split(path: str, metadata: CodeMetadata, split: str, shards: list[dict],
                 **split_info) -> CodeMetadata:
  """Adds `split` (its shards [{'file', 'num_records'}] and free-form
  `split_info`) to `path/metadata.json`, written whole; returns the metadata."""
  # Re-read: another writer may have added a split meanwhile.
  splits = read_metadata(path).splits if epath.Path(metadata_path(path)).exists() else {}
  splits[split] = {'num_records': sum(s['num_records'] for s in shards), 'shards': shards,
                   **split_info}
  metadata = dataclasses.replace(metadata, splits=splits)
  files.write_text(metadata_path(path), metadata.to_json())
  return metadata


class CodeDatasetWriter:
  """Writes one split of a code dataset; `metadata.json` is updated on close.

    meta = CodeMetadata(tokenizer='titok', code_shape=(32,), vocab_size=4096,
                        num_classes=1000, views='ten_crop', crop_range=1.1)
    with CodeDatasetWriter('/data/codes', meta, split='train') as writer:
      writer.add(codes, label)          # codes: (10, 32) ints

  Other splits may already be in the directory (their format must match).
  The split only appears in the metadata once `close()` succeeds, so a crashed
  run leaves no half split behind (its shard files are overwritten next time).
  """

  def __init__(self, path: str, metadata: CodeMetadata, *, split: str = 'train',
               shard_size: int = DEFAULT_SHARD_SIZE):
    if written_split(path, metadata, split) is not None:
      raise FileExistsError(f'{metadata_path(path)} already has split {split!r}; write '
                            'to a new directory or delete this one')
    self.path = path
    self.metadata = dataclasses.replace(metadata, splits={})
    self.split = split
    self._shards = array_records.ShardWriter(path, split, shard_size)
    self._closed = False

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.close()
    else:
      self._shards.discard((exc_type, exc, tb))

  @property
  def num_records(self) -> int:
    return self._shards.num_records

  def add(self, codes, label: int, *, index: int | None = None, caption_emb=None,
          caption_mask=None) -> None:
    """Appends one image: codes (num_views, *code_shape) and its label.

    Args:
      codes: integer codes of every view.
      label: class label (0 when the dataset has no classes).
      index: the image's record index in the source dataset (default: the
        running count).
      caption_emb: (T, caption_dim) text-encoder features, for captioned sets.
      caption_mask: (T,) 1 on real tokens; only those rows are stored.
    """
    if self._closed:
      raise ValueError('add() after close()')
    index = self.num_records if index is None else index
    self._shards.write(encode_record(self.metadata, codes, int(label), int(index), caption_emb,
                                     caption_mask))

  def close(self, **split_info) -> CodeMetadata:
    """Finishes the shards and records the split (plus `split_info`, e.g. the
    source split and corrupt-image count) in metadata.json. Idempotent."""
    if self._closed:
      return self.metadata
    self._shards.close()
    self._closed = True
    self.metadata = record_split(self.path, self.metadata, self.split, self._shards.shards,
                                 **split_info)
    return self.metadata


class CodeSource:
  """Random access to the decoded records of one split of a code dataset."""

  def __init__(self, path: str, split: str):
    self.path = path
    self.split = split
    self.metadata = read_metadata(path)
    if split not in self.metadata.splits:
      raise ValueError(f'{metadata_path(path)} has no split {split!r}; it has '
                       f'{sorted(self.metadata.splits)}')
    self._source = array_records.ShardReader(
        path, self.metadata.splits[split]['shards'], f'split {split!r} in {path}',
        metadata_path(path))

  def __len__(self) -> int:
    return len(self._source)

  def locate(self, index: int) -> tuple[str, int]:
    """(shard file, record number in it) of record `index`."""
    return self._source.locate(index)

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      data = self._source[index]
    except RuntimeError as e:
      # ArrayRecord's reader: a damaged chunk of the shard.
      raise CorruptCodeRecordError(str(e)) from None
    return decode_record(data, self.metadata)


def default_codes_data_config() -> ml_collections.ConfigDict:
  """Defaults for a generator's `config.data` (fields as in `pipeline`)."""
  config = ml_collections.ConfigDict()
  # The code dataset directory (written by vwt_jax.tools.extract_codes).
  config.dir = ''
  # Same images extracted differently (LlamaGen: crop_range 1.05 next to 1.1);
  # a training record comes from one of them with probability extra_prob.
  config.extra_dirs = ()
  config.extra_prob = 0.5
  return pipeline.add_reader_fields(config)


class _ReadCodes(pipeline.RecordReader):
  """(stream position, record index) -> example, as `pipeline.record_batches` wants."""
  corrupt_errors = (CorruptCodeRecordError,)

  def __init__(self, sources, description, *, extra_prob, train, seed):
    super().__init__(len(sources[0]), description, train=train)
    self._sources = sources
    self._meta = sources[0].metadata
    self._extra_prob = extra_prob
    self._seed = seed

  def _record_name(self, record_index):
    # With extra_dirs the record may come from another copy: its log line names it.
    return self._sources[0].locate(record_index)[0] if len(self._sources) == 1 else ''

  def _padding(self):
    example = {'codes': np.zeros(self._meta.seq_len, np.int32), 'labels': np.int32(0)}
    if self._meta.has_captions:
      example.update(_left_pad(np.zeros((0, self._meta.caption_dim)), self._meta.caption_length))
    return example

  def _example(self, position, record_index):
    source = self._sources[0]
    if self._train:
      rng = transforms.record_rng(self._seed, position)
      if len(self._sources) > 1 and rng.random() < self._extra_prob:
        source = self._sources[1 + rng.integers(len(self._sources) - 1)]
    try:
      record = source[record_index]
    except CorruptCodeRecordError as e:
      file, offset = source.locate(record_index)
      raise CorruptCodeRecordError(f'record {offset} of {file}: {e}') from e
    view = (rng.integers(source.metadata.num_views) if self._train
            else self._meta.center_view)
    example = {'codes': record['codes'][view].reshape(-1).astype(np.int32),
               'labels': np.int32(record['label'])}
    if self._meta.has_captions:
      example.update(_left_pad(record['caption_emb'], self._meta.caption_length))
    return example


def _left_pad(caption, length):
  """Real tokens at the end, zeros before them (LlamaGen's T5 convention)."""
  emb = np.zeros((length, caption.shape[1]), np.float16)
  emb[length - len(caption):] = caption
  mask = (np.arange(length) >= length - len(caption)).astype(np.int32)
  return {'caption_emb': emb, 'caption_mask': mask}


def _finalize(batch):
  # Captions cross worker processes as float16 (half the bytes).
  if 'caption_emb' in batch:
    batch = {**batch, 'caption_emb': batch['caption_emb'].astype(np.float32)}
  return batch


def create_code_dataset(data_config, *, split, global_batch_size, seed, train,
                        process_index=None, process_count=None):
  """Builds the host-local batch pipeline of one split of a code dataset.

  Args:
    data_config: ConfigDict as `default_codes_data_config()`.
    split: code dataset split, e.g. `data_config.train_split`.
    global_batch_size: batch size summed over processes; must divide evenly.
    seed: shuffle, view and extra-dir seed, in [0, 2**32).
    train: True: shuffled, one random view per record (of `dir` or, with
      `extra_prob`, of one of `extra_dirs`), repeated forever, corrupt records
      skipped. False: one pass over the centre views, as evaluation in
      `pipeline.create_image_dataset`.
    process_index, process_count: as in `pipeline.create_image_dataset`.

  Returns:
    A grain IterDataset of the batches described in the module docstring;
    `iter()` of it is a `pipeline.CountingIterator`.
  """
  if not data_config.dir:
    raise ValueError('config.data.dir is empty: set it to a code dataset directory')
  dirs = [data_config.dir] + (list(data_config.extra_dirs) if train else [])
  sources = [CodeSource(d, split) for d in dirs]
  for extra in sources[1:]:
    _check_compatible(sources[0].metadata, extra.metadata,
                      metadata_path(sources[0].path), metadata_path(extra.path))
    if len(extra) != len(sources[0]):
      raise ValueError(
          f'split {split!r} of {extra.path} has {len(extra)} records but {len(sources[0])} '
          f'in {sources[0].path}: extra_dirs must hold the same images')
  description = f'code dataset {data_config.dir} split {split!r}'
  read = _ReadCodes(sources, description, extra_prob=data_config.extra_prob,
                    train=train, seed=seed)
  return pipeline.record_batches(
      data_config, read, len(sources[0]), description=description, finalize=_finalize,
      global_batch_size=global_batch_size, seed=seed, train=train,
      process_index=process_index, process_count=process_count)
