"""ImageNet-1k (`imagenet2012`) read from a tfds ArrayRecord preparation.

The user prepares the dataset once (tfds needs TensorFlow for that step only,
because its builder re-encodes a few CMYK/PNG files):

  pip install 'vwt_jax[tf]'
  # ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual
  tfds build imagenet2012 --data_dir=DATA_DIR --file_format=array_record

Training then reads it without TensorFlow, preprocessed with the TiTok recipe
(`transforms.preprocess_image`).
"""

import os

import tensorflow_datasets as tfds

NAME = 'imagenet2012'
NUM_CLASSES = 1000

# Images stay encoded so the pipeline decodes them itself and can skip corrupt
# ones. Tests replace this with None: without TensorFlow, tfds mock data can
# only serve decoded arrays (`transforms.preprocess_image` accepts both).
DECODERS = {'image': tfds.decode.SkipDecoding()}


class DatasetNotPreparedError(FileNotFoundError):
  """The requested tfds dataset is missing from `data_dir`."""


def data_source(data_dir, split):
  """A tfds ArrayRecord random-access source of {'image': bytes, 'label': int} records.

  Args:
    data_dir: tfds data directory holding `imagenet2012/<version>/`; empty or
      None means the tfds default (`$TFDS_DATA_DIR` or ~/tensorflow_datasets).
    split: tfds split, e.g. 'train', 'validation' or 'train[:10000]'.

  Raises:
    DatasetNotPreparedError: the dataset is not prepared under `data_dir`.
  """
  try:
    # download=False: never start a preparation from a training job.
    return tfds.data_source(NAME, split=split, data_dir=data_dir or None, download=False,
                            decoders=DECODERS)
  # tfds reports a missing preparation as NotImplementedError ("random access not
  # supported"), AssertionError or a not-found error.
  except (tfds.core.DatasetNotFoundError, FileNotFoundError, AssertionError,
          NotImplementedError) as e:
    where = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
    raise DatasetNotPreparedError(
        f'{NAME} split {split!r} is not prepared as ArrayRecord under '
        f'data_dir={where!r}. Put ILSVRC2012_img_train.tar and '
        f'ILSVRC2012_img_val.tar in {where}/downloads/manual and run (with '
        f'TensorFlow installed, pip install "vwt_jax[tf]"): tfds build {NAME} '
        f'--data_dir={where} --file_format=array_record '
        f'[tfds said: {type(e).__name__}: {e}]') from e

