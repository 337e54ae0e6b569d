"""Image-caption pairs listed in index files: LlamaGen's text-to-image layout.

  ROOT/train/000000.jsonl      one JSON object per line, LlamaGen's layout:
  ROOT/train/000001.jsonl        {"image_path": "images/0001.jpg",
  ROOT/train/images/...           "text": [blip, llava, llava_first]}
                                 or a plain caption: {"image": ..., "caption": "..."}
  ROOT/validation.jsonl        an index file on its own
  ROOT/laion/part-0.parquet    Parquet: a column of image paths, one of captions

Read with `--config.data.name=image_text --config.data.data_dir=ROOT`: each
split (`data.train_split`, `data.eval_split`) names index files under ROOT, as
webdataset splits name shards: a folder (its `*.jsonl` and `*.parquet` files
in name order, as LlamaGen's `Text2ImgDataset` and
`language/extract_t5_feature.py` read theirs), a file, a glob or brace
pattern, or a comma-separated list. The image path is the first field (column)
present of `image_path`, `image`, `file`, `path`; the caption the first of
`text`, `caption`, `prompt`, `TEXT` (LAION's). A list of captions is LlamaGen's
[blip, llava, llava_first]: `data.caption_key` picks one ('blip' by default,
as in LlamaGen). Relative image paths are relative to their index file's
folder; absolute paths and URLs (`gs://...`) are read as they are. Web URLs
(http, https) are refused: nothing is downloaded here; fetch the images first,
e.g. with img2dataset, whose tar shards `data.name=webdataset` reads with
`data.captions=True`.

Records are {'image': encoded bytes, 'caption': str}, named `FILE line N:
IMAGE` (`FILE row N: IMAGE` in Parquet). The index files are read whole when
the split is opened: an entry that is not a JSON object or lacks a field
stops there, naming the file, line and the fields expected. Images are only
read with their record: a missing or unreadable file is a corrupt record, and
so is one that does not decode (skipped, counted and named as for every
source). Small images are kept: LlamaGen's Text2ImgDataset drops those whose
shorter side is below its image size, which only the reader of the decoded
image knows (the crops here upsample them).
"""

import functools
import json
import os

from etils import epath
import numpy as np

from vwt_jax.data import array_records
from vwt_jax.data import transforms
from vwt_jax.data import webdataset

NAME = 'image_text'
INDEX_EXTENSIONS = ('.jsonl', '.parquet')
PATH_FIELDS = ('image_path', 'image', 'file', 'path')
CAPTION_FIELDS = ('text', 'caption', 'prompt', 'TEXT')
# The captions of a list, as LlamaGen's `language/extract_t5_feature.py` indexes them.
CAPTION_KEY = {'blip': 0, 'llava': 1, 'llava_first': 2}
DEFAULT_CAPTION_KEY = 'blip'


def index_files(root, split):
  """The index files of a split, in order."""
  files = []
  for path in webdataset.expand(split, root, what='image_text index files'):
    named = epath.Path(path)
    if named.is_dir():
      inside = sorted(p.name for p in named.iterdir() if p.name.endswith(INDEX_EXTENSIONS))
      if not inside:
        raise ValueError(f'{path}: no {" or ".join(INDEX_EXTENSIONS)} index file in the folder')
      files += [os.path.join(path, name) for name in inside]
    elif not named.exists():
      raise FileNotFoundError(f'image_text split {split!r}: {path} does not exist '
                              f'(data.data_dir={root!r})')
    elif not path.endswith(INDEX_EXTENSIONS):
      raise ValueError(f'{path}: not an index file ({" or ".join(INDEX_EXTENSIONS)})')
    else:
      files.append(path)
  return files


def _pyarrow():
  """pyarrow with its Parquet reader: installed with tensorflow-datasets, not
  required by vwt_jax itself."""
  try:
    # pylint: disable=g-import-not-at-top
    import pyarrow
    import pyarrow.parquet
    # pylint: enable=g-import-not-at-top
  except ImportError:
    raise ImportError('Parquet index files need pyarrow (pip install pyarrow)') from None
  return pyarrow


def _unit(index_file):
  """What an entry of `index_file` is numbered by."""
  return 'row' if index_file.endswith('.parquet') else 'line'


def _first_field(entry, fields):
  return next((f for f in fields if entry.get(f) is not None), None)


def _entry(entry, where, index_file, caption_key):
  """(image path, caption) of one index entry, a JSON object or a Parquet row."""
  if not isinstance(entry, dict):
    raise ValueError(f'{where}: expected a JSON object, got {type(entry).__name__}')
  path_field, caption_field = _first_field(entry, PATH_FIELDS), _first_field(entry, CAPTION_FIELDS)
  for field, expected in ((path_field, PATH_FIELDS), (caption_field, CAPTION_FIELDS)):
    if field is None:
      raise ValueError(f'{where}: expected a field of {" | ".join(expected)} (not null); '
                       f'it has {sorted(entry)}')
  image, caption = entry[path_field], entry[caption_field]
  if isinstance(caption, list):
    number = CAPTION_KEY[caption_key]
    if number >= len(caption):
      raise ValueError(f'{where}: "{caption_field}" lists {len(caption)} captions; '
                       f'data.caption_key={caption_key!r} takes caption #{number} of '
                       '[blip, llava, llava_first]')
    caption = caption[number]
  if not isinstance(image, str) or not isinstance(caption, str):
    raise ValueError(f'{where}: expected "{path_field}" an image path and "{caption_field}" '
                     f'a caption (strings), got {type(image).__name__} and '
                     f'{type(caption).__name__}')
  if image.lower().startswith(('http://', 'https://')):
    raise ValueError(f'{where}: {image} is a web URL; nothing is downloaded here: fetch the '
                     'images first (e.g. img2dataset, whose tar shards data.name=webdataset '
                     'reads with data.captions=True)')
  if '://' not in image and not os.path.isabs(image):
    image = os.path.join(os.path.dirname(index_file), image)
  return image, caption


def _jsonl_entries(index_file):
  """(line number, parsed object) of each non-blank line."""
  with epath.Path(index_file).open('r', encoding='utf-8') as lines:
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        yield number, json.loads(line)
      except ValueError as e:
        raise ValueError(f'{index_file} line {number}: not JSON ({e}); expected '
                         '{"image_path": ..., "text": ...}') from None


def _parquet_entries(index_file):
  """(row number, {column: value}) of each row, read from the path and caption columns."""
  pa = _pyarrow()
  with epath.Path(index_file).open('rb') as f:
    table = pa.parquet.ParquetFile(f)
    schema = table.schema_arrow
    columns = [next((c for c in fields if c in schema.names), None)
               for fields in (PATH_FIELDS, CAPTION_FIELDS)]
    for column, fields in zip(columns, (PATH_FIELDS, CAPTION_FIELDS)):
      if column is None:
        raise ValueError(f'{index_file}: expected a column of {" | ".join(fields)}; it has '
                         f'{schema.names}')
    kind = schema.field(columns[0]).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
      # Embedded image bytes would all be loaded here: they belong in tar shards.
      raise ValueError(f'{index_file}: column {columns[0]!r} holds {kind}, not image paths '
                       '(strings)')
    rows = table.read(columns=columns).to_pylist()
  yield from enumerate(rows, 1)


class ImageTextSource:
  """Random access to {'image': encoded bytes, 'caption': str} of index files."""

  def __init__(self, files, caption_key=DEFAULT_CAPTION_KEY):
    if caption_key not in CAPTION_KEY:
      raise ValueError(f'data.caption_key={caption_key!r}: expected one of {list(CAPTION_KEY)}')
    if not files:
      raise ValueError('image_text: no index file given')
    self._files = tuple(files)
    self._starts, numbers, self._images, self._captions = [], [], [], []
    for index_file in self._files:
      self._starts.append(len(self._images))
      unit = _unit(index_file)
      entries = (_parquet_entries if unit == 'row' else _jsonl_entries)(index_file)
      for number, entry in entries:
        image, caption = _entry(entry, f'{index_file} {unit} {number}', index_file, caption_key)
        numbers.append(number)
        self._images.append(image)
        self._captions.append(caption)
    if not self._images:
      raise ValueError(f'image_text: no entry in {len(self._files)} index file(s) '
                       f'({self._files[0]}, ...)')
    self._numbers = np.asarray(numbers, np.int32)

  def __len__(self):
    return len(self._images)

  def record_name(self, index):
    file = self._files[array_records.locate(self._starts, index)[0]]
    return f'{file} {_unit(file)} {self._numbers[index]}: {self._images[index]}'

  def __getitem__(self, index):
    try:
      data = epath.Path(self._images[index]).read_bytes()
    except OSError as e:
      raise transforms.CorruptRecordError(f'{self.record_name(index)}: cannot read ({e})') from None
    return {'image': data, 'caption': self._captions[index]}

  def __repr__(self):
    return f'ImageTextSource({len(self._files)} index files, {len(self)} images)'


@functools.lru_cache(maxsize=16)
def data_source(root, split, caption_key=DEFAULT_CAPTION_KEY):
  """The source of `split`: index files under `root` (see the module docstring)."""
  return ImageTextSource(index_files(os.fspath(root), split), caption_key)
