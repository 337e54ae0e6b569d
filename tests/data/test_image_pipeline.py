"""create_image_dataset on synthetic_shapes: batches, determinism, resume,
per-process sharding, eval padding and corrupt records."""

import glob
import os
import re
import shutil

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vwt_jax.data import pipeline

from helpers import absl_flags_parsed, assert_same_batches, take_batches


def _train(data_config, seed=0, batch=8, **kwargs):
  return pipeline.create_image_dataset(
      data_config, split='train', global_batch_size=batch, seed=seed,
      train=True, **kwargs)


def _differs(batches_a, batches_b):
  return any(not np.array_equal(a['image'], b['image'])
             for a, b in zip(batches_a, batches_b))


def _canonical(image):
  """Flip-invariant identity of an example (train batches are flipped)."""
  return min(image.tobytes(), image[:, ::-1].tobytes())


def test_train_batch_shapes_dtypes_and_range(data_config):
  iterator = iter(_train(data_config))
  batch = next(iterator)
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (8, 32, 32, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (8,)
  assert batch['label'].dtype == np.int32
  assert -1.0 <= batch['image'].min() < batch['image'].max() <= 1.0
  assert iterator.stats() == {'num_corrupt_records': 0}


def test_resized_to_image_size(data_config):
  data_config.image_size = 24
  batch = next(iter(_train(data_config)))
  assert batch['image'].shape == (8, 24, 24, 3)


def test_order_is_a_function_of_the_seed(data_config):
  first = take_batches(iter(_train(data_config, seed=1)), 3)
  assert_same_batches(first, take_batches(iter(_train(data_config, seed=1)), 3))
  assert _differs(first, take_batches(iter(_train(data_config, seed=2)), 3))


def test_epochs_are_reshuffled(data_config):
  # 200 examples / 8 = 25 batches per epoch.
  batches = take_batches(iter(_train(data_config)), 50)
  assert _differs(batches[:25], batches[25:])


def test_set_state_resumes_with_identical_batches(data_config):
  iterator = iter(_train(data_config))
  take_batches(iterator, 3)
  state = iterator.get_state()
  expected = take_batches(iterator, 3)

  restored = iter(_train(data_config))
  restored.set_state(state)
  assert_same_batches(take_batches(restored, 3), expected)


def test_orbax_composite_checkpoint_resumes_iterator(data_config, tmp_path):
  iterator = iter(_train(data_config))
  take_batches(iterator, 2)
  params = {'w': np.arange(4.0)}
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(2, args=ocp.args.Composite(
        state=ocp.args.StandardSave(params),
        data_iter=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = take_batches(iterator, 3)

  fresh = iter(_train(data_config))
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(params),
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored.state['w'], params['w'])
  assert_same_batches(take_batches(restored.data_iter, 3), expected)


def test_processes_read_disjoint_examples(data_config):
  # Global batch 20 over 2 processes: 10 local batches of 10 = one epoch.
  seen = []
  for process_index in range(2):
    iterator = iter(_train(data_config, batch=20, process_index=process_index,
                           process_count=2))
    batches = take_batches(iterator, 10)
    assert batches[0]['image'].shape[0] == 10
    seen.append({_canonical(image)
                 for b in batches for image in b['image']})
  assert len(seen[0]) == len(seen[1]) == 100
  assert not seen[0] & seen[1]


def test_process_count_must_divide_batch(data_config):
  with pytest.raises(ValueError, match='divisible'):
    _train(data_config, batch=9, process_index=0, process_count=2)


@pytest.mark.parametrize('drop_remainder', [False, True])
def test_eval_is_one_padded_pass_with_equal_batches_per_process(
    data_config, drop_remainder):
  data_config.eval_drop_remainder = drop_remainder
  per_process = []
  for process_index in range(2):
    ds = pipeline.create_image_dataset(
        data_config, split='validation', global_batch_size=16, seed=0,
        train=False, process_index=process_index, process_count=2)
    per_process.append(list(ds))
  assert len(per_process[0]) == len(per_process[1])
  batches = per_process[0] + per_process[1]
  assert all(b['image'].shape == (8, 32, 32, 3) for b in batches)
  num_real = sum(int(b['mask'].sum()) for b in batches)
  # 50 examples: 4 global batches of 16 when padding, 3 when dropping.
  assert num_real == (48 if drop_remainder else 50)
  assert len(batches) == (6 if drop_remainder else 8)
  padded = np.concatenate([b['image'][~b['mask']] for b in batches])
  assert np.all(padded == -1.0)


def test_eval_order_is_record_order(data_config):
  ds = pipeline.create_image_dataset(
      data_config, split='validation', global_batch_size=10, seed=0,
      train=False, process_index=0, process_count=1)
  labels = np.concatenate([b['label'] for b in ds])
  np.testing.assert_array_equal(labels, np.arange(50) % 10)


class _CorruptEveryFifth:
  """Wraps a source; records 0, 5, 10, ... carry broken image bytes."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = dict(self._source[index])
    if index % 5 == 0:
      record['image'] = b'\x89PNG garbage'
    return record


@pytest.fixture
def corrupt_source(monkeypatch):
  open_source = pipeline.open_source

  def corrupting_open_source(data_config, split):
    source, description = open_source(data_config, split)
    return _CorruptEveryFifth(source), description

  monkeypatch.setattr(pipeline, 'open_source', corrupting_open_source)


@pytest.mark.usefixtures('corrupt_source')
def test_corrupt_records_are_skipped_counted_and_checkpointed(
    data_config, caplog):
  data_config.max_corrupt_records = 1000
  iterator = iter(_train(data_config))
  batches = take_batches(iterator, 5)
  assert all(b['image'].shape == (8, 32, 32, 3) for b in batches)
  # About 10 of the ~50 records read for 40 examples are corrupt.
  count = iterator.stats()['num_corrupt_records']
  assert 4 < count < 16
  assert 'Corrupt record' in caplog.text and 'synthetic_shapes' in caplog.text

  state = iterator.get_state()
  expected = take_batches(iterator, 2)
  restored = iter(_train(data_config))
  restored.set_state(state)
  assert restored.stats() == {'num_corrupt_records': count}
  assert_same_batches(take_batches(restored, 2), expected)
  assert restored.stats() == iterator.stats()


@pytest.mark.usefixtures('corrupt_source')
def test_too_many_corrupt_records_raise_naming_the_source(data_config):
  data_config.max_corrupt_records = 3
  iterator = iter(_train(data_config))
  with pytest.raises(pipeline.TooManyCorruptRecordsError,
                     match=r'synthetic_shapes/res32.*split .train.*'
                     r'max_corrupt_records=3'):
    take_batches(iterator, 10)


@pytest.mark.parametrize('damage', ['chunks', 'empty'])
def test_damaged_shards_are_skipped_counted_and_named(data_config, tmp_path, damage):
  # A copy of the prepared dataset whose train shard is damaged on disk.
  copy = tmp_path / 'tfds'
  shutil.copytree(data_config.data_dir, copy)
  data_config.data_dir = str(copy)
  (shard,) = glob.glob(str(copy / '**' / '*-train.array_record-*'), recursive=True)
  with open(shard, 'r+b') as f:
    if damage == 'empty':
      f.truncate(0)
    else:
      # Some of the chunks in the middle of the file.
      f.seek(os.path.getsize(shard) // 3)
      f.write(b'\x5a' * 3000)
  if damage == 'chunks':
    data_config.max_corrupt_records = 1000
    iterator = iter(_train(data_config))
    batches = take_batches(iterator, 30)  # more than an epoch
    assert all(b['image'].shape == (8, 32, 32, 3) for b in batches)
    assert 0 < iterator.stats()['num_corrupt_records'] < 200
  data_config.max_corrupt_records = 3
  with pytest.raises(pipeline.TooManyCorruptRecordsError,
                     match=r'max_corrupt_records=3; the last ones: .*' + re.escape(
                         os.path.basename(shard))):
    take_batches(iter(_train(data_config)), 30)


@pytest.mark.usefixtures('corrupt_source')
def test_corrupt_eval_records_are_masked_out(data_config):
  ds = pipeline.create_image_dataset(
      data_config, split='validation', global_batch_size=10, seed=0,
      train=False, process_index=0, process_count=1)
  iterator = iter(ds)
  batches = list(iterator)
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(50) % 5 != 0)
  assert iterator.stats() == {'num_corrupt_records': 10}


def test_worker_processes_give_the_in_process_batches(data_config):
  with absl_flags_parsed():
    expected = take_batches(iter(_train(data_config)), 3)
    data_config.num_workers = 1
    iterator = iter(_train(data_config))
    try:
      assert_same_batches(take_batches(iterator, 3), expected)
    finally:
      iterator.close()


def test_unknown_dataset_name(data_config):
  data_config.name = 'mnist'
  with pytest.raises(ValueError, match='mnist'):
    _train(data_config)
