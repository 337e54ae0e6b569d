"""Tokenizer training, saving/loading, SentencePiece conversion and special ids."""

import json
import os

import pytest
import transformers
from transformers.convert_slow_tokenizer import import_protobuf

from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import schema

VOCAB_SIZE = 450
SPECIALS = ('<unk>', '<s>', '</s>', '<pad>')


@pytest.fixture(scope='module')
def texts(fixtures_dir):
  videos = schema.load_dataset(os.path.join(fixtures_dir, 'vript', 'annotations'))
  return [t for v in videos for c in v.clips
          for t in (c.caption.content, c.caption.scene_title, c.voiceover) if t]


@pytest.fixture(scope='module')
def trained(texts, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok'))
  return text_tokenizer.train_tokenizer(texts, vocab_size=VOCAB_SIZE, path=path), path


def test_training_is_deterministic(texts, trained, tmp_path):
  _, path = trained
  text_tokenizer.train_tokenizer(texts, vocab_size=VOCAB_SIZE, path=str(tmp_path))
  with open(os.path.join(path, 'tokenizer.json'), 'rb') as a, \
       open(os.path.join(tmp_path, 'tokenizer.json'), 'rb') as b:
    assert a.read() == b.read()


def test_vocabulary_layout(trained):
  tokenizer, _ = trained
  vocab = tokenizer.get_vocab()
  assert [vocab[t] for t in SPECIALS] == [0, 1, 2, 3]
  assert vocab['<0x00>'] == 4 and vocab['<0x0A>'] == 14 and vocab['<0xFF>'] == 259
  assert 300 < tokenizer.get_vocab_size() <= VOCAB_SIZE
  # Learned merges: frequent words of the captions are single tokens.
  assert tokenizer.encode('the', add_special_tokens=False).tokens == ['\u2581the']


def test_save_load_round_trip_and_byte_fallback(trained, texts):
  tokenizer, path = trained
  from_dir = text_tokenizer.load_tokenizer(path)
  from_file = text_tokenizer.load_tokenizer(os.path.join(path, 'tokenizer.json'))
  unseen = 'Crème brûlée  ###Human: 日本 🍝\nnext line'
  for text in texts + [unseen]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert from_dir.encode(text, add_special_tokens=False).ids == ids
    assert from_file.encode(text, add_special_tokens=False).ids == ids
    assert from_dir.decode(ids) == text
  unseen_tokens = tokenizer.encode(unseen, add_special_tokens=False).tokens
  assert '<unk>' not in unseen_tokens and '<0xF0>' in unseen_tokens  # first byte of the emoji
  # Special tokens written in the text are matched, as LlamaTokenizer does.
  assert tokenizer.encode('a</s>', add_special_tokens=False).ids[-1] == 2


def test_encodes_as_transformers_llama_tokenizer(trained, texts, tmp_path):
  # transformers' LlamaTokenizer (Vicuna's class) on the same vocabulary and
  # merges, and its saved tokenizer.json as load_tokenizer reads it.
  tokenizer, _ = trained
  model = json.loads(tokenizer.to_str())['model']
  llama = transformers.LlamaTokenizer(vocab=model['vocab'],
                                      merges=[tuple(m) for m in model['merges']])
  llama.save_pretrained(str(tmp_path))
  loaded = text_tokenizer.load_tokenizer(str(tmp_path))
  for text in texts + ['Crème brûlée  ###Human: 日本 \nok',
                       '<ImageHere>###Human: Describe it.  ###Assistant: ']:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert llama.encode(text, add_special_tokens=False) == ids
    assert loaded.encode(text, add_special_tokens=False).ids == ids


def test_special_ids(trained):
  tokenizer, _ = trained
  assert [text_tokenizer.special_id(tokenizer, t) for t in SPECIALS] == [0, 1, 2, 3]
  with pytest.raises(ValueError, match=r"'\[PAD\]' is not in the tokenizer.*'<pad>'"):
    text_tokenizer.special_id(tokenizer, '[PAD]')


def test_training_errors(texts):
  with pytest.raises(ValueError, match='vocab_size=260 leaves no room'):
    text_tokenizer.train_tokenizer(texts, vocab_size=260)
  with pytest.raises(ValueError, match='repeats a token'):
    text_tokenizer.train_tokenizer(texts, vocab_size=400, special_tokens=('<s>', '<s>'))


def _write_sentencepiece_model(tokenizer, path):
  """A SentencePiece BPE model with the vocabulary and merge order of `tokenizer`.

  Built with protobuf (no sentencepiece here): normal pieces scored by -id,
  so SentencePiece's score-ordered merges are the BPE's learned ones.
  """
  model_pb2 = import_protobuf()
  proto = model_pb2.ModelProto()
  piece = model_pb2.ModelProto.SentencePiece
  proto.trainer_spec.model_type = 2  # BPE
  proto.trainer_spec.vocab_size = tokenizer.get_vocab_size()
  proto.trainer_spec.byte_fallback = True
  proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = 0, 1
  proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 2, 3
  proto.normalizer_spec.name = 'identity'
  proto.normalizer_spec.add_dummy_prefix = True
  proto.normalizer_spec.remove_extra_whitespaces = False
  proto.normalizer_spec.escape_whitespaces = True
  for token, i in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
    p = proto.pieces.add()
    p.piece = token
    if token == '<unk>':
      p.type = piece.UNKNOWN
    elif token in SPECIALS:
      p.type = piece.CONTROL
    elif token.startswith('<0x') and i < 260:
      p.type = piece.BYTE
    else:
      p.score = -float(i)
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())


def test_sentencepiece_model_is_converted(trained, texts, tmp_path):
  tokenizer, _ = trained
  _write_sentencepiece_model(tokenizer, tmp_path / 'tokenizer.model')
  size = tokenizer.get_vocab_size()
  # As the Vriptor checkpoint: '[PAD]' added after the SentencePiece pieces.
  (tmp_path / 'added_tokens.json').write_text(json.dumps({'[PAD]': size}))
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({
      'added_tokens_decoder': {'0': {'content': '<unk>', 'special': True}}}))
  converted = text_tokenizer.load_tokenizer(str(tmp_path))
  for text in texts + ['Crème brûlée  ###Assistant: 日本\nok']:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert converted.encode(text, add_special_tokens=False).ids == ids
    assert converted.decode(ids) == text
  assert [text_tokenizer.special_id(converted, t) for t in SPECIALS + ('[PAD]',)] == [
      0, 1, 2, 3, size]
  assert converted.encode('a</s>[PAD]', add_special_tokens=False).ids[-2:] == [2, size]


def test_sentencepiece_errors(trained, tmp_path):
  tokenizer, path = trained
  with pytest.raises(FileNotFoundError, match='neither tokenizer.json nor tokenizer.model'):
    text_tokenizer.load_tokenizer(str(tmp_path))
  (tmp_path / 'tokenizer.model').write_bytes(b'not a sentencepiece model')
  with pytest.raises(ValueError, match=r'not a SentencePiece model.*save_pretrained'):
    text_tokenizer.load_tokenizer(str(tmp_path))
  _write_sentencepiece_model(tokenizer, tmp_path / 'tokenizer.model')
  (tmp_path / 'added_tokens.json').write_text(json.dumps({'[PAD]': 9999}))
  with pytest.raises(ValueError, match=r"'\[PAD\]' has id 9999, expected"):
    text_tokenizer.load_tokenizer(str(tmp_path))
  (tmp_path / 'added_tokens.json').write_text(json.dumps({'[PAD]': 3}))
  with pytest.raises(ValueError, match="which is the piece '<pad>'"):
    text_tokenizer.load_tokenizer(str(tmp_path))
  # tokenizer.json wins over tokenizer.model.
  os.symlink(os.path.join(path, 'tokenizer.json'), tmp_path / 'tokenizer.json')
  assert text_tokenizer.load_tokenizer(str(tmp_path)).to_str() == tokenizer.to_str()
