"""Synthetic Shapes: an embedded, class-conditional image dataset.

Every picture shows one filled shape on a soft two-colour gradient. The label is
the shape kind (`CLASS_NAMES`, balanced: example `i` has label `i % 10`).
Colour, size, position and rotation are drawn from a generator seeded by
`(seed, split, i)`, so example `i` of a split is the same picture on every
machine and at every resolution (geometry is in normalised coordinates).
`class_colours=True` gives each class its colour, so that a class stays visible
through a tokenizer too small to render outlines sharply; `upright=True` keeps
every shape in its canonical orientation (the CPU demo). Edges are
anti-aliased by drawing the mask at 4x resolution and box-filtering it down.

The data is written by a tfds `GeneratorBasedBuilder` (`synthetic_shapes`) as
ArrayRecord files holding PNG bytes, so it is read exactly like ImageNet:

  builder = prepare_synthetic_shapes('/tmp/tfds', resolution=32)
  source = tfds.data_source('synthetic_shapes/res32', data_dir='/tmp/tfds')

Named configs `res32`, `res64`, `res128` and `res256` use the default split
sizes and seed; other sizes get a config name spelling them out, which
`tfds.data_source` reads back from the prepared files.
"""

import dataclasses
import io
import math

import numpy as np
from PIL import Image
from PIL import ImageDraw
import tensorflow_datasets as tfds

from vwt_jax.core import files

CLASS_NAMES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring', 'heart', 'crescent',
               'half_disc', 'arrow')
NUM_CLASSES = len(CLASS_NAMES)

DEFAULT_NUM_TRAIN = 10_000
DEFAULT_NUM_VALIDATION = 1_000
DEFAULT_SEED = 0
NAMED_RESOLUTIONS = (32, 64, 128, 256)

# Saturated shape colours (red, green, blue, yellow, cyan, magenta, orange,
# white); each is jittered a little per example.
_PALETTE = np.array([(230, 40, 40), (40, 190, 60), (50, 90, 230), (240, 220, 40),
                     (40, 210, 220), (220, 50, 210), (245, 140, 30), (245, 245, 245)],
                    dtype=np.float32)
# One distinct colour per class for `class_colours=True`: the palette plus two.
_CLASS_PALETTE = np.concatenate(
    [_PALETTE, np.array([(140, 80, 30), (25, 25, 25)], np.float32)])  # brown, black
_SPLIT_STREAMS = {'train': 0, 'validation': 1}
_SUPERSAMPLE = 4
_CIRCLE_VERTICES = 96


def _regular_polygon(n, radius=1.0, phase=math.pi / 2):
  angles = phase + 2 * math.pi * np.arange(n) / n
  return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _star(points=5, inner=0.45):
  outer = _regular_polygon(points)
  inner_pts = _regular_polygon(points, inner, math.pi / 2 + math.pi / points)
  return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _heart():
  t = np.linspace(0, 2 * math.pi, _CIRCLE_VERTICES, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
  pts = np.stack([x, y], axis=1) / 17.0
  # Image rows grow downwards; flip so the heart's tip points down unrotated.
  return pts * np.array([1.0, -1.0]) + np.array([0.0, 0.1])


def _half_disc():
  t = np.linspace(0, math.pi, _CIRCLE_VERTICES // 2 + 1)
  return np.stack([np.cos(t), 0.5 - np.sin(t)], axis=1)


_DISC = _regular_polygon(_CIRCLE_VERTICES)
_CROSS_ARM = 0.33
_CROSS = np.array([
    (-_CROSS_ARM, -1), (_CROSS_ARM, -1), (_CROSS_ARM, -_CROSS_ARM),
    (1, -_CROSS_ARM), (1, _CROSS_ARM), (_CROSS_ARM, _CROSS_ARM),
    (_CROSS_ARM, 1), (-_CROSS_ARM, 1), (-_CROSS_ARM, _CROSS_ARM),
    (-1, _CROSS_ARM), (-1, -_CROSS_ARM), (-_CROSS_ARM, -_CROSS_ARM),
])  # pyformat: disable
_ARROW = np.array([
    (-1, -0.25), (0.15, -0.25), (0.15, -0.65), (1, 0),
    (0.15, 0.65), (0.15, 0.25), (-1, 0.25),
])  # pyformat: disable

# Each shape is a list of (polygon in unit coordinates, mask value) drawn in
# order; value 0 cuts holes (ring, crescent) so they show the background.
_SHAPES = {
    'circle': [(_DISC, 255)],
    'square': [(_regular_polygon(4, math.sqrt(2) * 0.8, math.pi / 4), 255)],
    'triangle': [(_regular_polygon(3, 1.0) + np.array([0, 0.2]), 255)],
    'star': [(_star(), 255)],
    'cross': [(_CROSS, 255)],
    'ring': [(_DISC, 255), (_DISC * 0.55, 0)],
    'heart': [(_heart(), 255)],
    'crescent': [(_DISC, 255), (_DISC * 0.85 + np.array([0.4, -0.15]), 0)],
    'half_disc': [(_half_disc(), 255)],
    'arrow': [(_ARROW, 255)],
}
assert tuple(_SHAPES) == CLASS_NAMES


def _luminance(rgb):
  return float(np.dot(rgb, (0.299, 0.587, 0.114)) / 255.0)


def _background(rng, resolution, shape_luminance):
  """A gradient between two colours that contrast with the shape."""
  # Dark backgrounds behind bright shapes and vice versa keep every class
  # legible at 32px.
  lo, hi = (0.05, 0.35) if shape_luminance > 0.5 else (0.65, 0.95)
  ends = rng.uniform(lo, hi, size=(2, 1)) * 255
  tints = ends + rng.uniform(-20, 20, size=(2, 3))
  angle = rng.uniform(0, 2 * math.pi)
  coords = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
  yy, xx = np.meshgrid(coords, coords, indexing='ij')
  ramp = (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)
  ramp = np.clip(ramp / math.sqrt(2) + 0.5, 0, 1)[..., None]
  return tints[0] * (1 - ramp) + tints[1] * ramp


def _shape_mask(kind, center, radius, angle, resolution):
  """Anti-aliased coverage in [0, 1] of `kind` at the given pose."""
  size = resolution * _SUPERSAMPLE
  mask = Image.new('L', (size, size), 0)
  draw = ImageDraw.Draw(mask)
  rotation = np.array([[math.cos(angle), -math.sin(angle)],
                       [math.sin(angle), math.cos(angle)]])
  for polygon, value in _SHAPES[kind]:
    points = (polygon @ rotation.T * radius + center) * size
    draw.polygon([tuple(p) for p in points.tolist()], fill=value)
  mask = mask.resize((resolution, resolution), Image.Resampling.BOX)
  return np.asarray(mask, dtype=np.float32)[..., None] / 255.0


def render_example(index, *, seed=DEFAULT_SEED, resolution=64, split='train',
                   class_colours=False, upright=False):
  """Draws example `index` of `split`.

  Args:
    index: example number, >= 0.
    seed: dataset seed; with `split` and `index` it fixes the picture.
    resolution: output height and width in pixels.
    split: 'train' or 'validation' (independent picture streams).
    class_colours: draw class `c` in colour `c` of a fixed 10-colour palette.
    upright: draw every shape unrotated, in its canonical orientation.

  Returns:
    (uint8 array of shape (resolution, resolution, 3), int label).
  """
  label = index % NUM_CLASSES
  rng = np.random.default_rng((seed, _SPLIT_STREAMS[split], index))
  # Drawn either way, so that class_colours changes nothing else of the picture.
  colour = _PALETTE[rng.integers(len(_PALETTE))]
  colour = _CLASS_PALETTE[label] if class_colours else colour
  colour = np.clip(colour + rng.uniform(-15, 15, size=3), 0, 255)
  radius = rng.uniform(0.15, 0.35)
  center = rng.uniform(radius, 1 - radius, size=2)
  # Drawn either way too: the background comes from the same generator.
  angle = rng.uniform(0, 2 * math.pi)
  angle = 0.0 if upright else angle
  background = _background(rng, resolution, _luminance(colour))
  alpha = _shape_mask(CLASS_NAMES[label], center, radius, angle, resolution)
  image = background * (1 - alpha) + colour * alpha
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def encode_png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG', compress_level=1)
  return buffer.getvalue()


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  """Resolution, split sizes and seed of one prepared variant."""

  resolution: int = 64
  num_train: int = DEFAULT_NUM_TRAIN
  num_validation: int = DEFAULT_NUM_VALIDATION
  seed: int = DEFAULT_SEED
  class_colours: bool = False
  upright: bool = False


def make_config(resolution, num_train=DEFAULT_NUM_TRAIN, num_validation=DEFAULT_NUM_VALIDATION,
                seed=DEFAULT_SEED, class_colours=False, upright=False):
  """The config for these settings; its name encodes any non-default."""
  name = f'res{resolution}'
  if (num_train, num_validation, seed) != (
      DEFAULT_NUM_TRAIN, DEFAULT_NUM_VALIDATION, DEFAULT_SEED):
    name += f'_train{num_train}_val{num_validation}_seed{seed}'
  name += ('_classcolours' if class_colours else '') + ('_upright' if upright else '')
  description = (f'{resolution}x{resolution} shapes, {num_train} train / {num_validation} '
                 f'validation examples, seed {seed}'
                 + (', one colour per class' if class_colours else '')
                 + (', upright' if upright else '') + '.')
  return SyntheticShapesConfig(
      name=name, description=description, resolution=resolution, num_train=num_train,
      num_validation=num_validation, seed=seed, class_colours=class_colours, upright=upright)


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Procedurally drawn shapes; label = shape kind (see `CLASS_NAMES`)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [make_config(r) for r in NAMED_RESOLUTIONS]

  def _info(self):
    resolution = self.builder_config.resolution
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(resolution, resolution, 3),
                                         encoding_format='png'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES)}),
        supervised_keys=('image', 'label'),
        # Record i of a split is example i, so indices mean the same thing in
        # the builder, the data source and the tests.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {'train': self._generate_examples('train', config.num_train),
            'validation': self._generate_examples('validation', config.num_validation)}

  def _generate_examples(self, split, num_examples):
    config = self.builder_config
    for index in range(num_examples):
      image, label = render_example(
          index, seed=config.seed, resolution=config.resolution, split=split,
          class_colours=config.class_colours, upright=config.upright)
      yield index, {'image': encode_png(image), 'label': label}


def prepare_synthetic_shapes(data_dir, resolution=64, num_train=DEFAULT_NUM_TRAIN,
                             num_validation=DEFAULT_NUM_VALIDATION, seed=DEFAULT_SEED,
                             class_colours=False, upright=False):
  """Writes the dataset under `data_dir` unless it is already there.

  Args:
    data_dir: tfds data directory (None: the tfds default).
    resolution: image height and width.
    num_train, num_validation: sizes of the 'train' and 'validation' splits.
    seed, class_colours, upright: the pictures (see `render_example`).

  Returns:
    The prepared `SyntheticShapes` builder: read it with
    `builder.as_data_source(split)`, or with `tfds.data_source(
    f'synthetic_shapes/{builder.builder_config.name}', data_dir=data_dir)`.
  """
  config = make_config(resolution, num_train, num_validation, seed, class_colours, upright)
  if config.name in SyntheticShapes.builder_configs:
    # tfds refuses a config object that shadows a named one; pass the name.
    config = config.name
  builder = SyntheticShapes(config=config, data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    if data_dir and files.is_remote(data_dir):
      # tfds writes ArrayRecord shards in place, and ArrayRecord's writer
      # only writes local files.
      raise ValueError(
          f'synthetic_shapes/{builder.builder_config.name} is not prepared under '
          f'data_dir={data_dir!r}; prepare it under a local data_dir and copy '
          f'its synthetic_shapes/ folder there')
    builder.download_and_prepare()
  return builder
