"""The imagenet2012 path, on tfds mock data (random image sizes)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vwt_jax.data import imagenet
from vwt_jax.data import pipeline


@pytest.fixture
def imagenet_config(tmp_path):
  config = pipeline.default_data_config()
  config.name = imagenet.NAME
  config.data_dir = str(tmp_path)
  config.image_size = 16
  config.num_threads = 2
  return config


@pytest.fixture
def mock_imagenet(monkeypatch):
  # Without TensorFlow, tfds mock data can only serve decoded arrays: asking
  # it for encoded bytes (SkipDecoding) makes it re-encode with tf.image.
  monkeypatch.setattr(imagenet, 'DECODERS', None)
  with tfds.testing.mock_data(
      num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.mark.usefixtures('mock_imagenet')
def test_train_batches_are_resized_and_cropped(imagenet_config):
  ds = pipeline.create_image_dataset(
      imagenet_config, split='train', global_batch_size=4, seed=0, train=True,
      process_index=0, process_count=1)
  iterator = iter(ds)
  for _ in range(3):  # Past one epoch of 8 examples.
    batch = next(iterator)
    assert batch['image'].shape == (4, 16, 16, 3)
    assert batch['image'].dtype == np.float32
    assert -1.0 <= batch['image'].min() <= batch['image'].max() <= 1.0
    assert batch['label'].dtype == np.int32
    assert np.all((0 <= batch['label']) & (batch['label'] < 1000))


@pytest.mark.usefixtures('mock_imagenet')
def test_eval_pass_is_padded_to_whole_batches(imagenet_config):
  ds = pipeline.create_image_dataset(
      imagenet_config, split='validation', global_batch_size=6, seed=0,
      train=False, process_index=0, process_count=1)
  batches = list(ds)
  assert [b['image'].shape for b in batches] == [(6, 16, 16, 3)] * 2
  assert sum(int(b['mask'].sum()) for b in batches) == 8
  assert pipeline.num_classes(imagenet_config) == 1000


def test_missing_preparation_names_data_dir_and_command(imagenet_config):
  with pytest.raises(imagenet.DatasetNotPreparedError) as error:
    pipeline.create_image_dataset(
        imagenet_config, split='train', global_batch_size=4, seed=0,
        train=True, process_index=0, process_count=1)
  message = str(error.value)
  assert imagenet_config.data_dir in message
  assert 'tfds build imagenet2012' in message
  assert '--file_format=array_record' in message
