"""Opening ArrayRecord shards with errors that name the file."""

import grain


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
