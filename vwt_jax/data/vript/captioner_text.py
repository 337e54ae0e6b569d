"""Token-level Vriptor captioner examples, inference prompts and caption parsing.

Training (`encode_example`, `encode_batch`): the 'formats' view of
`pipeline.create_vript_dataset` gives `model_input`
('<ImageHere>###Human: {prompt}  ###Assistant: ') and `model_target`
('{target}###'). An example is laid out as ST-LLM's `STLLMModel.forward`
(vriptor/stllm/models/st_llm.py, `qformer_text_input: True` as in the Vriptor
configs) lays out its embeddings:

  [text before <ImageHere>] [visual x N] [<s>] [text after <ImageHere>] [answer] [pad ...]

ST-LLM tokenizes the text before the placeholder without special tokens and
the text after it with them, so '<s>' follows the visual tokens; the answer
is tokenized on its own (its first word gets the '▁' prefix) and only its
tokens carry loss (ST-LLM sets every other label to -100).

Differences from ST-LLM:
- Fixed length: every example is padded to `max_length` (one static batch
  shape); ST-LLM pads to the longest in the batch.
- Truncation: as ST-LLM's `max_txt_len` (1024 at stage 1, 4096 at stage 2),
  the answer keeps its beginning, cut to `max_answer_length` and to whatever
  `max_length` leaves after the input; an input that leaves no room raises.
- End symbol: with `qformer_text_input: True` ST-LLM appends eos '</s>' to the
  answer instead of the configs' `end_sym: '###'` (and remaps '<s>' to
  '</s>'). Inference stops on '###' (ST-LLM's `Chat`), so the pipeline's
  `model_target`, ending in '###', is what is trained here; the bos token is
  an argument.

Inference: `caption_prompt` builds a format's prompt exactly as `formats`
does for training (the official demo rounds otherwise, says 'Sample Rate' and
puts one space before '###Assistant: ');
`encode_example(model_input, '', ...)` lays out the prompt alone.
`parse_scene_captions` and `to_caption_schema` turn a generated multi-scene
answer back into Vript's `_caption.json` structure.

Q-Former text: with `qformer_text_input` ST-LLM also feeds the instruction to
its Q-Former (`models.qformer`); `qformer_instruction` derives that text from
a `model_input` as `STLLMModel.forward` does.
"""

import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tokenizers

from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import formats
from vwt_jax.data.vript import schema

IMAGE_PLACEHOLDER = '<ImageHere>'
END_SYMBOL = '###'
_NUMBER = r'(\d+(?:\.\d+)?)'
# '[Scene i: title](Duration: [a, b])' or, at stage 2,
# '[Scene i/L: title](Duration: [a, b]/Ts)'.
_SCENE_HEADER = re.compile(
    r'\[Scene (\d+)(?:/(\d+))?: (.*)\]\(Duration: \[' + _NUMBER + r', ' + _NUMBER + r'\]'
    r'(?:/' + _NUMBER + r's)?\)')
_HEADER_START = '[Scene'

VoiceoverSegment = Union[schema.AsrSegment, tuple[float, float, str]]


def _encode(tokenizer: tokenizers.Tokenizer, text: str) -> list[int]:
  return tokenizer.encode(text, add_special_tokens=False).ids if text else []


def encode_example(model_input: str, model_target: str, tokenizer: tokenizers.Tokenizer, *,
                   num_visual_tokens: int, max_length: int, bos: bool = True,
                   bos_token: str = '<s>', pad_token: str = '<pad>',
                   max_answer_length: Optional[int] = None) -> dict[str, np.ndarray]:
  """One captioner example as fixed-length arrays (layout in the module docstring).

  Args:
    model_input: the question with one '<ImageHere>' where the visual tokens go.
    model_target: the answer, end symbol included; all of it carries loss.
    tokenizer: e.g. from `text_tokenizer.load_tokenizer`.
    num_visual_tokens: slots reserved for the projected frame features.
    max_length: length of every array.
    bos: put `bos_token` right after the visual slots, as ST-LLM does.
    bos_token: '<s>'; ST-LLM remaps bos to '</s>', so Vriptor was trained
      with '</s>' here.
    pad_token: fills the visual slots, the padding and the last target; a
      Vicuna tokenizer has no '<pad>' (ST-LLM adds '[PAD]').
    max_answer_length: ST-LLM's `max_txt_len`: the answer keeps at most this
      many tokens, whatever room is left.

  Returns:
    'ids' int32: token ids, `pad_token` at the visual slots and the padding.
    'visual' bool: the `num_visual_tokens` slots of '<ImageHere>'.
    'targets' int32: ids shifted left (the token each position predicts).
    'loss_mask' bool: True where the target is an answer token.
    'attention' bool: True up to the last answer token.

  Raises:
    ValueError: model_input has no or several '<ImageHere>', or leaves no room
      for an answer token in max_length.
  """
  if model_input.count(IMAGE_PLACEHOLDER) != 1:
    raise ValueError(f'model_input should hold one {IMAGE_PLACEHOLDER}, got '
                     f'{model_input.count(IMAGE_PLACEHOLDER)}: {model_input[:80]!r}')
  pad = text_tokenizer.special_id(tokenizer, pad_token)
  before, after = model_input.split(IMAGE_PLACEHOLDER)
  before_ids = _encode(tokenizer, before)
  after_ids = ([text_tokenizer.special_id(tokenizer, bos_token)] if bos else []) + _encode(
      tokenizer, after)
  answer_ids = _encode(tokenizer, model_target)
  visual_start = len(before_ids)
  answer_start = visual_start + num_visual_tokens + len(after_ids)
  if answer_start >= max_length:
    raise ValueError(
        f'the input takes {answer_start} of max_length={max_length} positions '
        f'({len(before_ids)} + {num_visual_tokens} visual + {len(after_ids)} tokens), leaving '
        f'no room for the answer: raise max_length or shorten the prompt')
  answer_ids = answer_ids[:max_answer_length][:max_length - answer_start]
  end = answer_start + len(answer_ids)
  ids = np.full((max_length,), pad, np.int32)
  ids[:visual_start] = before_ids
  ids[answer_start - len(after_ids):answer_start] = after_ids
  ids[answer_start:end] = answer_ids
  visual = np.zeros((max_length,), bool)
  visual[visual_start:visual_start + num_visual_tokens] = True
  answer = np.zeros((max_length,), bool)
  answer[answer_start:end] = True
  targets = np.full((max_length,), pad, np.int32)
  targets[:-1] = ids[1:]
  loss_mask = np.zeros((max_length,), bool)
  loss_mask[:-1] = answer[1:]
  attention = np.zeros((max_length,), bool)
  attention[:end] = True
  return {'ids': ids, 'visual': visual, 'targets': targets, 'loss_mask': loss_mask,
          'attention': attention}


def _padding_example(pad: int, num_visual_tokens: int, max_length: int) -> dict[str, np.ndarray]:
  """A masked-out batch row: visual slots only (attended, so no row is all
  masked), no text, no loss."""
  visual = np.zeros((max_length,), bool)
  visual[:num_visual_tokens] = True
  return {'ids': np.full((max_length,), pad, np.int32), 'visual': visual,
          'targets': np.full((max_length,), pad, np.int32),
          'loss_mask': np.zeros((max_length,), bool), 'attention': visual.copy()}


def encode_batch(batch: Mapping[str, Any], tokenizer: tokenizers.Tokenizer, *,
                 num_visual_tokens: int, max_length: int, bos: bool = True,
                 bos_token: str = '<s>', pad_token: str = '<pad>',
                 max_answer_length: Optional[int] = None) -> dict[str, np.ndarray]:
  """`encode_example` over a pipeline batch, stacked to (B, max_length) arrays.

  Args:
    batch: with 'model_input' and 'model_target' (numpy str arrays (B,)) and,
      in evaluation, 'mask' (B,): rows with mask False are padding; they get
      the visual slots at the start, no text and no loss, so that every row
      has exactly `num_visual_tokens` visual slots.
    tokenizer, num_visual_tokens, max_length, bos, bos_token, pad_token,
    max_answer_length: as `encode_example`.
  """
  inputs, targets = batch['model_input'], batch['model_target']
  mask = batch.get('mask')
  pad = text_tokenizer.special_id(tokenizer, pad_token)
  rows = []
  for i in range(len(inputs)):
    if mask is not None and not mask[i]:
      rows.append(_padding_example(pad, num_visual_tokens, max_length))
    else:
      rows.append(encode_example(
          str(inputs[i]), str(targets[i]), tokenizer, num_visual_tokens=num_visual_tokens,
          max_length=max_length, bos=bos, bos_token=bos_token, pad_token=pad_token,
          max_answer_length=max_answer_length))
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _segment(seg: VoiceoverSegment) -> tuple[float, float, str]:
  if isinstance(seg, schema.AsrSegment):
    return seg.start, seg.end, seg.text
  start, end, text = seg
  return start, end, text


def caption_prompt(  # pylint: disable=redefined-builtin
    format: str, duration: float, *, stage: str = 'stage1',
    voiceover_lines: Optional[Sequence[VoiceoverSegment]] = None) -> str:
  """The prompt of `format` for a video of `duration` seconds, as in training.

  Wrap it with `formats.model_input` for the model. The duration is printed
  rounded to 0.1 s and the sampling rate derived from that, as the builders do.

  Args:
    format: one of `formats.FORMATS`.
    duration: seconds of video (a multi-scene window: its total).
    stage: 'stage1' ('second' units) or 'stage2' ('s').
    voiceover_lines: (start, end, text) per ASR segment (or
      `schema.AsrSegment`s), seconds from the start of the video, for the
      voice-over formats; one prompt line each. Stage-2 multi-scene training
      prompts merged each clip's segments with `formats.merge_voiceovers`.

  Raises:
    ValueError: unknown format or stage, voice-over lines given to a format
      without voice-over, or none to one with it.
  """
  if format not in formats.REQUESTS:
    raise ValueError(f'format should be one of {formats.FORMATS}, got {format!r}')
  if stage not in formats.STAGES:
    raise ValueError(f'stage should be one of {formats.STAGES}, got {stage!r}')
  wants = format.endswith('_voiceover')
  if wants != bool(voiceover_lines):
    takes = 'takes' if wants else 'takes no'
    raise ValueError(f'format {format!r} {takes} voice-over lines, got '
                     f'{len(voiceover_lines or ())}')
  voiceover = None
  if wants:
    voiceover = ''.join(formats.voiceover_line(*_segment(s)) for s in voiceover_lines)
  # The builders' own template keeps training and inference prompts identical.
  return formats.request_prompt(format, stage, round(float(duration), 1), voiceover)


# What `STLLMModel.forward` cuts the Q-Former's text at and removes from it:
# the human turn, its end, and a voice-over block (greedy, across lines).
_HUMAN_TURN = 'Human: '
_TURN_END = ' ###'
_QFORMER_VOICEOVER = re.compile(
    re.escape('Voiceover:"') + '.*' + re.escape('". Based on the video and voiceover, '),
    re.DOTALL)


def qformer_instruction(model_input: str) -> str:
  """The instruction text ST-LLM's Q-Former reads for a captioner input.

  As `STLLMModel.forward` with `qformer_text_input`: the text after the first
  'Human: ' (up to a second one, if any) and before its first ' ###', without
  the voice-over block (from 'Voiceover:"' to the last '". Based on the video
  and voiceover, '), lower-cased and stripped. So the Q-Former sees the
  request with the duration and sampling rate, never the voice-over.

  Raises:
    ValueError: `model_input` has no 'Human: ' turn.
  """
  turns = model_input.split(_HUMAN_TURN)
  if len(turns) < 2:
    raise ValueError(f'model_input should hold a {_HUMAN_TURN!r} turn, got '
                     f'{model_input[:80]!r}')
  question = turns[1].split(_TURN_END)[0]
  return _QFORMER_VOICEOVER.sub('', question).lower().strip()


def strip_end_symbol(text: str, end_symbol: str = END_SYMBOL) -> str:
  """`text` up to its first end symbol (the symbol and what follows dropped)."""
  return text.split(end_symbol, 1)[0]


def _scene_record(match: Optional[re.Match]) -> dict[str, Any]:
  if match is None:
    return {'scene': None, 'scene_title': '', 'start': None, 'end': None, 'num_scenes': None,
            'total': None, 'content': ''}
  scene, num_scenes, title, start, end, total = match.groups()
  return {'scene': int(scene), 'scene_title': title, 'start': float(start), 'end': float(end),
          'num_scenes': None if num_scenes is None else int(num_scenes),
          'total': None if total is None else float(total), 'content': ''}


def parse_scene_captions(text: str, *, problems: Optional[schema.Problems] = None,
                         source: str = 'caption') -> list[dict[str, Any]]:
  """Splits a generated multi-scene answer into scene records.

  Headers are whole lines '[Scene i: title](Duration: [a, b])' (stage 1) or
  '[Scene i/L: title](Duration: [a, b]/Ts)' (stage 2); the lines up to the
  next header are the scene's content (stripped). The end symbol and what
  follows are dropped; a missing one is fine.

  Args:
    text: the generated answer.
    problems: collects, under `source`, lines that start like a header but do
      not parse (kept as content of the scene before them) and text before
      the first header.
    source: the name problems are recorded under.

  Returns:
    Records {'scene': int, 'scene_title', 'start', 'end' (seconds, floats),
    'num_scenes', 'total' (stage-2 L and T, None at stage 1), 'content'} in
    text order. Text before the first header (all of it for a single-scene
    answer) becomes a record with scene None and empty title and times.
  """
  problems = schema.Problems() if problems is None else problems
  records, lines = [], []
  preamble_line = None

  def close():
    if records:
      records[-1]['content'] = '\n'.join(lines).strip()

  for n, line in enumerate(strip_end_symbol(text).split('\n'), start=1):
    match = _SCENE_HEADER.fullmatch(line.strip())
    if match is None:
      if line.lstrip().startswith(_HEADER_START):
        problems.add(source, f'line {n}: malformed scene header {line[:80]!r} kept as content')
      if not records and line.strip():
        preamble_line = n
        records.append(_scene_record(None))
      lines.append(line)
      continue
    if len(records) == 1 and records[0]['scene'] is None:
      problems.add(source, f'line {preamble_line}: text before the first scene header')
    close()
    records.append(_scene_record(match))
    lines = []
  close()
  return records


def to_caption_schema(video_id: str, clip_records: Sequence[Mapping[str, Any]],
                      title: str = '') -> dict[str, Any]:
  """Vript's `{video_id}_caption.json` structure for generated captions.

  Args:
    video_id: the video.
    clip_records: per clip, 'content' and optionally 'scene' (1-based number;
      default: position + 1), 'scene_title', 'shot_type', 'camera_movement'
      (default '': the captioner does not produce them) and 'voiceover' (str).
      `parse_scene_captions` records fit.
    title: the video title.

  Returns:
    {'meta': {video_id, video_title, num_clips, integrity}, 'data': {clip_id:
    {video_id, clip_id, video_title, caption: {shot_type, camera_movement,
    content, scene_title}, voiceover: [str]}}}, clips in scene order;
    integrity is True when the scenes are numbered 1..n without gaps.

  Raises:
    ValueError: two records have the same scene number (e.g. a scene-None
      record of text before the headers, numbered 1 by position: drop it).
  """
  by_scene = {}
  for i, record in enumerate(clip_records):
    scene = record.get('scene')
    scene = i + 1 if scene is None else int(scene)
    if scene in by_scene:
      raise ValueError(f'{video_id}: scene {scene} appears twice')
    by_scene[scene] = record
  data = {}
  for scene in sorted(by_scene):
    record = by_scene[scene]
    clip_id = f'{video_id}-Scene-{scene:03d}'
    data[clip_id] = {
        'video_id': video_id, 'clip_id': clip_id, 'video_title': title,
        'caption': {'shot_type': record.get('shot_type', ''),
                    'camera_movement': record.get('camera_movement', ''),
                    'content': record['content'],
                    'scene_title': record.get('scene_title', '')},
        'voiceover': [record.get('voiceover', '')]}
  meta = {'video_id': video_id, 'video_title': title, 'num_clips': len(data),
          'integrity': sorted(by_scene) == list(range(1, len(by_scene) + 1))}
  return {'meta': meta, 'data': data}
