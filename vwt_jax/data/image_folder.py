"""Your own pictures as an image dataset: one folder per split.

  ROOT/train/CLASS_A/0001.jpg        a sub-folder per class: labels are the
  ROOT/train/CLASS_B/x.png             class folders' indices in name order
  ROOT/validation/CLASS_A/...        (another split's classes are matched to
                                       the train split's by name)
  ROOT/SPLIT/labels.csv              or a flat folder and a labels file:
  ROOT/SPLIT/labels.jsonl              `file,label` rows (a header row is
                                       skipped) / {"file": ..., "label": ...}
                                       lines; labels are ints, or class names
                                       (indexed in name order)

Read with `--config.data.name=image_folder --config.data.data_dir=ROOT`; the
split folders are `data.train_split` and `data.eval_split` ('train' and
'validation' by default; e.g. `--config.data.eval_split=val`). Files are listed
once, recursively inside each class folder, in path order; any format and size
Pillow reads (JPEG, PNG, WebP, BMP, GIF, TIFF) goes through the same
preprocessing as the prepared datasets, EXIF orientation ignored as the
official loaders (PIL) ignore it. ROOT may be a URL (`gs://bucket/images`). A
file that cannot be read or decoded is a corrupt record: skipped, counted and
named like any other.
"""

import csv
import functools
import io
import json
import os

from etils import epath
import numpy as np

from vwt_jax.data import transforms

NAME = 'image_folder'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff')
LABEL_FILES = ('labels.csv', 'labels.jsonl')


def _is_image(path):
  return path.name.lower().endswith(IMAGE_EXTENSIONS) and not path.name.startswith('.')


def _label_file(folder):
  found = [folder / name for name in LABEL_FILES if (folder / name).exists()]
  if len(found) > 1:
    raise ValueError(f'{folder} holds both {LABEL_FILES}: keep one')
  return found[0] if found else None


def _read_label_rows(path):
  """[(relative file, label str)] of a labels.csv / labels.jsonl."""
  text = path.read_text()
  rows = []
  if path.name.endswith('.jsonl'):
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        rows.append((str(record['file']), str(record['label'])))
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} line {number}: expected {{"file": ..., "label": ...}} '
                         f'({type(e).__name__}: {e})') from None
    return rows
  for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
    if not row or (number == 1 and [c.strip().lower() for c in row] == ['file', 'label']):
      continue
    if len(row) != 2:
      raise ValueError(f'{path} row {number}: expected two columns file,label, got {row}')
    rows.append((row[0].strip(), row[1].strip()))
  return rows


def _class_names(labels):
  """Class names of string labels; ints name themselves."""
  if all(label.lstrip('-').isdigit() for label in labels):
    return None
  return sorted(set(labels))


def _images_under(folder):
  """The image files under `folder`, at any depth (a walk by listings: `rglob`
  is refused on object stores)."""
  for path in folder.iterdir():
    if path.is_dir():
      yield from _images_under(path)
    elif _is_image(path):
      yield path


@functools.lru_cache(maxsize=16)
def _listing(root, split):
  """(files, labels as given, whether labels are class folders) of a split folder."""
  folder = epath.Path(root) / split
  if not folder.is_dir():
    raise FileNotFoundError(f'image folder split {split!r}: {folder} is not a folder '
                            f'(data.data_dir={root!r})')
  label_file = _label_file(folder)
  if label_file is not None:
    rows = _read_label_rows(label_file)
    if not rows:
      raise ValueError(f'{label_file} lists no image')
    return tuple(str(folder / f) for f, _ in rows), tuple(l for _, l in rows), False
  files, labels = [], []
  for class_dir in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name):
    found = sorted(_images_under(class_dir), key=str)
    files += [str(p) for p in found]
    labels += [class_dir.name] * len(found)
  if not files:
    raise ValueError(f'{folder}: no image in class sub-folders and no {" or ".join(LABEL_FILES)}')
  return tuple(files), tuple(labels), True


@functools.lru_cache(maxsize=16)
def classes(root, train_split):
  """The class names of a dataset, from its train split (labels index them)."""
  _, labels, by_folder = _listing(root, train_split)
  names = sorted(set(labels)) if by_folder else _class_names(labels)
  if names is None:
    return tuple(str(i) for i in range(max(int(l) for l in labels) + 1))
  return tuple(names)


class ImageFolderSource:
  """Random access to {'image': encoded bytes, 'label': int} of one split folder."""

  def __init__(self, root, split, class_names):
    files, labels, by_folder = _listing(root, split)
    index = {name: i for i, name in enumerate(class_names)}
    if by_folder or _class_names(labels) is not None:
      unknown = sorted(set(labels) - set(index))
      if unknown:
        raise ValueError(f'{epath.Path(root) / split}: classes {unknown[:5]} are not among '
                         f'the {len(class_names)} classes of the train split')
      self._labels = np.asarray([index[l] for l in labels], np.int32)
    else:
      self._labels = np.asarray([int(l) for l in labels], np.int32)
      if self._labels.min() < 0 or self._labels.max() >= len(class_names):
        raise ValueError(f'{epath.Path(root) / split}: labels outside 0..'
                         f'{len(class_names) - 1} (the train split\'s range)')
    self._files = files
    self._where = f'{root}/{split}'

  def __len__(self):
    return len(self._files)

  def record_name(self, index):
    return self._files[index]

  def __getitem__(self, index):
    path = self._files[index]
    try:
      data = epath.Path(path).read_bytes()
    except OSError as e:
      raise transforms.CorruptRecordError(f'{path}: cannot read ({e})') from None
    return {'image': data, 'label': int(self._labels[index])}

  def __repr__(self):
    return f'ImageFolderSource({self._where}, {len(self)} images)'


def data_source(root, split, train_split):
  """The source of `split`, its labels indexed by the classes of `train_split`."""
  if not root:
    raise ValueError("data.name='image_folder' needs data.data_dir: the folder holding "
                     'the split folders')
  root = os.fspath(root)
  return ImageFolderSource(root, split, classes(root, train_split))
