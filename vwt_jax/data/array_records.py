"""ArrayRecord shards: reading a split's shards with errors that name the file,
writing them in turn."""

import bisect
import contextlib
import os

from array_record.python import array_record_module
from etils import epath
import grain

from vwt_jax.core import files


def open_shards(paths, what):
  """One random-access source over `paths`; a file ArrayRecord cannot open
  (empty, cut short, not ArrayRecord) is named, with `what` (e.g. "split
  'train' of DIR") and a remedy."""
  try:
    return grain.sources.ArrayRecordDataSource(list(paths))
  except RuntimeError:
    for path in paths:
      try:
        grain.sources.ArrayRecordDataSource([path])
      except RuntimeError as own:
        raise ValueError(f'{path}: not a readable ArrayRecord shard of {what} ({own}); '
                         'write it again') from None
    raise


def locate(starts, index):
  """(shard, offset in it) of record `index`, given each shard's first index."""
  shard = bisect.bisect_right(starts, index) - 1
  return shard, index - starts[shard]


class ShardReader:
  """Random access to the raw records of the shards a metadata file lists
  (`ShardWriter.shards`: [{'file', 'num_records'}] under `folder`).

  A damaged record raises ArrayRecord's RuntimeError when read; missing files,
  unreadable shards and counts that differ from the list are refused here,
  naming `what` (e.g. "split 'train' in DIR") and `listed_in` (the metadata file).
  """

  def __init__(self, folder, shards, what, listed_in):
    self.files = [os.path.join(folder, s['file']) for s in shards]
    absent = [f for f in self.files if not epath.Path(f).exists()]
    if absent:
      raise FileNotFoundError(f'{listed_in} lists shard files that do not exist: {absent[:5]}')
    self._starts, total = [], 0
    for s in shards:
      self._starts.append(total)
      total += s['num_records']
    self._num_records = total
    self._source = open_shards(self.files, what) if self.files else []
    if len(self._source) != total:
      raise ValueError(f'the shard files of {what} hold {len(self._source)} records but '
                       f'{listed_in} lists {total}: the files were changed after writing')

  def __len__(self):
    return self._num_records

  def __getitem__(self, index):
    return self._source[index]

  def locate(self, index):
    """(shard file, record number in it) of record `index`."""
    shard, offset = locate(self._starts, index)
    return self.files[shard], offset


def shard_name(prefix, number):
  return f'{prefix}-{number:05d}.array_record'


class ShardWriter:
  """Writes records into FOLDER/PREFIX-00000.array_record, -00001, ... of
  `shard_size` records each (numbered from `first`). A shard appears whole
  once finished (written staged: locally renamed into place, or uploaded);
  `discard` drops the one being written instead."""

  def __init__(self, folder, prefix, shard_size, first=0):
    if shard_size < 1:
      raise ValueError(f'shard_size={shard_size} must be positive')
    self._folder, self._prefix, self._shard_size = folder, prefix, shard_size
    self._first = first
    self.shards = []  # [{'file': name, 'num_records': n}]
    self._writer = None
    self._staging = contextlib.ExitStack()

  @property
  def num_records(self):
    return sum(s['num_records'] for s in self.shards)

  def write(self, data):
    if self._writer is None or self.shards[-1]['num_records'] == self._shard_size:
      self._next_shard()
    self._writer.write(data)
    self.shards[-1]['num_records'] += 1

  def _next_shard(self):
    self.close()
    name = shard_name(self._prefix, self._first + len(self.shards))
    local = self._staging.enter_context(files.staged(os.path.join(self._folder, name)))
    # group_size:1 makes every record its own chunk: shuffled random access
    # then reads one record, not a whole group.
    self._writer = array_record_module.ArrayRecordWriter(local, 'group_size:1')
    self.shards.append({'file': name, 'num_records': 0})

  def close(self):
    """Finishes the shard being written (moved or uploaded to its place)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      self._staging.close()

  def discard(self, exc_info):
    """Drops the shard being written, unpublished (`exc_info` of the failure)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      self._staging.__exit__(*exc_info)
