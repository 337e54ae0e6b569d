"""Packed images: any image source rewritten as ArrayRecord shards, without TensorFlow.

  DIR/metadata.json            classes, and per split its shards and counts
  DIR/train-00000.array_record one record per image: the label (int32,
  DIR/train-00001.array_record   little-endian) then the image file's own bytes
  DIR/validation-00000.array_record ...
                               image-caption pairs ("captions": true in
                                 metadata.json, no classes): the caption's
                                 length in bytes (uint32, little-endian),
                                 the caption (UTF-8), then the image's bytes

Written by `python -m vwt_jax.tools.pack_images` from an image folder, tar
shards or image-caption index files (`image_text.py`); read with
`--config.data.name=packed --config.data.data_dir=DIR` (splits by name) as
{'image', 'label'} records, or {'image', 'caption'} ones. Every record is its
own ArrayRecord chunk: random access reads one image, which is what the
shuffled pipeline does. The images keep their encoding; decoding and cropping
happen when training reads them, as for every source. DIR may be a URL
(`gs://...`).
"""

import dataclasses
import json
import os
import struct

from etils import epath

from vwt_jax.core import files
from vwt_jax.data import array_records
from vwt_jax.data import transforms

NAME = 'packed'
FORMAT = 'vwt_jax.packed_images'
METADATA_FILE = 'metadata.json'
DEFAULT_SHARD_SIZE = 10_000
_LABEL = struct.Struct('<i')
_CAPTION_LENGTH = struct.Struct('<I')


def metadata_path(path):
  return os.path.join(path, METADATA_FILE)


def read_metadata(path):
  """{'format', 'classes', 'splits': {split: {'num_records', 'shards': [...], ...}}},
  and 'captions' (true) for image-caption pairs."""
  where = metadata_path(path)
  try:
    metadata = json.loads(epath.Path(where).read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f'{where}: no packed image dataset there '
                            '(python -m vwt_jax.tools.pack_images writes one)') from None
  except ValueError as e:
    raise ValueError(f'{where}: not JSON ({e})') from None
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
    raise ValueError(f'{where}: format is not {FORMAT!r}')
  return metadata


@dataclasses.dataclass
class PackWriter:
  """Writes one split of a packed dataset, shard by shard; `close` records it.

  With `captions` the records are image-caption pairs (and `classes` empty).
  """
  path: str
  split: str
  classes: tuple
  shard_size: int = DEFAULT_SHARD_SIZE
  captions: bool = False

  def __post_init__(self):
    where = epath.Path(metadata_path(self.path))
    if where.exists() and self.split in read_metadata(self.path)['splits']:
      raise ValueError(f'{where} already holds split {self.split!r}: write to another '
                       'folder or another split')
    files.makedirs(self.path)
    self._shards = array_records.ShardWriter(self.path, self.split, self.shard_size)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      self._shards.discard((exc_type, exc, tb))  # The split never enters the metadata.

  @property
  def num_records(self) -> int:
    return self._shards.num_records

  def add(self, record: dict) -> None:
    """Packs a source's record: {'image', 'label'}, or {'image', 'caption'} with `captions`."""
    if self.captions:
      caption = record['caption'].encode('utf-8')
      head = _CAPTION_LENGTH.pack(len(caption)) + caption
    else:
      head = _LABEL.pack(int(record['label']))
    self._shards.write(head + bytes(record['image']))

  def close(self, **split_info) -> dict:
    """Finishes the shards and records the split (with `split_info`) in metadata.json."""
    self._shards.close()
    where = epath.Path(metadata_path(self.path))
    metadata = read_metadata(self.path) if where.exists() else {
        'format': FORMAT, 'classes': list(self.classes), 'captions': self.captions,
        'splits': {}}
    if metadata['classes'] != list(self.classes):
      raise ValueError(f'{where}: its classes differ from those of split {self.split!r} '
                       '(tar shards: give every split the same --num_classes)')
    # Datasets packed before captions existed record none.
    if metadata.get('captions', False) != self.captions:
      kinds = ('labelled images', 'image-caption pairs')
      raise ValueError(f'{where} holds {kinds[not self.captions]}: split {self.split!r} of '
                       f'{kinds[self.captions]} goes to another folder')
    metadata['splits'][self.split] = {'num_records': self.num_records,
                                      'shards': self._shards.shards, **split_info}
    files.write_text(str(where), json.dumps(metadata, indent=2))
    return metadata


class PackedSource:
  """Random access to {'image': encoded bytes, 'label': int} of one packed split,
  or to {'image': encoded bytes, 'caption': str} of a captioned one."""

  def __init__(self, path, split):
    metadata = read_metadata(path)
    if split not in metadata['splits']:
      raise ValueError(f'{metadata_path(path)} has no split {split!r}; it has '
                       f'{sorted(metadata["splits"])}')
    self.classes = tuple(metadata['classes'])
    self.captions = metadata.get('captions', False)
    self._source = array_records.ShardReader(path, metadata['splits'][split]['shards'],
                                             f'split {split!r} in {path}', metadata_path(path))

  def __len__(self):
    return len(self._source)

  def record_name(self, index):
    file, offset = self._source.locate(index)
    return f'{file} record {offset}'

  def __getitem__(self, index):
    data = self._source[index]
    if self.captions:
      return self._captioned(index, data)
    if len(data) <= _LABEL.size:
      raise transforms.CorruptRecordError(f'{self.record_name(index)}: {len(data)} bytes')
    return {'image': data[_LABEL.size:], 'label': _LABEL.unpack_from(data)[0]}

  def _captioned(self, index, data):
    start = _CAPTION_LENGTH.size
    end = start + _CAPTION_LENGTH.unpack_from(data)[0] if len(data) > start else len(data)
    if end >= len(data):
      raise transforms.CorruptRecordError(
          f'{self.record_name(index)}: {len(data)} bytes, too few for its caption and image')
    try:
      caption = data[start:end].decode('utf-8')
    except UnicodeDecodeError as e:
      raise transforms.CorruptRecordError(f'{self.record_name(index)}: caption ({e})') from None
    return {'image': data[end:], 'caption': caption}
