"""Code datasets: views, the ArrayRecord format, metadata checks and the
generator-training pipeline (determinism, resume, sharding, corrupt records)."""

import json
import os
import re
import shutil

from array_record.python import array_record_module
import numpy as np
import pytest

from vwt_jax.data import codes
from vwt_jax.data import pipeline
from vwt_jax.data import transforms

from helpers import assert_same_batches, take_batches

NUM_TRAIN = 40
NUM_VAL = 10
VOCAB = 50


def _record_codes(index, num_views, marker=0):
  """Codes naming their record and view: [index, view, label, marker]."""
  return np.array([[index, v, index % 10, marker] for v in range(num_views)])


def _write(path, num_train=NUM_TRAIN, marker=0, views='ten_crop', **meta):
  metadata = codes.CodeMetadata(tokenizer='titok', code_shape=(4,), vocab_size=VOCAB,
                                num_classes=10, views=views, crop_range=1.1,
                                image_size=16, **meta)
  captions = metadata.has_captions
  for split, size in (('train', num_train), ('validation', NUM_VAL)):
    with codes.CodeDatasetWriter(str(path), metadata, split=split,
                                 shard_size=16) as writer:
      for i in range(size):
        extra = {}
        if captions:
          # Caption i has i % 4 real tokens of value i + 1, then padding.
          emb = np.zeros((metadata.caption_length, metadata.caption_dim))
          emb[:i % 4] = i + 1
          mask = np.arange(metadata.caption_length) < i % 4
          extra = dict(caption_emb=emb, caption_mask=mask)
        writer.add(_record_codes(i, metadata.num_views, marker), i % 10, **extra)
  return str(path)


@pytest.fixture(scope='module')
def codes_dir(tmp_path_factory):
  return _write(tmp_path_factory.mktemp('codes'))


def _config(path, **overrides):
  config = codes.default_codes_data_config()
  config.dir = path
  config.num_threads = 2
  config.prefetch = 8
  config.update(overrides)
  return config


def _train(config, seed=0, batch=8, **kwargs):
  return codes.create_code_dataset(config, split='train', global_batch_size=batch,
                                   seed=seed, train=True, **kwargs)


# -- views ---------------------------------------------------------------------


def test_ten_crop_views_are_corners_centre_and_mirrors():
  image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
  views = codes.make_views(image, 'ten_crop', 16, crop_range=1.25)
  big = transforms.center_crop_arr(image, 20)
  assert views.shape == (10, 16, 16, 3) and views.dtype == np.uint8
  tl, tr, bl, br, centre = big[:16, :16], big[:16, 4:], big[4:, :16], big[4:, 4:], big[2:18, 2:18]
  for view, expected in zip(views, [tl, tr, bl, br, centre]):
    np.testing.assert_array_equal(view, expected)
  # torchvision TenCrop: the five crops of the mirror image, i.e. the mirrored
  # top-right crop comes first.
  for view, expected in zip(views[5:], [tr, tl, br, bl, centre]):
    np.testing.assert_array_equal(view, expected[:, ::-1])


def test_ten_crop_centre_rounds_like_torchvision_on_odd_margins():
  image = np.random.default_rng(1).integers(0, 256, (17, 17, 3), np.uint8)
  crops = transforms.ten_crop(image, 16)
  # Margin 1: round(0.5) == 0, so the centre crop is the top-left one, and the
  # mirror's centre crop is the mirrored top-right one.
  np.testing.assert_array_equal(crops[4], image[:16, :16])
  np.testing.assert_array_equal(crops[9], image[:16, 1:][:, ::-1])


def test_center_crop_arr_box_halves_then_resizes_shorter_side():
  image = np.random.default_rng(2).integers(0, 256, (70, 90, 3), np.uint8)
  out = transforms.center_crop_arr(image, 16)
  assert out.shape == (16, 16, 3)
  # 70x90 -> box 35x45 -> 17x22 (shorter side >= 32 twice) -> bicubic 16x21.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = Image.fromarray(image).resize((45, 35), Image.Resampling.BOX)
  pil = pil.resize((22, 17), Image.Resampling.BOX)
  pil = pil.resize((21, 16), Image.Resampling.BICUBIC)
  np.testing.assert_array_equal(out, np.asarray(pil)[:, 2:18])
  square = image[:16, :16]
  np.testing.assert_array_equal(transforms.center_crop_arr(square, 16), square)


def test_center_and_flip_views():
  image = np.random.default_rng(3).integers(0, 256, (20, 24, 3), np.uint8)
  centre = transforms.center_crop_arr(image, 16)
  np.testing.assert_array_equal(codes.make_views(image, 'center', 16), centre[None])
  flip = codes.make_views(image, 'flip', 16, crop_range=1.1)
  np.testing.assert_array_equal(flip, np.stack([centre, centre[:, ::-1]]))
  with pytest.raises(ValueError, match='views'):
    codes.make_views(image, 'five_crop', 16)


# -- format and metadata ---------------------------------------------------------


def test_written_records_and_metadata(codes_dir):
  meta = codes.read_metadata(codes_dir)
  assert (meta.tokenizer, meta.code_shape, meta.vocab_size, meta.num_classes) == (
      'titok', (4,), VOCAB, 10)
  assert (meta.num_views, meta.seq_len, meta.center_view, meta.dtype) == (10, 4, 4, 'int16')
  assert meta.num_records('train') == NUM_TRAIN and meta.num_records('validation') == NUM_VAL
  assert [s['num_records'] for s in meta.splits['train']['shards']] == [16, 16, 8]
  source = codes.CodeSource(codes_dir, 'train')
  record = source[21]
  np.testing.assert_array_equal(record['codes'], _record_codes(21, 10))
  assert (record['label'], record['index']) == (1, 21)
  assert source.locate(21) == (os.path.join(codes_dir, 'train-00001.array_record'), 5)


def test_int32_codes_for_large_vocabularies(tmp_path):
  meta = codes.CodeMetadata(tokenizer='vqgan', code_shape=(np.int64(2), 2),
                            vocab_size=np.int64(40_000), num_classes=0)
  assert meta.dtype == 'int32' and meta.seq_len == 4
  grid = np.array([[[0, 39_999], [12_345, 7]]])
  with codes.CodeDatasetWriter(str(tmp_path), meta) as writer:
    writer.add(grid, 0)
  np.testing.assert_array_equal(codes.CodeSource(str(tmp_path), 'train')[0]['codes'], grid)


def test_writer_rejects_bad_records_and_existing_splits(codes_dir, tmp_path):
  meta = codes.read_metadata(codes_dir)
  with codes.CodeDatasetWriter(str(tmp_path), meta, split='x') as writer:
    with pytest.raises(ValueError, match=r'shape \(10, 4\)'):
      writer.add(np.zeros((9, 4), int), 0)
    with pytest.raises(ValueError, match=r'\[0, 50\)'):
      writer.add(np.full((10, 4), VOCAB), 0)
    with pytest.raises(ValueError, match='label 10'):
      writer.add(np.zeros((10, 4), int), 10)
    with pytest.raises(ValueError, match='caption_dim=0'):
      writer.add(np.zeros((10, 4), int), 0, caption_emb=np.zeros((2, 3)))
  with pytest.raises(FileExistsError, match="split 'train'"):
    codes.CodeDatasetWriter(codes_dir, meta, split='train')
  other = codes.CodeMetadata(tokenizer='titok', code_shape=(8,), vocab_size=VOCAB,
                             num_classes=10)
  with pytest.raises(ValueError, match='code_shape'):
    codes.CodeDatasetWriter(codes_dir, other, split='test')
  centre_only = codes.CodeMetadata(tokenizer='titok', code_shape=(4,), vocab_size=VOCAB,
                                   num_classes=10, views='center', image_size=16)
  with pytest.raises(ValueError, match="split 'test' does not match .*views 'center' vs "
                     "'ten_crop'"):
    codes.CodeDatasetWriter(codes_dir, centre_only, split='test')


def _with_metadata(src, dst, edit):
  shutil.copytree(src, dst)
  path = os.path.join(dst, codes.METADATA_FILE)
  with open(path) as f:
    fields = json.load(f)
  edit(fields)
  with open(path, 'w') as f:
    json.dump(fields, f)
  return str(dst)


@pytest.mark.parametrize('edit,match', [
    (lambda m: m.pop('vocab_size'), r"missing field\(s\) \['vocab_size'\]"),
    (lambda m: m.update(vocab_size=-3), "field 'vocab_size' is -3; expected a positive int"),
    (lambda m: m.update(tokenizer='vae'), "field 'tokenizer' is 'vae'"),
    (lambda m: m.update(num_views=3), "field 'num_views' is 3; expected 10"),
    (lambda m: m.update(code_shape=[]), "field 'code_shape'"),
    (lambda m: m.update(dtype='int16', vocab_size=70_000), "field 'dtype'"),
    (lambda m: m['splits']['train'].update(num_records=41), "split 'train'"),
    (lambda m: m.update(colour='red'), r"unknown field\(s\) \['colour'\]"),
])
def test_metadata_errors_name_the_file_and_field(codes_dir, tmp_path, edit, match):
  path = _with_metadata(codes_dir, tmp_path / 'bad', edit)
  with pytest.raises(ValueError, match=match) as info:
    codes.read_metadata(path)
  assert os.path.join(path, 'metadata.json') in str(info.value)


def test_shard_files_must_match_the_metadata(codes_dir, tmp_path):
  path = shutil.copytree(codes_dir, tmp_path / 'changed')
  shutil.copy(path / 'train-00002.array_record', path / 'train-00001.array_record')
  with pytest.raises(ValueError, match='hold 32 records but .*metadata.json lists 40'):
    codes.CodeSource(str(path), 'train')
  os.remove(path / 'train-00001.array_record')
  with pytest.raises(FileNotFoundError, match='train-00001.array_record'):
    codes.CodeSource(str(path), 'train')
  with pytest.raises(ValueError, match=r"no split 'test'; it has \['train', 'validation'\]"):
    codes.CodeSource(str(path), 'test')


def test_missing_or_invalid_metadata_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='metadata.json not found'):
    codes.read_metadata(str(tmp_path))
  (tmp_path / 'metadata.json').write_text('{"tokenizer": ')
  with pytest.raises(ValueError, match='metadata.json: not valid JSON'):
    codes.read_metadata(str(tmp_path))
  with pytest.raises(ValueError, match='config.data.dir is empty'):
    _train(_config(''))


# -- the training pipeline -----------------------------------------------------


def _record_and_view(batch):
  return [(int(c[0]), int(c[1])) for c in batch['codes']]


def test_train_batches_shapes_dtypes_and_one_view_per_record(codes_dir):
  iterator = iter(_train(_config(codes_dir)))
  batches = take_batches(iterator, 10)  # Two epochs.
  batch = batches[0]
  assert set(batch) == {'codes', 'labels'}
  assert batch['codes'].shape == (8, 4) and batch['codes'].dtype == np.int32
  assert batch['labels'].shape == (8,) and batch['labels'].dtype == np.int32
  seen = [rv for b in batches for rv in _record_and_view(b)]
  for b in batches:
    np.testing.assert_array_equal(b['labels'], b['codes'][:, 2])
  assert sorted(r for r, _ in seen[:NUM_TRAIN]) == list(range(NUM_TRAIN))
  assert len({v for _, v in seen}) > 5  # Random views, not a fixed one.
  assert [v for _, v in seen[:NUM_TRAIN]] != [v for _, v in seen[NUM_TRAIN:]]
  assert iterator.stats() == {'num_corrupt_records': 0}


def test_order_and_views_are_a_function_of_the_seed(codes_dir):
  config = _config(codes_dir)
  first = take_batches(iter(_train(config, seed=1)), 5)
  assert_same_batches(first, take_batches(iter(_train(config, seed=1)), 5))
  other = take_batches(iter(_train(config, seed=2)), 5)
  assert any(not np.array_equal(a['codes'], b['codes']) for a, b in zip(first, other))


def test_set_state_resumes_with_identical_batches(codes_dir):
  iterator = iter(_train(_config(codes_dir)))
  take_batches(iterator, 3)
  state = iterator.get_state()
  expected = take_batches(iterator, 4)
  restored = iter(_train(_config(codes_dir)))
  restored.set_state(state)
  assert_same_batches(take_batches(restored, 4), expected)


def test_processes_read_disjoint_records(codes_dir):
  seen = []
  for process_index in range(2):
    iterator = iter(_train(_config(codes_dir), batch=20, process_index=process_index,
                           process_count=2))
    batches = take_batches(iterator, 2)
    assert batches[0]['codes'].shape == (10, 4)
    seen.append({r for b in batches for r, _ in _record_and_view(b)})
  assert len(seen[0]) == len(seen[1]) == NUM_TRAIN // 2
  assert not seen[0] & seen[1]


def test_eval_is_one_padded_pass_of_centre_views(codes_dir):
  ds = codes.create_code_dataset(_config(codes_dir), split='validation',
                                 global_batch_size=4, seed=0, train=False,
                                 process_index=0, process_count=1)
  batches = list(ds)
  assert len(batches) == 3
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(12) < NUM_VAL)
  rv = [rv for b in batches for rv in _record_and_view(b)]
  assert rv[:NUM_VAL] == [(i, 4) for i in range(NUM_VAL)]


def test_extra_dirs_are_chosen_with_extra_prob(codes_dir, tmp_path):
  extra = _write(tmp_path / 'extra', marker=1)
  config = _config(codes_dir, extra_dirs=(extra,), extra_prob=0.5)
  markers = np.concatenate([b['codes'][:, 3] for b in take_batches(iter(_train(config)), 20)])
  assert 0.3 < markers.mean() < 0.7
  config.extra_prob = 0.0
  markers = np.concatenate([b['codes'][:, 3] for b in take_batches(iter(_train(config)), 5)])
  assert not markers.any()
  # Eval reads `dir` only.
  ds = codes.create_code_dataset(config, split='validation', global_batch_size=10,
                                 seed=0, train=False, process_index=0, process_count=1)
  assert not next(iter(ds))['codes'][:, 3].any()

  short = _write(tmp_path / 'short', num_train=NUM_TRAIN - 1)
  with pytest.raises(ValueError, match='same images'):
    _train(_config(codes_dir, extra_dirs=(short,)))
  other = tmp_path / 'other'
  meta = codes.CodeMetadata(tokenizer='titok', code_shape=(4,), vocab_size=64,
                            num_classes=10)
  with codes.CodeDatasetWriter(str(other), meta) as writer:
    writer.add(np.zeros((1, 4), int), 0)
  with pytest.raises(ValueError, match='vocab_size 64 vs 50'):
    _train(_config(codes_dir, extra_dirs=(str(other),)))


def test_captions_are_left_padded(tmp_path):
  path = _write(tmp_path / 'captions', views='flip', caption_dim=3, caption_length=5)
  ds = codes.create_code_dataset(_config(path), split='train', global_batch_size=8,
                                 seed=0, train=True, process_index=0, process_count=1)
  batch = next(iter(ds))
  assert batch['caption_emb'].shape == (8, 5, 3) and batch['caption_emb'].dtype == np.float32
  assert batch['caption_mask'].shape == (8, 5) and batch['caption_mask'].dtype == np.int32
  for codes_row, emb, mask in zip(batch['codes'], batch['caption_emb'], batch['caption_mask']):
    index = codes_row[0]
    real = index % 4
    np.testing.assert_array_equal(mask, np.arange(5) >= 5 - real)
    np.testing.assert_array_equal(emb[mask == 0], 0)
    np.testing.assert_array_equal(emb[mask == 1], index + 1)
  assert {int(v) for v in batch['codes'][:, 1]} <= {0, 1}


def _corrupt_copy(src, dst, bad_records, split='train'):
  """Copy of `src` whose first `split` shard has truncated `bad_records`."""
  shutil.copytree(src, dst)
  source = codes.CodeSource(src, split)
  shard, _ = source.locate(0)
  size = codes.read_metadata(src).splits[split]['shards'][0]['num_records']
  records = [source._source[i] for i in range(size)]  # pylint: disable=protected-access
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(dst, os.path.basename(shard)), 'group_size:1')
  for i, data in enumerate(records):
    writer.write(data[:-3] if i in bad_records else data)
  writer.close()
  return str(dst)


def test_corrupt_records_are_skipped_counted_and_restored(codes_dir, tmp_path, caplog):
  path = _corrupt_copy(codes_dir, tmp_path / 'corrupt', bad_records={3, 7})
  iterator = iter(_train(_config(path)))
  batches = take_batches(iterator, 10)  # Just over two epochs of 38 good records.
  seen = {r for b in batches for r, _ in _record_and_view(b)}
  assert seen == set(range(NUM_TRAIN)) - {3, 7}
  assert iterator.stats()['num_corrupt_records'] >= 4
  assert 'Corrupt record 3' in caplog.text and 'train-00000.array_record' in caplog.text

  state = iterator.get_state()
  expected = take_batches(iterator, 3)
  restored = iter(_train(_config(path)))
  restored.set_state(state)
  assert_same_batches(take_batches(restored, 3), expected)
  assert restored.stats() == iterator.stats()


def test_too_many_corrupt_records_raise_naming_the_dataset(codes_dir, tmp_path):
  path = _corrupt_copy(codes_dir, tmp_path / 'corrupt', bad_records={1, 2, 3})
  iterator = iter(_train(_config(path, max_corrupt_records=2)))
  with pytest.raises(pipeline.TooManyCorruptRecordsError,
                     match=f'code dataset {path} split .train.*max_corrupt_records=2'):
    take_batches(iterator, 10)


def test_damaged_and_empty_shards_are_named(codes_dir, tmp_path):
  path = tmp_path / 'damaged'
  shutil.copytree(codes_dir, path)
  shard, _ = codes.CodeSource(str(path), 'train').locate(0)
  with open(shard, 'r+b') as f:
    # Into the records, in the middle of the first 64 KiB block's data (the
    # rest of the block is padding).
    block = f.read(1 << 16)
    f.seek(max(i for i, byte in enumerate(block) if byte) // 2)
    f.write(b'\x5a' * 100)
  iterator = iter(_train(_config(str(path), max_corrupt_records=1000)))
  take_batches(iterator, 10)
  assert 0 < iterator.stats()['num_corrupt_records']
  with pytest.raises(pipeline.TooManyCorruptRecordsError,
                     match=r'max_corrupt_records=0; the last ones: .*' + re.escape(shard)):
    take_batches(iter(_train(_config(str(path), max_corrupt_records=0))), 10)
  open(shard, 'wb').close()
  with pytest.raises(ValueError, match=re.escape(shard) + '.*not a readable ArrayRecord shard'):
    codes.CodeSource(str(path), 'train')


def test_corrupt_eval_records_are_masked_out(codes_dir, tmp_path):
  path = _corrupt_copy(codes_dir, tmp_path / 'corrupt', bad_records={3},
                       split='validation')
  ds = codes.create_code_dataset(_config(path), split='validation', global_batch_size=5,
                                 seed=0, train=False, process_index=0, process_count=1)
  iterator = iter(ds)
  mask = np.concatenate([b['mask'] for b in iterator])
  np.testing.assert_array_equal(mask, np.arange(NUM_VAL) != 3)
  assert iterator.stats() == {'num_corrupt_records': 1}
