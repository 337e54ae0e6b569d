"""synthetic_shapes: deterministic pictures, ArrayRecord output, tfds read-back."""

import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from vwt_jax.data import synthetic_shapes
from vwt_jax.data import transforms


def test_same_index_and_seed_give_identical_png_bytes():
  for index in (0, 7, 123):
    first = synthetic_shapes.render_example(index, seed=3, resolution=32)
    second = synthetic_shapes.render_example(index, seed=3, resolution=32)
    assert first[1] == second[1]
    assert (synthetic_shapes.encode_png(first[0])
            == synthetic_shapes.encode_png(second[0]))


def test_pictures_differ_across_index_seed_and_split():
  def picture(index, seed=0, split='train'):
    return synthetic_shapes.render_example(
        index, seed=seed, resolution=32, split=split)[0]

  assert not np.array_equal(picture(0), picture(10))  # Same class.
  assert not np.array_equal(picture(0), picture(0, seed=1))
  assert not np.array_equal(picture(0), picture(0, split='validation'))


def test_prepared_split_is_array_record_and_matches_render(shapes_builder):
  builder = shapes_builder
  config = builder.builder_config
  assert glob.glob(os.path.join(builder.data_dir, '*.array_record-*'))
  name = f'synthetic_shapes/{builder.builder_config.name}'
  sources = tfds.data_source(name, data_dir=str(builder.data_dir_root))
  assert len(sources['train']) == config.num_train
  assert len(sources['validation']) == config.num_validation

  labels = {int(sources['train'][i]['label']) for i in range(20)}
  assert labels == set(range(synthetic_shapes.NUM_CLASSES))

  raw = builder.as_data_source(
      split='validation', decoders={'image': tfds.decode.SkipDecoding()})
  for index in (0, 17):
    expected, label = synthetic_shapes.render_example(
        index, seed=0, resolution=config.resolution, split='validation')
    np.testing.assert_array_equal(
        transforms.decode_image(raw[index]['image']), expected)
    assert int(raw[index]['label']) == label


def test_prepare_is_idempotent(shapes_builder):
  config = shapes_builder.builder_config
  files = sorted(glob.glob(os.path.join(shapes_builder.data_dir, '*')))
  mtimes = [os.path.getmtime(f) for f in files]
  again = synthetic_shapes.prepare_synthetic_shapes(
      str(shapes_builder.data_dir_root), resolution=config.resolution,
      num_train=config.num_train, num_validation=config.num_validation,
      seed=config.seed)
  assert again.data_dir == shapes_builder.data_dir
  assert [os.path.getmtime(f) for f in files] == mtimes


def test_default_sizes_use_the_named_config(tmp_path, monkeypatch):
  # Generating the 11k default examples is too slow for a unit test.
  monkeypatch.setattr(synthetic_shapes.SyntheticShapes,
                      'download_and_prepare', lambda self: None)
  builder = synthetic_shapes.prepare_synthetic_shapes(str(tmp_path), 32)
  assert builder.builder_config.name == 'res32'
  assert builder.builder_config.num_train == synthetic_shapes.DEFAULT_NUM_TRAIN


def test_class_colours_tie_the_colour_to_the_label():
  # The shape's colour is the image's most saturated pixel colour.
  def shape_colour(index):
    image, label = synthetic_shapes.render_example(index, resolution=32, class_colours=True)
    pixels = image.reshape(-1, 3).astype(int)
    return label, pixels[np.argmax(np.ptp(pixels, axis=1))]
  same_class = [shape_colour(i) for i in (3, 13, 23)]
  assert {label for label, _ in same_class} == {3}
  assert max(np.abs(c - same_class[0][1]).max() for _, c in same_class) <= 40
  assert synthetic_shapes.make_config(32, class_colours=True).name == 'res32_classcolours'


def test_upright_keeps_everything_but_the_rotation():
  # Index 8: a half disc, whose rotation shows (a circle's would not).
  rotated, label = synthetic_shapes.render_example(8, resolution=32)
  upright, same_label = synthetic_shapes.render_example(8, resolution=32, upright=True)
  assert label == same_label and not np.array_equal(rotated, upright)
  # Colour and background come from the same draws: the corners agree.
  np.testing.assert_array_equal(rotated[[0, 0, -1, -1], [0, -1, 0, -1]],
                                upright[[0, 0, -1, -1], [0, -1, 0, -1]])
  # Upright, every example of a class shows the same outline, whatever its size
  # and place: the half disc's flat side is at the bottom (rows below its
  # centre of mass hold more of the shape than rows above).
  for index in (8, 18, 28):
    image, _ = synthetic_shapes.render_example(index, resolution=64, upright=True)
    background = image[0, 0].astype(int)
    mask = np.abs(image.astype(int) - background).sum(-1) > 60
    rows = np.nonzero(mask)[0]
    centre = rows.mean()
    assert (rows > centre).sum() > (rows < centre).sum(), index
  assert (synthetic_shapes.make_config(32, class_colours=True, upright=True).name
          == 'res32_classcolours_upright')
