"""ArrayRecord shards: opening them with errors that name the file, writing them in turn."""

import contextlib
import os

from array_record.python import array_record_module
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


class ShardWriter:
  """Writes records into FOLDER/PREFIX-00000.array_record, -00001, ... of
  `shard_size` records each. A shard appears whole once finished (written
  staged: locally renamed into place, or uploaded); `discard` drops the one
  being written instead."""

  def __init__(self, folder, prefix, shard_size):
    if shard_size < 1:
      raise ValueError(f'shard_size={shard_size} must be positive')
    self._folder, self._prefix, self._shard_size = folder, prefix, shard_size
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
    name = f'{self._prefix}-{len(self.shards):05d}.array_record'
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
