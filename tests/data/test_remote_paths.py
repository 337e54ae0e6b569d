"""Data on gs:// (an in-memory bucket behind epath's fsspec backend): tfds
preparations, code datasets, the Vript readers and text tokenizers give what
they give locally."""

import dataclasses
import os

from etils import epath
import ml_collections
import numpy as np
import pytest
from tensorflow_datasets.core.utils import file_utils

import helpers
from vwt_jax.data import codes
from vwt_jax.data import pipeline
from vwt_jax.data import synthetic_shapes
from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import frames
from vwt_jax.data.vript import schema


def test_tfds_preparation_read_from_a_bucket(shapes_builder, data_config, bucket,
                                             array_record_on_bucket):
  # What `tfds build --publish_dir gs://b/tfds` does after preparing locally.
  file_utils.publish_data(from_data_dir=epath.Path(shapes_builder.data_dir),
                          to_data_dir=epath.Path('gs://b/tfds', shapes_builder.info.full_name))
  batches = {}
  for data_dir in (data_config.data_dir, 'gs://b/tfds'):
    config = data_config.copy_and_resolve_references()
    config.data_dir = data_dir
    dataset = pipeline.create_image_dataset(config, split='validation', global_batch_size=10,
                                            seed=0, train=False, process_index=0,
                                            process_count=1)
    batches[data_dir] = helpers.take_batches(iter(dataset), 2)
  helpers.assert_same_batches(batches['gs://b/tfds'], batches[data_config.data_dir])
  assert array_record_on_bucket.urls
  assert all(u.startswith('gs://b/tfds/synthetic_shapes/') for u in array_record_on_bucket.urls)
  with pytest.raises(ValueError, match='prepare it under a local data_dir'):
    synthetic_shapes.prepare_synthetic_shapes('gs://b/elsewhere', resolution=32)


def test_code_dataset_written_and_read_on_a_bucket(tmp_path, bucket, array_record_on_bucket):
  tokenizer_config = ml_collections.ConfigDict({'family': 'titok'})
  local, remote = [
      helpers.write_class_codes(path, 'run', tokenizer_config, num_classes=4, seq_len=8,
                                vocab=64, sizes=(('train', 24), ('validation', 8)))
      for path in (str(tmp_path / 'codes'), 'gs://b/codes')]
  assert sorted(bucket) == sorted(f'b/codes/{f}' for f in os.listdir(local))
  for name in os.listdir(local):
    with open(os.path.join(local, name), 'rb') as f:
      assert bucket[f'b/codes/{name}'] == f.read(), name
  assert codes.read_metadata(remote) == codes.read_metadata(local)

  batches = {}
  for where, path in (('local', local), ('bucket', remote)):
    config = codes.default_codes_data_config()
    config.update(dir=path, num_threads=1, prefetch=4)
    dataset = codes.create_code_dataset(config, split='train', global_batch_size=8, seed=3,
                                        train=True, process_index=0, process_count=1)
    batches[where] = helpers.take_batches(iter(dataset), 4)
  helpers.assert_same_batches(batches['bucket'], batches['local'])
  assert set(array_record_on_bucket.urls) == {'gs://b/codes/train-00000.array_record'}


def _relocated(video, old, new):
  return dataclasses.replace(video, clips=tuple(
      dataclasses.replace(c, path=c.path and c.path.replace(old, new, 1))
      for c in video.clips))


def test_vript_index_and_clips_on_a_bucket(fixtures_dir, tmp_path, bucket):
  root = helpers.copy_vript_root(fixtures_dir, tmp_path)
  # Two defects, so that the problems found are compared too.
  clips = os.path.join(root, 'vript_long_videos_clips', 'kTn3bC7xQ2w')
  os.remove(os.path.join(clips, 'kTn3bC7xQ2w-Scene-004.mp4'))
  with open(os.path.join(clips, 'kTn3bC7xQ2w_asr.jsonl'), 'a', encoding='utf-8') as f:
    f.write('{"clip_id": 3}\n')
  helpers.upload_tree(root, 'gs://b/vript')
  local_problems, remote_problems = schema.Problems(), schema.Problems()
  local = schema.load_dataset(root, problems=local_problems)
  remote = schema.load_dataset('gs://b/vript', problems=remote_problems)
  assert remote == [_relocated(v, root, 'gs://b/vript') for v in local]
  assert sum(c.path is not None for v in remote for c in v.clips) == 8
  assert len(local_problems) == 2
  assert [(p.replace('gs://b/vript', root), r) for p, r in remote_problems.items] == (
      local_problems.items)

  assert clip_source.load_videos('gs://b/vript') == remote
  (cache,) = [k for k in bucket if k.startswith(f'b/vript/{clip_source.CACHE_DIRNAME}/')]
  bucket[cache] = bucket[cache].replace(b'"integrity": true', b'"integrity": false')
  # A bucket's index is trusted as written (no tree fingerprint there).
  assert not any(v.integrity for v in clip_source.load_videos('gs://b/vript'))

  local_keyframes = clip_source.KeyframeSource(local, image_size=32)
  remote_keyframes = clip_source.KeyframeSource(remote, image_size=32)
  for i in range(3):
    a, b = local_keyframes[i], remote_keyframes[i]
    assert a['clip_id'] == b['clip_id'] and a['caption'] == b['caption']
    np.testing.assert_array_equal(a['image'], b['image'])
  clip = next(c for v in remote for c in v.clips if c.path)
  local_clip = clip.path.replace('gs://b/vript', root)
  rng = lambda: np.random.default_rng(0)
  np.testing.assert_array_equal(frames.read_clip(clip.path, 4, 'rand', rng())[0],
                                frames.read_clip(local_clip, 4, 'rand', rng())[0])
  with pytest.raises(frames.CorruptClipError, match='file not found'):
    frames.read_clip('gs://b/vript/missing.mp4', 1, 'middle')


def test_text_tokenizer_saved_and_loaded_on_a_bucket(tmp_path, bucket):
  texts = ['a red circle on a blue square', 'two green triangles', 'a ring'] * 4
  text_tokenizer.train_tokenizer(texts, vocab_size=300, path=str(tmp_path))
  text_tokenizer.train_tokenizer(texts, vocab_size=300, path='gs://b/tok')
  name = text_tokenizer.TOKENIZER_FILE
  assert bucket[f'b/tok/{name}'] == (tmp_path / name).read_bytes()
  local = text_tokenizer.load_tokenizer(str(tmp_path))
  for path in ('gs://b/tok', f'gs://b/tok/{name}'):
    remote = text_tokenizer.load_tokenizer(path)
    assert remote.encode('a green ring').ids == local.encode('a green ring').ids
  epath.Path('gs://b/other/notes.txt').write_text('')
  with pytest.raises(FileNotFoundError, match='neither'):
    text_tokenizer.load_tokenizer('gs://b/other')
