"""Captioner token examples, inference prompts, scene-caption parsing and caption files."""

import json
import os
import shutil

import helpers
import numpy as np
import pytest

from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import captioner_text
from vwt_jax.data.vript import formats
from vwt_jax.data.vript import schema

NUM_VISUAL = 8
MAX_LENGTH = 1024
BOS, PAD = 1, 3
_MULTI = ('multi_scene', 'multi_scene_voiceover')


@pytest.fixture(scope='module')
def root(fixtures_dir, tmp_path_factory):
  return helpers.copy_vript_root(fixtures_dir, tmp_path_factory.mktemp('vript'))


@pytest.fixture(scope='module')
def videos(root):
  return schema.load_dataset(root)


@pytest.fixture(scope='module')
def samples(videos):
  """Both stages; every video's clips as one window, so all four formats occur."""
  windows = [[c.clip_id for c in v.clips] for v in videos]
  found = [s for stage in formats.STAGES for s in formats.build_samples(
      videos, stage=stage, seed=0, official_filters=False, windows=windows)]
  assert {s.format for s in found} == set(formats.FORMATS)
  return found


@pytest.fixture(scope='module')
def tokenizer(videos, samples):
  texts = [t for v in videos for c in v.clips for t in (c.caption.content, c.caption.scene_title)]
  texts += [t for s in samples for t in (s.model_input, s.model_target)]
  return text_tokenizer.train_tokenizer(texts, vocab_size=600)


def _ids(tokenizer, text):
  return tokenizer.encode(text, add_special_tokens=False).ids


def test_encode_example_masks_exactly_the_answer(samples, tokenizer):
  for s in samples:
    ex = captioner_text.encode_example(s.model_input, s.model_target, tokenizer,
                                       num_visual_tokens=NUM_VISUAL, max_length=MAX_LENGTH)
    assert {k: (v.dtype, v.shape) for k, v in ex.items()} == {
        'ids': (np.int32, (MAX_LENGTH,)), 'visual': (bool, (MAX_LENGTH,)),
        'targets': (np.int32, (MAX_LENGTH,)), 'loss_mask': (bool, (MAX_LENGTH,)),
        'attention': (bool, (MAX_LENGTH,))}
    prompt_ids = _ids(tokenizer, s.model_input[len('<ImageHere>'):])
    answer_ids = _ids(tokenizer, s.model_target)
    start = NUM_VISUAL + 1 + len(prompt_ids)
    end = start + len(answer_ids)
    assert end < MAX_LENGTH
    # '<ImageHere>' opens every Vriptor input: the visual slots come first,
    # then '<s>' and the question, as ST-LLM lays them out.
    np.testing.assert_array_equal(np.flatnonzero(ex['visual']), np.arange(NUM_VISUAL))
    assert (ex['ids'][:NUM_VISUAL] == PAD).all() and ex['ids'][NUM_VISUAL] == BOS
    assert ex['ids'][NUM_VISUAL + 1:start].tolist() == prompt_ids
    assert tokenizer.decode(prompt_ids) == s.model_input[len('<ImageHere>'):]
    assert ex['ids'][start:end].tolist() == answer_ids and (ex['ids'][end:] == PAD).all()
    np.testing.assert_array_equal(ex['targets'][:-1], ex['ids'][1:])
    # The loss covers the answer tokens, the '###' end symbol included, and
    # nothing else.
    np.testing.assert_array_equal(np.flatnonzero(ex['loss_mask']), np.arange(start - 1, end - 1))
    assert tokenizer.decode(ex['targets'][ex['loss_mask']].tolist()) == s.model_target
    np.testing.assert_array_equal(ex['attention'], np.arange(MAX_LENGTH) < end)


def test_truncation_keeps_the_answer_start(samples, tokenizer):
  s = max(samples, key=lambda s: len(s.model_target))
  full = captioner_text.encode_example(s.model_input, s.model_target, tokenizer,
                                       num_visual_tokens=NUM_VISUAL, max_length=MAX_LENGTH)
  start = int(np.argmax(full['loss_mask'])) + 1
  answer_ids = _ids(tokenizer, s.model_target)
  for kwargs, kept in ((dict(max_length=start + 7), 7),
                       (dict(max_length=MAX_LENGTH, max_answer_length=5), 5)):
    ex = captioner_text.encode_example(s.model_input, s.model_target, tokenizer,
                                       num_visual_tokens=NUM_VISUAL, **kwargs)
    assert ex['targets'][ex['loss_mask']].tolist() == answer_ids[:kept]
    assert ex['attention'].sum() == start + kept
    text = tokenizer.decode(answer_ids[:kept])
    assert s.model_target.startswith(text) and not text.endswith('###')
  with pytest.raises(ValueError, match=f'takes {start} of max_length={start}'):
    captioner_text.encode_example(s.model_input, s.model_target, tokenizer,
                                  num_visual_tokens=NUM_VISUAL, max_length=start)


def test_text_before_the_placeholder_and_bos_choice(tokenizer):
  ex = captioner_text.encode_example('System. <ImageHere>Q: ', 'A cat.###', tokenizer,
                                     num_visual_tokens=3, max_length=40, bos=False)
  before = _ids(tokenizer, 'System. ')
  np.testing.assert_array_equal(np.flatnonzero(ex['visual']), len(before) + np.arange(3))
  assert ex['ids'][:len(before)].tolist() == before
  after = _ids(tokenizer, 'Q: ')
  assert ex['ids'][len(before) + 3:len(before) + 3 + len(after)].tolist() == after
  ex = captioner_text.encode_example('<ImageHere>Q', 'A', tokenizer, num_visual_tokens=2,
                                     max_length=8, bos_token='</s>')
  assert ex['ids'][2] == 2  # the bos Vriptor was trained with
  # An empty answer lays out the prompt alone, for generation.
  ex = captioner_text.encode_example('<ImageHere>Q', '', tokenizer, num_visual_tokens=2,
                                     max_length=8)
  assert ex['attention'].sum() == 3 + len(_ids(tokenizer, 'Q')) and not ex['loss_mask'].any()


def test_encode_example_errors(tokenizer):
  for text in ('no placeholder', '<ImageHere><ImageHere>'):
    with pytest.raises(ValueError, match='should hold one <ImageHere>'):
      captioner_text.encode_example(text, 'a', tokenizer, num_visual_tokens=2, max_length=16)
  with pytest.raises(ValueError, match=r"'\[PAD\]' is not in the tokenizer"):
    captioner_text.encode_example('<ImageHere>', 'a', tokenizer, num_visual_tokens=2,
                                  max_length=16, pad_token='[PAD]')


def test_encode_batch_of_pipeline_strings(samples, tokenizer):
  batch = {'model_input': np.array([samples[0].model_input, '']),
           'model_target': np.array([samples[0].model_target, '']),
           'mask': np.array([True, False])}
  out = captioner_text.encode_batch(batch, tokenizer, num_visual_tokens=NUM_VISUAL,
                                    max_length=256)
  one = captioner_text.encode_example(samples[0].model_input, samples[0].model_target, tokenizer,
                                      num_visual_tokens=NUM_VISUAL, max_length=256)
  for key, value in one.items():
    assert out[key].shape == (2, 256)
    np.testing.assert_array_equal(out[key][0], value)
  # A masked-out row: visual slots only, attended, no loss.
  assert out['visual'][1].sum() == NUM_VISUAL and out['visual'][1][:NUM_VISUAL].all()
  np.testing.assert_array_equal(out['attention'][1], out['visual'][1])
  assert not out['loss_mask'][1].any() and (out['ids'][1] == PAD).all()


def _shifted_voiceover(clips, stage):
  """Window voice-over segments as the concat builder offsets them (formats.py)."""
  segments, offset = [], 0.0
  for clip in clips:
    merged = clip.asr.segments
    if stage == 'stage2':
      merged = formats.merge_voiceovers(merged)
    segments += [(seg.start + offset, seg.end + offset, seg.text) for seg in merged]
    if merged:
      offset = segments[-1][1]
  return segments


def _prompt_for(fmt, stage, clips):
  if fmt in _MULTI:
    duration = sum(c.asr.duration for c in clips)
    lines = _shifted_voiceover(clips, stage)
  else:
    duration = formats.single_text(clips[0]).duration
    lines = clips[0].asr.segments
  return captioner_text.caption_prompt(fmt, duration, stage=stage,
                                       voiceover_lines=lines if 'voiceover' in fmt else None)


def test_caption_prompt_equals_training_prompt(samples, videos, fixtures_dir):
  clips = {c.clip_id: c for v in videos for c in v.clips}
  for s in samples:
    prompt = _prompt_for(s.format, s.stage, [clips[c] for c in s.clip_ids])
    assert prompt == s.prompt and formats.model_input(prompt) == s.model_input
  # And the official builders' own output.
  with open(os.path.join(fixtures_dir, 'vript', 'formats.json'), encoding='utf-8') as f:
    official = json.load(f)['formats']
  for fmt, by_stage in official.items():
    for stage, entry in by_stage.items():
      prompt = _prompt_for(fmt, stage, [clips[c] for c in entry['clip_ids']])
      assert prompt == entry['prompt'] and formats.model_input(prompt) == entry['model_input']


def test_caption_prompt_errors():
  with pytest.raises(ValueError, match='format should be one of'):
    captioner_text.caption_prompt('dense', 3.0)
  with pytest.raises(ValueError, match='stage should be one of'):
    captioner_text.caption_prompt('single_scene', 3.0, stage='stage3')
  with pytest.raises(ValueError, match="'multi_scene' takes no voice-over lines, got 1"):
    captioner_text.caption_prompt('multi_scene', 3.0, voiceover_lines=[(0.0, 1.0, 'hi')])
  with pytest.raises(ValueError, match="'single_scene_voiceover' takes voice-over lines, got 0"):
    captioner_text.caption_prompt('single_scene_voiceover', 3.0)


_QFORMER_REQUESTS = {
    'single_scene': 'describe the video in detail ',
    'single_scene_voiceover': 'describe the video in detail ',
    'multi_scene': 'describe the video scene by scene in detail ',
    'multi_scene_voiceover': 'describe the video scene by scene in detail ',
}


def test_qformer_instruction_of_every_training_format(samples, fixtures_dir):
  with open(os.path.join(fixtures_dir, 'vript', 'formats.json'), encoding='utf-8') as f:
    official = json.load(f)['formats']
  cases = [(s.format, s.prompt, s.model_input) for s in samples] + [
      (fmt, entry['prompt'], entry['model_input'])
      for fmt, by_stage in official.items() for entry in by_stage.values()]
  assert {fmt for fmt, _, _ in cases} == set(formats.FORMATS)
  for fmt, prompt, model_input in cases:
    text = captioner_text.qformer_instruction(model_input)
    # The request and its timing, the prompt's tail, lower-cased; no voice-over.
    assert text.startswith(_QFORMER_REQUESTS[fmt]) and prompt.lower().endswith(text), fmt
    assert 'voiceover' not in text and '\n' not in text, fmt


def test_qformer_instruction_literal_prompts():
  voiceover = [(0.0, 2.5, ' She says "wait". Based on the video and voiceover, it rains'),
               (2.5, 6.0, 'Next line')]
  single = captioner_text.caption_prompt('single_scene_voiceover', 12.34,
                                         voiceover_lines=voiceover)
  expected = 'describe the video in detail (duration: [0.0, 12.3]second, sampling rate: ' \
             '0.19second/frame).'
  # The voice-over block goes up to the last closing phrase, across lines.
  assert captioner_text.qformer_instruction(formats.model_input(single)) == expected
  # The turn ends at the first ' ###', even inside a voice-over, as in ST-LLM.
  cut = captioner_text.caption_prompt('single_scene_voiceover', 6.0,
                                      voiceover_lines=[(0.0, 2.5, 'Up next ### more')])
  assert captioner_text.qformer_instruction(formats.model_input(cut)) == \
      'voiceover:"[0.0, 2.5] up next'
  multi = captioner_text.caption_prompt('multi_scene', 95.0, stage='stage2')
  expected = 'describe the video scene by scene in detail (duration: [0.0, 95.0]s, ' \
             'sampling rate: 1.48s/frame).'
  assert captioner_text.qformer_instruction(formats.model_input(multi)) == expected
  # ST-LLM's chat template has one space before '###Assistant: '.
  chat = '###Human: ' + multi + ' ###Assistant: '
  assert captioner_text.qformer_instruction(chat) == expected


def test_qformer_instruction_needs_a_human_turn():
  with pytest.raises(ValueError, match="'Human: ' turn"):
    captioner_text.qformer_instruction('<ImageHere>Describe the video.')


def _expected_scenes(clips, stage):
  records, elapsed = [], 0.0
  total = round(sum(c.asr.duration for c in clips), 1)
  for i, clip in enumerate(clips, start=1):
    start, elapsed = elapsed, elapsed + clip.asr.duration
    records.append({
        'scene': i, 'scene_title': clip.caption.scene_title,
        'start': float(formats.fmt1(start)), 'end': float(formats.fmt1(elapsed)),
        'num_scenes': len(clips) if stage == 'stage2' else None,
        'total': total if stage == 'stage2' else None, 'content': clip.caption.content})
  return records


def test_parse_scene_captions_round_trips_training_targets(samples, videos):
  clips = {c.clip_id: c for v in videos for c in v.clips}
  multi = [s for s in samples if s.format in _MULTI]
  assert {s.stage for s in multi} == set(formats.STAGES)
  for s in multi:
    expected = _expected_scenes([clips[c] for c in s.clip_ids], s.stage)
    for text in (s.model_target, s.target, s.model_target + 'Human: more'):
      problems = schema.Problems()
      assert captioner_text.parse_scene_captions(text, problems=problems) == expected
      assert not problems


def test_parse_scene_captions_tolerates_malformed_text(samples):
  s = next(s for s in samples if s.format in _MULTI and s.stage == 'stage1')
  good = captioner_text.parse_scene_captions(s.target)
  first, rest = s.target.split('\n\n[Scene 2: ', 1)
  broken = '[Scene 2 Cracking eggs](Duration: [3.6'
  text = 'Sure, here it is:\n' + first + '\n' + broken + '\n\n[Scene 2: ' + rest + '\n[Scene 9: cut'
  problems = schema.Problems()
  records = captioner_text.parse_scene_captions(text, problems=problems, source='pred.txt')
  assert [r['scene'] for r in records] == [None] + [r['scene'] for r in good]
  assert records[0]['content'] == 'Sure, here it is:'
  assert records[1]['content'] == good[0]['content'] + '\n' + broken
  assert records[-1]['content'] == good[-1]['content'] + '\n[Scene 9: cut'
  assert records[2:-1] == good[1:-1]
  assert [reason.split(':')[0] for _, reason in problems.items] == ['line 1', 'line 4', 'line 11']
  assert {path for path, _ in problems.items} == {'pred.txt'}
  # A single-scene answer has no headers: one record, nothing to report.
  problems = schema.Problems()
  assert captioner_text.parse_scene_captions('A cat sleeps.\nIt wakes.###', problems=problems) == [
      {'scene': None, 'scene_title': '', 'start': None, 'end': None, 'num_scenes': None,
       'total': None, 'content': 'A cat sleeps.\nIt wakes.'}]
  assert not problems


def test_strip_end_symbol():
  assert captioner_text.strip_end_symbol('A cat.###Human: hi###') == 'A cat.'
  assert captioner_text.strip_end_symbol('A cat.') == 'A cat.'


def _write_caption_file(root, doc):
  path = os.path.join(root, 'vript_captions', 'vript_long_videos_captions',
                      f'{doc["meta"]["video_id"]}_caption.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(doc, f)


def test_to_caption_schema_round_trips_through_load_dataset(samples, videos, root, tmp_path):
  # The fixture's own caption files are reproduced from their clips.
  for video in videos:
    records = [{'scene': c.scene, 'scene_title': c.caption.scene_title,
                'content': c.caption.content, 'shot_type': c.caption.shot_type,
                'camera_movement': c.caption.camera_movement, 'voiceover': c.voiceover}
               for c in reversed(video.clips)]
    with open(os.path.join(root, 'vript_captions', f'{video.group}_captions',
                           f'{video.video_id}_caption.json'), encoding='utf-8') as f:
      assert captioner_text.to_caption_schema(video.video_id, records, video.title) == json.load(f)
  # Generated captions of a multi-scene answer, in a copy of the captions.
  generated_root = os.path.join(tmp_path, 'root')
  shutil.copytree(os.path.join(root, 'vript_captions'),
                  os.path.join(generated_root, 'vript_captions'))
  s = next(s for s in samples if s.format in _MULTI and s.stage == 'stage2')
  records = captioner_text.parse_scene_captions(s.model_target)
  doc = captioner_text.to_caption_schema('genVid00001', records, title='Generated')
  assert doc['meta'] == {'video_id': 'genVid00001', 'video_title': 'Generated',
                         'num_clips': len(records), 'integrity': True}
  _write_caption_file(generated_root, doc)
  gaps = captioner_text.to_caption_schema('genVid00002', [records[0], records[-1]])
  assert not gaps['meta']['integrity']
  _write_caption_file(generated_root, gaps)
  problems = schema.Problems()
  loaded = {v.video_id: v for v in schema.load_dataset(generated_root, problems=problems)}
  assert set(loaded) == {v.video_id for v in videos} | {'genVid00001', 'genVid00002'}
  video = loaded['genVid00001']
  assert (video.title, video.integrity, video.has_asr) == ('Generated', True, False)
  assert [c.clip_id for c in video.clips] == [
      f'genVid00001-Scene-{i:03d}' for i in range(1, len(records) + 1)]
  assert [c.caption for c in video.clips] == [
      schema.Caption(r['content'], r['scene_title'], '', '') for r in records]
  assert [c.voiceover for c in video.clips] == [''] * len(records)
  assert [c.scene for c in loaded['genVid00002'].clips] == [1, len(records)]
  assert not loaded['genVid00002'].integrity
  with pytest.raises(ValueError, match='scene 1 appears twice'):
    captioner_text.to_caption_schema('v', [records[0], records[0]])
