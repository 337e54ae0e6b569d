"""Hugging Face T5 directories -> `T5Encoder`, checked against transformers itself.

Small random `T5EncoderModel`s (T5 v1.0 'relu' and v1.1/FLAN 'gated-gelu'),
full `T5ForConditionalGeneration` / `MT5ForConditionalGeneration` directories,
and `T5TextEncoder` with a tiny trained Unigram tokenizer laid out like T5's.
"""

import dataclasses
import functools
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

import helpers
from helpers import save_t5_tokenizer
from vwt_jax.conversion import hf_checkpoint, hf_t5, torch_state
from vwt_jax.families import text_encoders
from vwt_jax.models import t5

SIZES = dict(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)
# Ours against transformers in float32: 6 dots a layer for 2 layers and the
# final norm; the longest sum is d_ff (64) or, past 64 tokens, the sequence.
DEPTH = 2 * 6 + 1
CAPTIONS = [
    "A woman with curly brown hair stands behind a wooden counter.",
    "Two brown eggs sit in a white ceramic bowl beside a fork.",
    "An aerial shot of a harbor town at sunset, with boats at a pier.",
    "The cook juggles the dough, then fries the ribbons in a pan.",
    "Seen from above, a pair of hands breaks two eggs into a heap of flour.",
    "A drone circles a lighthouse on a pier while waves hit the rocks.",
    "Whiskers the cat sits upright and stares at the camera.",
]


def _randomize(model: torch.nn.Module, seed: int):
  """Weights far from the default init (norms at ones), so a wrongly mapped tensor shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(noise * (0.3 if p.ndim > 1 else 0.1) + (1.0 if "layer_norm" in name else 0.0))


def _save(model, directory: str) -> str:
  model.eval()
  model.save_pretrained(directory)
  return directory


def _ids_and_mask(batch: int = 3, length: int = 40):
  """Random ids; row 1 right-padded, row 2 left-padded (pad id 0)."""
  ids = np.random.default_rng(0).integers(2, SIZES["vocab_size"], (batch, length))
  mask = np.ones((batch, length), np.int64)
  mask[1, 25:] = 0
  mask[2, :6] = 0
  return np.where(mask > 0, ids, 0), mask


def _reference(model, ids, mask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
                 ).last_hidden_state.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask)[0]


# relu with the default buckets; gated-gelu with few buckets and a short maximum
# distance, so that the 40 positions reach the log-spaced and the last buckets.
ENCODERS = {
    "relu": dict(feed_forward_proj="relu"),
    "gated-gelu": dict(feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                       relative_attention_max_distance=16, layer_norm_epsilon=1e-5),
}


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def encoder_dir(request, tmp_path_factory):
  model = transformers.T5EncoderModel(transformers.T5Config(**SIZES, **ENCODERS[request.param]))
  _randomize(model, 0)
  directory = _save(model, str(tmp_path_factory.mktemp(request.param)))
  return request.param, directory, model


def test_encoder_matches_transformers(encoder_dir):
  proj, directory, model = encoder_dir
  config, params = hf_t5.load_hf_t5_encoder(directory)
  assert config == t5.T5EncoderConfig(**SIZES, **ENCODERS[proj])
  ids, mask = _ids_and_mask()
  ours = np.asarray(_forward(t5.T5Encoder(config), params, ids, mask))
  ref = _reference(model, ids, mask)
  assert ours.dtype == np.float32 and ours.shape == (3, 40, 32)
  helpers.assert_allclose_f32(ours, ref, reduction=SIZES["d_ff"], depth=DEPTH)


def test_conversion_maps_layouts(encoder_dir):
  _, directory, _ = encoder_dir
  sd = hf_checkpoint.read_state_dict(directory)
  config = t5.T5EncoderConfig.from_hf_config(hf_checkpoint.read_config(directory))
  params = hf_t5.convert_state_dict(sd, config)
  np.testing.assert_array_equal(params["layer_1"]["attention"]["q"]["kernel"],
                                sd["encoder.block.1.layer.0.SelfAttention.q.weight"].T.reshape(
                                    32, 4, 8))
  np.testing.assert_array_equal(params["layer_1"]["attention"]["o"]["kernel"],
                                sd["encoder.block.1.layer.0.SelfAttention.o.weight"].T.reshape(
                                    4, 8, 32))
  # The tied copy of the table, under the name an encoder-only state dict may use.
  renamed = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v
             for k, v in sd.items()}
  np.testing.assert_array_equal(hf_t5.convert_state_dict(renamed, config)["shared"]["embedding"],
                                sd["shared.weight"])


@pytest.mark.parametrize("cls,config_cls", [
    (transformers.T5ForConditionalGeneration, transformers.T5Config),
    (transformers.MT5ForConditionalGeneration, transformers.MT5Config),
])
def test_encoder_of_full_model(cls, config_cls, tmp_path):
  # FLAN-T5 stores an untied LM head; the decoder gets a different depth.
  model = cls(config_cls(**SIZES, num_decoder_layers=1, feed_forward_proj="gated-gelu",
                         tie_word_embeddings=False))
  _randomize(model, 1)
  directory = _save(model, str(tmp_path))
  assert any(k.startswith("decoder.") for k in hf_checkpoint.read_state_dict(directory))
  config, params = hf_t5.load_hf_t5_encoder(directory)
  ids, mask = _ids_and_mask()
  helpers.assert_allclose_f32(_forward(t5.T5Encoder(config), params, ids, mask),
                              _reference(model.get_encoder(), ids, mask),
                              reduction=SIZES["d_ff"], depth=DEPTH)


def test_conversion_error_lists_every_problem(encoder_dir):
  proj, directory, _ = encoder_dir
  sd = hf_checkpoint.read_state_dict(directory)
  config = t5.T5EncoderConfig.from_hf_config(hf_checkpoint.read_config(directory))
  wo = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
  sd["encoder.block.0.layer.0.SelfAttention.q.bias"] = np.zeros(32, np.float32)
  sd["encoder.block.1.layer.0.SelfAttention.k.weight"] = np.zeros((24, 32), np.float32)
  del sd[wo]
  other = dataclasses.replace(config,
                              feed_forward_proj="relu" if proj != "relu" else "gated-gelu")
  with pytest.raises(torch_state.ConversionError) as e:
    hf_t5.convert_state_dict(sd, other)
  message = str(e.value)
  assert f"missing state-dict key: {wo}" in message
  assert ("unexpected state-dict key: encoder.block.0.layer.0.SelfAttention.q.bias"
          in message)
  # k (24, 32) cannot take the (32, 4, 8) shape: it is reported with its own.
  assert "shape mismatch: layer_1/attention/k/kernel converted (32, 24) vs model (32, 4, 8)" in (
      message)
  # A checkpoint of the other feed-forward kind: its weights are unexpected, ours missing.
  missing = "wi" if proj != "relu" else "wi_0"
  assert f"missing state-dict key: encoder.block.0.layer.1.DenseReluDense.{missing}.weight" in (
      message)


def test_unsupported_directories_are_refused(tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    json.dump({**transformers.UMT5Config(**SIZES).to_dict(), "model_type": "umt5"}, f)
  with pytest.raises(ValueError, match="config.json: model_type='umt5'"):
    hf_t5.load_hf_t5_encoder(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf_t5.load_hf_t5_encoder(str(tmp_path / "absent"))


def test_text_encoder_matches_transformers(tmp_path):
  model = transformers.T5EncoderModel(transformers.T5Config(**SIZES, **ENCODERS["gated-gelu"]))
  _randomize(model, 2)
  text_dir = _save(model, str(tmp_path))
  assert save_t5_tokenizer(text_dir, CAPTIONS).get_vocab_size() <= SIZES["vocab_size"]
  encoder = text_encoders.load_t5_text_encoder(text_dir, batch_size=4)
  assert (encoder.pad_id, encoder.dim) == (0, 32)
  # 8 texts: two full batches of 4; 3 texts: one batch padded to 4 rows.
  texts = CAPTIONS + [" ".join(CAPTIONS)]
  hf_tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_file=os.path.join(text_dir, "tokenizer.json"), pad_token="<pad>",
      eos_token="</s>", unk_token="<unk>")
  # No max_length: LlamaGen's 120 tokens.
  for subset, kwargs, length in ((texts, {"max_length": 24}, 24), (texts[:3], {}, 120)):
    features, mask = encoder.encode(subset, **kwargs)
    batch = hf_tokenizer(subset, max_length=length, padding="max_length", truncation=True,
                         return_tensors="np")
    assert features.dtype == np.float32 and features.shape == (len(subset), length, 32)
    np.testing.assert_array_equal(mask, batch["attention_mask"].astype(bool))
    helpers.assert_allclose_f32(features, _reference(model, batch["input_ids"],
                                                     batch["attention_mask"]),
                                reduction=max(length, SIZES["d_ff"]), depth=DEPTH)
  # The long caption is cut, keeping its `</s>`.
  long_ids = encoder.tokenize(texts[-1:], max_length=24)[0]
  assert len(long_ids) == 24 and long_ids[-1] == 1
  with pytest.raises(TypeError, match="sequence of strings"):
    encoder.encode("one caption")
