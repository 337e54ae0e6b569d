"""A small synthetic_shapes preparation shared by the data tests."""

import pytest

from vwt_jax.data import pipeline
from vwt_jax.data import synthetic_shapes


@pytest.fixture(scope='session')
def shapes_builder(tmp_path_factory):
  """32px, 200 train / 50 validation examples, prepared once per session."""
  return synthetic_shapes.prepare_synthetic_shapes(
      str(tmp_path_factory.mktemp('tfds')), resolution=32, num_train=200,
      num_validation=50, seed=0)


@pytest.fixture
def data_config(shapes_builder):
  shapes = shapes_builder.builder_config
  config = pipeline.default_data_config()
  config.data_dir = str(shapes_builder.data_dir_root)
  config.image_size = shapes.resolution
  config.num_threads = 2
  config.prefetch = 16
  config.synthetic.resolution = shapes.resolution
  config.synthetic.num_train = shapes.num_train
  config.synthetic.num_validation = shapes.num_validation
  config.synthetic.seed = shapes.seed
  return config
