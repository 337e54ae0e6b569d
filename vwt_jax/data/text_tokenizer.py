"""Text tokenizers for the captioner: training, loading and special ids.

Everything is a `tokenizers.Tokenizer` (the Rust `tokenizers` library).

`train_tokenizer` builds a LLaMA-style SentencePiece-like BPE, not a GPT-2
byte-level one, because the captioner's decoder is a LLaMA/Vicuna model: '▁'
marks word starts (prefixed to the first word of every encoded string), merges
never cross a word start, and unknown characters fall back to the 256 byte
tokens '<0x00>'..'<0xFF>'. So a trained tokenizer and a converted Vicuna one
behave alike in the captioner: the question and the answer, encoded
separately as ST-LLM does, each start with a '▁' word.

`load_tokenizer` reads `tokenizer.json`, or converts a SentencePiece
`tokenizer.model` (what Vicuna and Vriptor checkpoints ship) without the
`sentencepiece` package, through transformers' protobuf schema and
`SpmConverter.build_tokenizer_from_spm_proto`.

  tokenizer = text_tokenizer.load_tokenizer('/ckpt/vicuna-7b')
  pad = text_tokenizer.special_id(tokenizer, '<unk>')

`load_qformer_tokenizer` reads bert-base-uncased's WordPiece (`tokenizer.json`
or `vocab.txt`) as ST-LLM's Q-Former tokenizes its instruction.
"""

import json
import os
from typing import Iterable, Optional, Sequence

from etils import epath
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers

from vwt_jax.core import files

TOKENIZER_FILE = 'tokenizer.json'
SENTENCEPIECE_FILE = 'tokenizer.model'
BERT_VOCAB_FILE = 'vocab.txt'
# `Blip2Base.init_tokenizer` adds it as BOS: the Q-Former's vocabulary has one more row.
QFORMER_BOS = '[DEC]'
DEFAULT_SPECIAL_TOKENS = ('<unk>', '<s>', '</s>', '<pad>')
# SentencePiece's word-start marker (U+2581), as in LLaMA's vocabulary.
WORD_START = '\u2581'
NUM_BYTE_TOKENS = 256
# SentencePiece ModelProto piece types and trainer model types.
_PIECE_UNKNOWN = 2
_PIECE_CONTROL = 3
_MODEL_UNIGRAM = 1
_MODEL_BPE = 2

_HOW_TO_CONVERT = (
    'Produce tokenizer.json on a machine with the sentencepiece package, e.g. '
    '`transformers.LlamaTokenizerFast.from_pretrained(d).save_pretrained(d)`, '
    'and load that.')


def _word_start_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  # split=True keeps merges inside words, as SentencePiece's default
  # split_by_whitespace; encoding is the same as splitting nothing, since no
  # learned merge can reach across a '▁'.
  return pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme='first', split=True)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int,
                    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
                    path: Optional[str] = None) -> tokenizers.Tokenizer:
  """Trains a LLaMA-style BPE tokenizer (see the module docstring).

  Ids: the special tokens first, in the given order, then the 256 byte tokens,
  then the learned pieces (characters, then merges in the order learned). The
  same texts always give the same tokenizer.

  Args:
    texts: training texts.
    vocab_size: the most tokens in the vocabulary, special and byte tokens
      included; fewer when the texts run out of pairs to merge.
    special_tokens: added as special tokens; '<unk>', if among them, is the
      BPE unknown token.
    path: a directory to save the tokenizer to as `tokenizer.json`.

  Returns:
    The tokenizer, with no padding, truncation or post-processing: callers
    add '<s>' and friends themselves.

  Raises:
    ValueError: vocab_size leaves no room for learned pieces, or
      special_tokens repeats a token.
  """
  special_tokens = list(special_tokens)
  if len(set(special_tokens)) != len(special_tokens):
    raise ValueError(f'special_tokens {special_tokens} repeats a token')
  if vocab_size <= len(special_tokens) + NUM_BYTE_TOKENS:
    raise ValueError(f'vocab_size={vocab_size} leaves no room for learned pieces after '
                     f'{len(special_tokens)} special and {NUM_BYTE_TOKENS} byte tokens')
  unk = '<unk>' if '<unk>' in special_tokens else None
  # The trainer has no byte fallback: learn the pieces first, then rebuild the
  # BPE with the byte tokens between the special tokens and the pieces.
  learner = tokenizers.Tokenizer(models.BPE(unk_token=unk))
  learner.pre_tokenizer = _word_start_pre_tokenizer()
  learner.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size - NUM_BYTE_TOKENS, special_tokens=special_tokens,
      show_progress=False))
  learned = json.loads(learner.to_str())['model']
  vocab = {token: i for i, token in enumerate(special_tokens)}
  byte_tokens = [f'<0x{value:02X}>' for value in range(NUM_BYTE_TOKENS)]
  for token in byte_tokens + sorted(learned['vocab'], key=learned['vocab'].get):
    vocab.setdefault(token, len(vocab))
  merges = [tuple(pair) for pair in learned['merges']]
  tokenizer = tokenizers.Tokenizer(models.BPE(
      vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
  tokenizer.pre_tokenizer = _word_start_pre_tokenizer()
  # '▁' -> ' ', byte tokens -> UTF-8 text, then drop the one space the encoder
  # put before the first word (Strip runs on the fused text, not per token).
  tokenizer.decoder = decoders.Sequence([
      decoders.Replace(WORD_START, ' '), decoders.ByteFallback(), decoders.Fuse(),
      decoders.Strip(' ', 1, 0)])
  tokenizer.add_special_tokens(special_tokens)
  if path is not None:
    files.makedirs(path)
    # What `tokenizer.save` writes, which takes local paths only.
    files.write_text(os.path.join(path, TOKENIZER_FILE), tokenizer.to_str(pretty=True))
  return tokenizer


def _read_json(path: str) -> dict:
  try:
    with files.open_text(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: unreadable JSON ({e})') from e
  if not isinstance(value, dict):
    raise ValueError(f'{path}: expected a JSON object')
  return value


def _hf_settings(model_dir: str) -> tuple[dict[int, str], bool]:
  """(tokens added to the SentencePiece model by id, `legacy`) of a HF checkpoint.

  Added tokens come from `added_tokens.json` ({content: id}, e.g. Vriptor's
  {'[PAD]': 32000}) and the `added_tokens_decoder` of `tokenizer_config.json`;
  `legacy` is transformers' LlamaTokenizer flag there (True when unset).
  """
  added = {}
  path = os.path.join(model_dir, 'added_tokens.json')
  if epath.Path(path).is_file():
    added.update({int(i): str(token) for token, i in _read_json(path).items()})
  path = os.path.join(model_dir, 'tokenizer_config.json')
  config = _read_json(path) if epath.Path(path).is_file() else {}
  for i, token in (config.get('added_tokens_decoder') or {}).items():
    added[int(i)] = str(token['content'] if isinstance(token, dict) else token)
  return added, config.get('legacy') is None or bool(config['legacy'])


def convert_sentencepiece(model_file: str, *, added_tokens: Optional[dict[int, str]] = None,
                          legacy: bool = True) -> tokenizers.Tokenizer:
  """A SentencePiece `tokenizer.model` (BPE or Unigram) as a `tokenizers.Tokenizer`.

  Needs protobuf and transformers, not sentencepiece. Control pieces ('<s>',
  '</s>') and the unknown piece become special tokens.

  Args:
    model_file: the SentencePiece model.
    added_tokens: id -> token added after the model's pieces (ids must
      continue the piece ids without gaps), or naming one of its pieces.
    legacy: transformers' LlamaTokenizer `legacy` (True: every text chunk
      between special tokens gets the '▁' dummy prefix, as SentencePiece).

  Raises:
    ValueError: the file is not a SentencePiece model this converter handles,
      or an added token does not fit; the message says how to produce
      tokenizer.json instead.
  """
  # pylint: disable=g-import-not-at-top
  try:
    from transformers.convert_slow_tokenizer import import_protobuf
    from transformers.convert_slow_tokenizer import SpmConverter
    model_pb2 = import_protobuf()
    build = SpmConverter.build_tokenizer_from_spm_proto
  except (ImportError, AttributeError) as e:
    raise ValueError(f'{model_file}: cannot convert a SentencePiece model without the '
                     f'sentencepiece package here ({e}). {_HOW_TO_CONVERT}') from e
  from google.protobuf import message
  # pylint: enable=g-import-not-at-top
  proto = model_pb2.ModelProto()
  try:
    proto.ParseFromString(epath.Path(model_file).read_bytes())
  except message.DecodeError as e:
    raise ValueError(f'{model_file}: not a SentencePiece model ({e}). {_HOW_TO_CONVERT}') from e
  model_type = proto.trainer_spec.model_type
  if not proto.pieces or model_type not in (_MODEL_BPE, _MODEL_UNIGRAM):
    raise ValueError(f'{model_file}: {len(proto.pieces)} pieces, model type {model_type}; '
                     f'only BPE ({_MODEL_BPE}) and Unigram ({_MODEL_UNIGRAM}) models with '
                     f'pieces are converted here. {_HOW_TO_CONVERT}')
  vocab = ({p.piece: i for i, p in enumerate(proto.pieces)} if model_type == _MODEL_BPE
           else [(p.piece, p.score) for p in proto.pieces])
  tokenizer = build(proto, vocab, legacy=legacy)
  tokenizer.add_special_tokens([
      tokenizers.AddedToken(p.piece, normalized=False, special=True)
      for p in proto.pieces if p.type in (_PIECE_UNKNOWN, _PIECE_CONTROL)])
  for i, token in sorted((added_tokens or {}).items()):
    if i < len(proto.pieces):
      if proto.pieces[i].piece != token:
        raise ValueError(f'{model_file}: added token {token!r} has id {i}, which is the '
                         f'piece {proto.pieces[i].piece!r}; renaming pieces is not supported. '
                         f'{_HOW_TO_CONVERT}')
      continue
    if i != tokenizer.get_vocab_size():
      raise ValueError(f'{model_file}: added token {token!r} has id {i}, expected '
                       f'{tokenizer.get_vocab_size()} (added ids must follow the pieces '
                       f'without gaps). {_HOW_TO_CONVERT}')
    tokenizer.add_special_tokens([tokenizers.AddedToken(token, normalized=False, special=True)])
  return tokenizer


def load_tokenizer(path_or_dir: str) -> tokenizers.Tokenizer:
  """Reads a tokenizer: `tokenizer.json`, or a SentencePiece `tokenizer.model`.

  A directory (e.g. a HF Vicuna/LLaMA checkpoint) is searched for
  `tokenizer.json` first, then `tokenizer.model`, converted with the
  directory's added tokens and `legacy` flag (`_hf_settings`). Padding and
  truncation stored in tokenizer.json are switched off: the captioner sizes
  its sequences itself.

  Raises:
    FileNotFoundError: neither file exists.
    ValueError: the SentencePiece model cannot be converted (the message says
      how to produce tokenizer.json).
  """
  if epath.Path(path_or_dir).is_dir():
    json_file = os.path.join(path_or_dir, TOKENIZER_FILE)
    model_file = os.path.join(path_or_dir, SENTENCEPIECE_FILE)
    if epath.Path(json_file).is_file():
      # `from_file` reads local paths only.
      tokenizer = tokenizers.Tokenizer.from_str(files.read_text(json_file))
    elif epath.Path(model_file).is_file():
      added, legacy = _hf_settings(path_or_dir)
      tokenizer = convert_sentencepiece(model_file, added_tokens=added, legacy=legacy)
    else:
      raise FileNotFoundError(f'{path_or_dir} has neither {TOKENIZER_FILE} nor '
                              f'{SENTENCEPIECE_FILE}')
  elif not epath.Path(path_or_dir).is_file():
    raise FileNotFoundError(f'tokenizer file {path_or_dir} not found')
  elif path_or_dir.endswith('.model'):
    tokenizer = convert_sentencepiece(path_or_dir)
  else:
    tokenizer = tokenizers.Tokenizer.from_str(files.read_text(path_or_dir))
  tokenizer.no_padding()
  tokenizer.no_truncation()
  return tokenizer


def load_qformer_tokenizer(path: str, max_length: int) -> tokenizers.Tokenizer:
  """bert-base-uncased's tokenizer as ST-LLM's Q-Former calls it on instructions.

  `Blip2Base.init_tokenizer` with `truncation_side='left'` and `encode_img`'s
  call: [CLS] text [SEP], lower-cased with accents stripped, at most
  `max_length` tokens (512 - queries - 10) cut from the left, a batch padded
  on the right to its longest with [PAD]; '[DEC]' is added after the
  vocabulary. `path`: a tokenizer.json, a vocab.txt (transformers'
  `BertTokenizer` settings), or a folder holding either.
  """
  if epath.Path(path).is_dir():
    found = [os.path.join(path, name) for name in (TOKENIZER_FILE, BERT_VOCAB_FILE)
             if epath.Path(os.path.join(path, name)).is_file()]
    if not found:
      raise FileNotFoundError(f'{path} has neither {TOKENIZER_FILE} nor {BERT_VOCAB_FILE}')
    path = found[0]
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f'Q-Former tokenizer file {path} not found')
  if path.endswith('.json'):
    tokenizer = tokenizers.Tokenizer.from_str(files.read_text(path))
  else:
    vocab = {token: i for i, token in enumerate(files.read_text(path).splitlines())}
    tokenizer = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token='[UNK]'))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.BertProcessing(
        ('[SEP]', special_id(tokenizer, '[SEP]')), ('[CLS]', special_id(tokenizer, '[CLS]')))
  tokenizer.add_special_tokens([QFORMER_BOS])
  tokenizer.enable_truncation(max_length, direction='left')
  tokenizer.enable_padding(direction='right', pad_id=special_id(tokenizer, '[PAD]'),
                           pad_token='[PAD]')
  return tokenizer


def special_id(tokenizer: tokenizers.Tokenizer, token: str) -> int:
  """The id of `token` (e.g. '<pad>'); ValueError naming it when absent."""
  i = tokenizer.token_to_id(token)
  if i is None:
    specials = sorted(t.content for t in tokenizer.get_added_tokens_decoder().values())
    raise ValueError(f'token {token!r} is not in the tokenizer (its added tokens: {specials})')
  return i


def pad_id(model_dir: str, tokenizer: tokenizers.Tokenizer, hf_config: dict) -> int:
  """The id transformers pads with: the tokenizer's pad token, else the config's."""
  for name in ('tokenizer_config.json', 'special_tokens_map.json'):
    path = os.path.join(model_dir, name)
    if epath.Path(path).is_file():
      token = _read_json(path).get('pad_token')
      if isinstance(token, dict):
        token = token.get('content')
      if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
        return int(tokenizer.token_to_id(token))
  if hf_config.get('pad_token_id') is not None:
    return int(hf_config['pad_token_id'])
  raise ValueError(f'{model_dir}: no pad token in tokenizer_config.json / '
                   'special_tokens_map.json and no pad_token_id in config.json')


def padded_size(n: int, minimum: int, maximum: int) -> int:
  """The power of two >= n (at least `minimum`, at most `maximum`) a batch
  dimension is padded to, so that jitted encoders see few distinct shapes."""
  size = minimum
  while size < n:
    size *= 2
  return min(size, maximum)
