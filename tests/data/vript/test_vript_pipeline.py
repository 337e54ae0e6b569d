"""create_vript_dataset on the fixture and the embedded set: batches, resume, corrupt clips."""

import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vwt_jax.data import pipeline
from vwt_jax.data.vript import pipeline as vript_pipeline
from vwt_jax.data.vript import synthetic

from helpers import absl_flags_parsed, assert_same_batches, copy_vript_root, take_batches

CLIPS = os.path.join('vript_long_videos_clips', 'kTn3bC7xQ2w')


@pytest.fixture(scope='module')
def root(fixtures_dir, tmp_path_factory):
  return copy_vript_root(fixtures_dir, tmp_path_factory.mktemp('vript'))


def _config(root, **overrides):
  config = vript_pipeline.default_vript_data_config()
  config.root = root
  # Seed 1: 9 single-clip samples plus two windows, Zp0-f9LmA_4 scenes 1-3
  # and q7Wm2xYv8Ra_0 scenes 1-2.
  config.seed = 1
  config.num_frames = 4
  config.image_size = 32
  config.num_threads = 2
  config.prefetch = 4
  config.update(overrides)
  return config


def _dataset(config, train=True, seed=0, batch=2, **kwargs):
  return vript_pipeline.create_vript_dataset(
      config, train=train, seed=seed, batch_size_per_host=batch, **kwargs)


def test_formats_batches(root):
  iterator = iter(_dataset(_config(root)))
  batch = next(iterator)
  assert set(batch) == {'frames', 'num_frames', 'prompt', 'target',
                        'model_input', 'model_target', 'clip_ids', 'format'}
  assert batch['frames'].shape == (2, 4, 32, 32, 3)
  assert batch['frames'].dtype == np.float32
  assert -1.8 < batch['frames'].min() < batch['frames'].max() < 2.15
  np.testing.assert_array_equal(batch['num_frames'], [4, 4])
  for key in ('prompt', 'target', 'model_input', 'model_target', 'clip_ids',
              'format'):
    assert batch[key].shape == (2,) and batch[key].dtype.kind == 'U'
  assert all(p.startswith('<ImageHere>###Human: ')
             for p in batch['model_input'])
  assert set(batch['format']) <= {'single_scene', 'single_scene_voiceover',
                                  'multi_scene', 'multi_scene_voiceover'}
  assert iterator.stats() == {'num_corrupt_records': 0}


def test_formats_config_selects_samples(root):
  config = _config(root, formats=('multi_scene', 'multi_scene_voiceover'))
  batch = next(iter(_dataset(config)))
  assert sorted(batch['clip_ids']) == [
      'Zp0-f9LmA_4-Scene-001,Zp0-f9LmA_4-Scene-002,Zp0-f9LmA_4-Scene-003',
      'q7Wm2xYv8Ra_0-Scene-001,q7Wm2xYv8Ra_0-Scene-002']


def test_resume_restores_the_next_batches(root):
  config = _config(root)
  iterator = iter(_dataset(config))
  first = take_batches(iterator, 2)
  state = iterator.get_state()
  expected = take_batches(iterator, 2)

  restored = iter(_dataset(config))
  restored.set_state(state)
  assert_same_batches(take_batches(restored, 2), expected)
  # The order and crops are a function of the seed.
  assert_same_batches(take_batches(iter(_dataset(config)), 2), first)
  other = take_batches(iter(_dataset(config, seed=1)), 2)
  assert any(not np.array_equal(a['frames'], b['frames'])
             for a, b in zip(first, other))


def test_processes_read_disjoint_samples(root):
  # 11 samples; 2 processes x 5 examples take 10 of the first epoch.
  config = _config(root)
  seen = []
  for process_index in range(2):
    batch = next(iter(_dataset(config, batch=5, process_index=process_index,
                               process_count=2)))
    seen.append(set(zip(batch['clip_ids'], batch['format'])))
  assert len(seen[0]) == len(seen[1]) == 5
  assert not seen[0] & seen[1]


@pytest.fixture
def corrupt_root(fixtures_dir, tmp_path):
  """A copy of the root where Scene-003 of kTn3bC7xQ2w is random bytes."""
  root = copy_vript_root(fixtures_dir, tmp_path)
  path = os.path.join(root, CLIPS, 'kTn3bC7xQ2w-Scene-003.mp4')
  with open(path, 'wb') as f:
    f.write(np.random.default_rng(0).bytes(2048))
  return root, path


def test_corrupt_clips_are_skipped_counted_and_checkpointed(corrupt_root,
                                                            caplog):
  root, path = corrupt_root
  config = _config(root)
  iterator = iter(_dataset(config))
  # Only the single-clip sample of Scene-003 uses it (the windows are
  # Zp0-f9LmA_4 1-3 and q7Wm2xYv8Ra_0 1-2): 10 batches of 2 are two epochs
  # of the 10 good samples, and the bad one is met once per epoch.
  batches = take_batches(iterator, 10)
  assert iterator.stats() == {'num_corrupt_records': 2}
  assert path in caplog.text and 'skipped' in caplog.text
  ids = {i for b in batches for i in b['clip_ids']}
  assert 'kTn3bC7xQ2w-Scene-003' not in ids
  assert len(ids) == 10

  state = iterator.get_state()
  expected = take_batches(iterator, 2)
  restored = iter(_dataset(config))
  restored.set_state(state)
  assert restored.stats() == {'num_corrupt_records': 2}
  assert_same_batches(take_batches(restored, 2), expected)


def test_too_many_corrupt_clips_raise_naming_the_file(corrupt_root):
  root, path = corrupt_root
  iterator = iter(_dataset(_config(root, max_corrupt_records=0)))
  with pytest.raises(pipeline.TooManyCorruptRecordsError,
                     match=r'max_corrupt_records=0; the last ones: ') as e:
    take_batches(iterator, 11)
  assert str(e.value).endswith(path)


def test_missing_clip_is_masked_in_evaluation(fixtures_dir, tmp_path):
  root = copy_vript_root(fixtures_dir, tmp_path)
  path = os.path.join(root, CLIPS, 'kTn3bC7xQ2w-Scene-004.mp4')
  os.remove(path)
  iterator = iter(_dataset(_config(root, view='keyframes'), train=False,
                           batch=4))
  batches = list(iterator)
  # 8 clips left with an mp4 (the keyframe view drops the missing one), one
  # pass padded to 2 batches of 4.
  assert len(batches) == 2
  assert sum(int(b['mask'].sum()) for b in batches) == 8
  assert iterator.stats() == {'num_corrupt_records': 0}

  # The formats view keeps the sample and masks it out.
  config = _config(root, formats=('single_scene', 'single_scene_voiceover'))
  iterator = iter(_dataset(config, train=False, batch=3))
  batches = list(iterator)
  mask = np.concatenate([b['mask'] for b in batches])
  clip_ids = np.concatenate([b['clip_ids'] for b in batches])
  assert mask.tolist() == [True] * 6 + [False] + [True] * 2
  assert clip_ids[6] == ''
  assert iterator.stats() == {'num_corrupt_records': 1}


def test_keyframe_view(root):
  config = _config(root, view='keyframes')
  batches = list(iter(_dataset(config, train=False, batch=4)))
  assert len(batches) == 3
  batch = batches[0]
  assert set(batch) == {'image', 'caption', 'scene_title', 'clip_id', 'mask'}
  assert batch['image'].shape == (4, 32, 32, 3)
  assert batch['image'].dtype == np.uint8
  assert batch['clip_id'].tolist() == [
      'Zp0-f9LmA_4-Scene-001', 'Zp0-f9LmA_4-Scene-002',
      'Zp0-f9LmA_4-Scene-003', 'kTn3bC7xQ2w-Scene-001']
  assert batch['scene_title'][0] == 'Golden Hour over the Harbor'
  assert batch['caption'][0].startswith('An aerial view shows a small coastal')
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.tolist() == [True] * 9 + [False] * 3


def test_worker_processes_give_the_in_process_batches(root):
  with absl_flags_parsed():
    config = _config(root, view='keyframes', keyframe='rand')
    expected = take_batches(iter(_dataset(config)), 2)
    config.num_workers = 1
    iterator = iter(_dataset(config))
    try:
      assert_same_batches(take_batches(iterator, 2), expected)
    finally:
      iterator.close()


@pytest.mark.parametrize('field, value, match', [
    ('view', 'clips', 'view'),
    ('formats', ('single',), 'formats'),
    ('root', '', 'root'),
])
def test_bad_config(root, field, value, match):
  config = _config(root)
  config[field] = value
  with pytest.raises(ValueError, match=match):
    _dataset(config)


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('vript_synthetic') / 'root')
  synthetic.generate(root, num_long_videos=3, num_short_videos=1,
                     scenes_per_video=(2, 3), frames_per_scene=(8, 12), seed=5)
  return root


@pytest.mark.parametrize('view', vript_pipeline.VIEWS)
def test_embedded_dataset_resumes_through_an_orbax_checkpoint(synthetic_root, tmp_path,
                                                             view):
  # The trainer's path: the iterator saved beside the train state.
  config = _config(synthetic_root, view=view, seed=0)
  iterator = iter(_dataset(config, batch=3))
  take_batches(iterator, 2)
  params = {'w': np.arange(3.0)}
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(2, args=ocp.args.Composite(
        state=ocp.args.StandardSave(params),
        data_iter=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = take_batches(iterator, 3)

  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(params),
        data_iter=grain.checkpoint.CheckpointRestore(iter(_dataset(config, batch=3)))))
  assert_same_batches(take_batches(restored.data_iter, 3), expected)
  text = 'target' if view == 'formats' else 'caption'
  assert all(len(t) > 100 for batch in expected for t in batch[text])
