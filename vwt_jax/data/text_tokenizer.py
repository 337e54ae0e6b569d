"""Text tokenizers for the captioner: training, loading and special ids.

Everything is a `tokenizers.Tokenizer` (the Rust `tokenizers` library); no
tokenizer is written by hand here.

`train_tokenizer` builds a LLaMA-style SentencePiece-like BPE, not a GPT-2
byte-level one, because the captioner's decoder is a LLaMA/Vicuna model whose
released tokenizer has exactly this shape: '▁' marks word starts (Metaspace,
prefixed to the first word of every encoded string), BPE merges never cross a
word start, and characters outside the vocabulary fall back to the 256 byte
tokens '<0x00>'..'<0xFF>' instead of '<unk>'. So a trained tokenizer and a
converted Vicuna one behave alike in the captioner's code: the question and
the answer, encoded separately as ST-LLM does, each start with a '▁' word, and
decoding the answer tokens gives back the answer text.

`load_tokenizer` reads `tokenizer.json`, or converts a SentencePiece
`tokenizer.model` (what Vicuna and Vriptor checkpoints ship) without the
`sentencepiece` package: the model file is a protobuf, parsed with
transformers' copy of the SentencePiece schema, and transformers'
`SpmConverter.build_tokenizer_from_spm_proto` turns it into a `Tokenizer`.

  tokenizer = text_tokenizer.load_tokenizer('/ckpt/vicuna-7b')
  pad = text_tokenizer.special_id(tokenizer, '<unk>')
"""

import json
import os
from typing import Iterable, Optional, Sequence

from etils import epath
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from vwt_jax.core import files

TOKENIZER_FILE = 'tokenizer.json'
SENTENCEPIECE_FILE = 'tokenizer.model'
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


def byte_token(value: int) -> str:
  """The byte-fallback token of one byte, e.g. '<0x0A>' for a newline."""
  return f'<0x{value:02X}>'


def _llama_decoder() -> decoders.Decoder:
  # '▁' -> ' ', byte tokens -> UTF-8 text, then drop the one space the encoder
  # put before the first word (Strip runs on the fused text, not per token).
  return decoders.Sequence([
      decoders.Replace(WORD_START, ' '), decoders.ByteFallback(), decoders.Fuse(),
      decoders.Strip(' ', 1, 0)])


def _word_start_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  # split=True keeps merges inside words, as SentencePiece's default
  # split_by_whitespace; encoding is the same as splitting nothing, since no
  # learned merge can reach across a '▁'.
  return pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme='first', split=True)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int,
                    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
                    path: Optional[str] = None) -> tokenizers.Tokenizer:
  """Trains a LLaMA-style BPE tokenizer (see the module docstring).

  Ids: the special tokens first, in the given order (0 '<unk>', 1 '<s>',
  2 '</s>', 3 '<pad>' by default), then the 256 byte tokens, then the learned
  pieces (characters of the texts, then merges in the order learned). The
  same texts always give the same tokenizer.

  Args:
    texts: training texts.
    vocab_size: the most tokens in the vocabulary, special and byte tokens
      included; fewer when the texts run out of pairs to merge.
    special_tokens: added as special tokens; '<unk>', if among them, is the
      BPE unknown token (byte fallback leaves it unused for UTF-8 text).
    path: a directory to save the tokenizer to as `tokenizer.json` (created
      if needed).

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
  reserved = len(special_tokens) + NUM_BYTE_TOKENS
  if vocab_size <= reserved:
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
  for value in range(NUM_BYTE_TOKENS):
    vocab.setdefault(byte_token(value), len(vocab))
  for token, _ in sorted(learned['vocab'].items(), key=lambda item: item[1]):
    vocab.setdefault(token, len(vocab))
  merges = [tuple(pair) for pair in learned['merges']]
  tokenizer = tokenizers.Tokenizer(models.BPE(
      vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
  tokenizer.pre_tokenizer = _word_start_pre_tokenizer()
  tokenizer.decoder = _llama_decoder()
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


def _added_tokens(model_dir: str) -> dict[int, str]:
  """Tokens a HF checkpoint adds to its SentencePiece model, by id.

  From `added_tokens.json` ({content: id}, e.g. Vriptor's {'[PAD]': 32000})
  and the `added_tokens_decoder` of `tokenizer_config.json`.
  """
  added = {}
  path = os.path.join(model_dir, 'added_tokens.json')
  if epath.Path(path).is_file():
    added.update({int(i): str(token) for token, i in _read_json(path).items()})
  path = os.path.join(model_dir, 'tokenizer_config.json')
  if epath.Path(path).is_file():
    for i, token in (_read_json(path).get('added_tokens_decoder') or {}).items():
      added[int(i)] = str(token['content'] if isinstance(token, dict) else token)
  return added


def _legacy(model_dir: str) -> bool:
  """transformers' `legacy` flag of LlamaTokenizer (True when unset)."""
  path = os.path.join(model_dir, 'tokenizer_config.json')
  if epath.Path(path).is_file():
    value = _read_json(path).get('legacy')
    if value is not None:
      return bool(value)
  return True


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
  if model_type == _MODEL_BPE:
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  else:
    vocab = [(p.piece, p.score) for p in proto.pieces]
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
  `tokenizer.json` first, then `tokenizer.model`, which is converted with
  `convert_sentencepiece` together with the directory's `added_tokens.json`
  and `tokenizer_config.json` (`added_tokens_decoder`, `legacy`). Padding and
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
      path_or_dir = json_file
    elif epath.Path(model_file).is_file():
      tokenizer = convert_sentencepiece(model_file, added_tokens=_added_tokens(path_or_dir),
                                        legacy=_legacy(path_or_dir))
      tokenizer.no_padding()
      tokenizer.no_truncation()
      return tokenizer
    else:
      raise FileNotFoundError(f'{path_or_dir} has neither {TOKENIZER_FILE} nor '
                              f'{SENTENCEPIECE_FILE}')
  if not epath.Path(path_or_dir).is_file():
    raise FileNotFoundError(f'tokenizer file {path_or_dir} not found')
  if path_or_dir.endswith('.model'):
    tokenizer = convert_sentencepiece(path_or_dir)
  else:
    # `from_file` reads local paths only.
    tokenizer = tokenizers.Tokenizer.from_str(files.read_text(path_or_dir))
  tokenizer.no_padding()
  tokenizer.no_truncation()
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
