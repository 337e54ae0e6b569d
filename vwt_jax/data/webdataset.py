"""Tar shards in the webdataset layout, read in place with random access.

A shard is a plain tar whose members are grouped into samples by key, the
member path up to the first dot of its file name:

  000017.jpg   000017.cls            image + class id (text)
  a/b/x.png    a/b/x.json            image + {"label": ...}
  cat.webp     cat.txt  cat.json     image + caption: UTF-8 text, or {"caption": ...}
                                       ({"text": ...}): img2dataset's layout

Read with `--config.data.name=webdataset --config.data.data_dir=DIR
--config.data.train_split='train-{000000..000127}.tar'`: each split is a shard
pattern under `data_dir` (brace ranges `{000..127}` and globs `*`), or a
comma-separated list. Every shard is listed once when opened, headers only
(the tar is never unpacked), which gives each sample its byte ranges: a
sample is then one seek and read, so the pipeline keeps its seeded global
order, per-process shards and exact resume. Local paths and URLs
(`gs://...`) alike. A sample without an image, or whose label is missing or
unreadable, is a corrupt record (skipped, counted, named `shard:key`).

With `--config.data.captions=True` the samples are image-caption pairs
(`{'image', 'caption'}` records, no class): the caption is the `.txt` (its
surrounding whitespace dropped), else the `.json`'s "caption" or "text"
string; a sample without an image or a readable caption is a corrupt record
likewise. Captions, like labels, are read when the shard is listed.
"""

import functools
import glob
import json
import os
import re
import tarfile

from etils import epath
import numpy as np

from vwt_jax.data import transforms

NAME = 'webdataset'
IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp')
# The members holding a sample's label / caption, in order of preference.
LABEL_EXTENSIONS = ('cls', 'json')
CAPTION_EXTENSIONS = ('txt', 'json')
_BRACES = re.compile(r'\{(\d+)\.\.(\d+)\}')


def expand(pattern, root='', what='webdataset shards'):
  """The shard paths of a split: `a-{000..009}.tar`, globs, comma-separated lists.
  `what` names the files in the error of a glob that matches none."""
  paths = []
  for part in (p.strip() for p in pattern.split(',') if p.strip()):
    part = part if not root or '://' in part or os.path.isabs(part) else os.path.join(root, part)
    match = _BRACES.search(part)
    if match:
      first, last = match.groups()
      width = len(first)
      for i in range(int(first), int(last) + 1):
        paths += expand(part[:match.start()] + str(i).zfill(width) + part[match.end():],
                        what=what)
    elif any(c in part for c in '*?['):
      found = (sorted(str(p) for p in epath.Path(os.path.dirname(part)).glob(
          os.path.basename(part))) if '://' in part else sorted(glob.glob(part)))
      if not found:
        raise FileNotFoundError(f'{what} {part!r}: no file matches')
      paths += found
    else:
      paths.append(part)
  return paths


def _key_and_extension(name):
  folder, base = os.path.split(name)
  stem, dot, extension = base.partition('.')
  return (os.path.join(folder, stem), extension.lower()) if dot else (None, None)


def _label(extension, data):
  """The class id of a `.cls` (an int as text) or `.json` ({"label": int})."""
  if extension == 'cls':
    return int(data.decode('utf-8').strip())
  return int(json.loads(data)['label'])


def _caption(extension, data):
  """The caption of a `.txt` (UTF-8) or `.json` ({"caption": str} or {"text": str})."""
  if extension == 'txt':
    return data.decode('utf-8').strip()
  record = json.loads(data)
  for field in ('caption', 'text'):
    if isinstance(record, dict) and isinstance(record.get(field), str):
      return record[field]
  raise KeyError('no "caption" or "text" string')


def _preferred(values, extensions):
  """The first readable (not None) of `values` ({extension: value}) in `extensions` order."""
  return next((values[e] for e in extensions if values.get(e) is not None), None)


def index_shard(path, captions=False):
  """[(key, {extension: (offset, size)}, label or caption or None)] of a shard, in order.

  Labels (with `captions`, captions) are read here, a few bytes each: a
  sample gets the first readable one of `LABEL_EXTENSIONS`
  (`CAPTION_EXTENSIONS`), or None. Raises OSError / tarfile.TarError for a
  shard that cannot be listed.
  """
  extensions, parse = (CAPTION_EXTENSIONS, _caption) if captions else (LABEL_EXTENSIONS, _label)
  samples, order = {}, []
  read = {}  # key -> {extension: its label / caption, or None if unreadable}
  with epath.Path(path).open('rb') as f, tarfile.open(fileobj=f, mode='r:') as tar:
    for member in tar:
      if not member.isfile():
        continue
      key, extension = _key_and_extension(member.name)
      if key is None:
        continue
      if key not in samples:
        samples[key], read[key] = {}, {}
        order.append(key)
      samples[key][extension] = (member.offset_data, member.size)
      if extension in extensions:
        position = f.tell()
        f.seek(member.offset_data)
        try:
          read[key][extension] = parse(extension, f.read(member.size))
        except (ValueError, KeyError, TypeError):
          read[key][extension] = None
        f.seek(position)
  return tuple((key, samples[key], _preferred(read[key], extensions)) for key in order)


class WebDatasetSource:
  """Random access to {'image': encoded bytes, 'label': int} of tar shards, or
  with `captions` to {'image': encoded bytes, 'caption': str}."""

  def __init__(self, shards, captions=False):
    if not shards:
      raise ValueError('webdataset: no shard given')
    self._shards = tuple(shards)
    self.captions = captions
    # (shard index, key, image (offset, size) or None, label / caption or None)
    self._samples = []
    for s, shard in enumerate(self._shards):
      try:
        listed = index_shard(shard, captions)
      except (OSError, tarfile.TarError) as e:
        raise ValueError(f'{shard}: not a readable tar shard ({type(e).__name__}: {e})') from None
      for key, members, annotation in listed:
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        self._samples.append((s, key, image, annotation))
    if not self._samples:
      raise ValueError(f'webdataset: no sample in {len(self._shards)} shard(s) '
                       f'({self._shards[0]}, ...)')

  def __len__(self):
    return len(self._samples)

  def num_classes(self):
    if self.captions:
      return 0
    labels = [label for _, _, _, label in self._samples if label is not None]
    return max(labels) + 1 if labels else 0

  def record_name(self, index):
    s, key, _, _ = self._samples[index]
    return f'{self._shards[s]}:{key}'

  def __getitem__(self, index):
    s, key, image, annotation = self._samples[index]
    if image is None:
      raise transforms.CorruptRecordError(
          f'{self.record_name(index)}: no image (.{", .".join(IMAGE_EXTENSIONS)})')
    if annotation is None:
      expected = ('caption (.txt, or .json with a "caption" or "text" string)' if self.captions
                  else 'label (.cls, or .json with "label")')
      raise transforms.CorruptRecordError(f'{self.record_name(index)}: no readable {expected}')
    offset, size = image
    try:
      with epath.Path(self._shards[s]).open('rb') as f:
        f.seek(offset)
        data = f.read(size)
    except OSError as e:
      raise transforms.CorruptRecordError(f'{self.record_name(index)}: cannot read ({e})') from None
    if len(data) != size:
      raise transforms.CorruptRecordError(f'{self.record_name(index)}: the shard is cut short')
    if self.captions:
      return {'image': data, 'caption': annotation}
    return {'image': data, 'label': np.int32(annotation)}

  def __repr__(self):
    kind = 'captioned samples' if self.captions else 'samples'
    return f'WebDatasetSource({len(self._shards)} shards, {len(self)} {kind})'


@functools.lru_cache(maxsize=16)
def data_source(root, pattern, captions=False):
  return WebDatasetSource(expand(pattern, root), captions)
