"""Hugging Face T5 / mT5 directories -> `T5Encoder` params, config and a text encoder.

Reads the encoder of a `T5EncoderModel`, `T5ForConditionalGeneration` or
`MT5*` directory (`config.json` + safetensors / torch weights, see
`hf_checkpoint`); the decoder and LM head are never loaded.

State-dict mapping (torch Linear (out, in) -> kernel (in, out), no biases):
* `shared.weight` (else the tied copy `encoder.embed_tokens.weight`) -> `shared/embedding`.
* `encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`
  (buckets, heads) -> `relative_attention_bias` (only layer 0 holds the table;
  every layer uses it).
* `encoder.block.{i}.layer.0.SelfAttention.{q,k,v}` -> `layer_{i}/attention/{q,k,v}`
  (kernel (d_model, heads, d_kv)), `.o` -> `attention/o` (kernel (heads, d_kv, d_model)),
  `.layer.0.layer_norm.weight` -> `attention_norm/scale`.
* `encoder.block.{i}.layer.1.DenseReluDense.{wi | wi_0, wi_1, wo}` ->
  `layer_{i}/mlp/...`, `.layer.1.layer_norm.weight` -> `mlp_norm/scale`.
* `encoder.final_layer_norm.weight` -> `final_norm/scale`.

`load_t5_text_encoder` adds the directory's `tokenizer.json` (the `tokenizers`
library) for `T5TextEncoder.encode(texts) -> (features, mask)`, the input of
LlamaGen's caption embedder.
"""

import os
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import torch_state as ts
from vwt_jax.data import text_tokenizer
from vwt_jax.models.t5 import T5Encoder, T5EncoderConfig, abstract_params

# LlamaGen's T5Embedder pads/truncates every caption to 120 tokens.
DEFAULT_MAX_LENGTH = 120
DEFAULT_BATCH_SIZE = 32
# Keys of a full encoder-decoder checkpoint that the encoder does not use.
_IGNORED = re.compile(r"^(decoder\..*|lm_head\..*|encoder\.embed_tokens\.weight)$")
_ATTENTION = "encoder.block.{i}.layer.0.SelfAttention"
_FEED_FORWARD = "encoder.block.{i}.layer.1.DenseReluDense"


def convert_state_dict(state_dict: Mapping[str, Any], config: T5EncoderConfig) -> dict:
  """transformers T5 weights (encoder, optionally with decoder) -> `T5Encoder(config)` params.

  Raises `ConversionError` listing every missing/unexpected key and every shape
  mismatch against the model.
  """
  sd = ts.StateDictReader(state_dict)
  h, dk, d = config.num_heads, config.d_kv, config.d_model
  embed_key = "shared.weight" if "shared.weight" in sd else "encoder.embed_tokens.weight"
  params = {
      "shared": ts.embedding(sd, embed_key),
      "relative_attention_bias": sd.get(
          f"{_ATTENTION.format(i=0)}.relative_attention_bias.weight"),
      "final_norm": {"scale": sd.get("encoder.final_layer_norm.weight")},
  }
  mlp_names = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
  for i in range(config.num_layers):
    attention = {}
    for name in ("q", "k", "v"):
      kernel = ts.linear(sd, f"{_ATTENTION.format(i=i)}.{name}", bias=False).get("kernel")
      attention[name] = {"kernel": ts.reshape_checked(kernel, (d, h, dk))}
    out = ts.linear(sd, f"{_ATTENTION.format(i=i)}.o", bias=False).get("kernel")
    attention["o"] = {"kernel": ts.reshape_checked(out, (h, dk, d))}
    params[f"layer_{i}"] = {
        "attention_norm": {"scale": sd.get(f"encoder.block.{i}.layer.0.layer_norm.weight")},
        "attention": attention,
        "mlp_norm": {"scale": sd.get(f"encoder.block.{i}.layer.1.layer_norm.weight")},
        "mlp": {name: ts.linear(sd, f"{_FEED_FORWARD.format(i=i)}.{name}", bias=False)
                for name in mlp_names},
    }
  params = ts.prune_missing(params)
  ts.check_params(params, abstract_params(T5Encoder(config)), sd,
                  ignore_unused=[k for k in sd.unused() if _IGNORED.match(k)])
  return ts.cast_tree(params, jnp.float32)


def load_hf_t5_encoder(model_dir: str) -> tuple[T5EncoderConfig, dict]:
  """(config, float32 params) of the T5 encoder saved in `model_dir`."""
  config = T5EncoderConfig.from_hf_config(
      hf_checkpoint.read_config(model_dir), os.path.join(os.fspath(model_dir), "config.json"))
  # Only the encoder's tensors are read: a full FLAN-T5-XL checkpoint is mostly decoder.
  state_dict = {**hf_checkpoint.read_state_dict(model_dir, prefix="shared."),
                **hf_checkpoint.read_state_dict(model_dir, prefix="encoder.")}
  return config, convert_state_dict(state_dict, config)


class T5TextEncoder:
  """A converted T5 encoder with its tokenizer: texts -> last hidden states + mask.

  Attributes: `module` (T5Encoder), `params`, `tokenizer` (tokenizers.Tokenizer;
  T5's post-processor appends `</s>`), `pad_id`, `dim`, `batch_size`,
  `model_dir`. `encode` reconfigures the tokenizer's truncation per call, so
  one instance must not be shared between threads.
  """

  def __init__(self, module: T5Encoder, params: Any, tokenizer, *, pad_id: int,
               batch_size: int = DEFAULT_BATCH_SIZE, model_dir: str = ""):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be positive")
    self.module = module
    self.params = jax.device_put(params)
    self.tokenizer = tokenizer
    self.pad_id = pad_id
    self.batch_size = batch_size
    self.model_dir = model_dir
    self.dim = module.config.d_model
    self._apply = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask)[0])

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
    ids = self.tokenize(texts, max_length)
    features = np.zeros((len(ids), max_length, self.dim), np.float32)
    mask = np.zeros((len(ids), max_length), bool)
    for start in range(0, len(ids), self.batch_size):
      chunk = ids[start:start + self.batch_size]
      rows = text_tokenizer.padded_size(len(chunk), 1, self.batch_size)
      tokens = np.full((rows, max_length), self.pad_id, np.int32)
      valid = np.zeros((rows, max_length), bool)
      for r, row in enumerate(chunk):
        tokens[r, :len(row)] = row
        valid[r, :len(row)] = True
      out = self._apply(self.params, tokens, valid)
      features[start:start + len(chunk)] = np.asarray(out)[:len(chunk)]
      mask[start:start + len(chunk)] = valid[:len(chunk)]
    return features, mask


def load_t5_text_encoder(model_dir: str, *, dtype: Any = jnp.float32,
                         batch_size: int = DEFAULT_BATCH_SIZE) -> T5TextEncoder:
  """A `T5TextEncoder` from a Hugging Face T5 directory with a `tokenizer.json`.

  `dtype` is the compute dtype (LlamaGen extracts FLAN-T5-XL features in
  bfloat16); parameters stay float32.
  """
  config, params = load_hf_t5_encoder(model_dir)
  model_dir = os.fspath(model_dir)
  tokenizer = text_tokenizer.load_tokenizer(model_dir)
  pad_id = text_tokenizer.pad_id(model_dir, tokenizer, hf_checkpoint.read_config(model_dir))
  return T5TextEncoder(T5Encoder(config, dtype=dtype), params, tokenizer, pad_id=pad_id,
                       batch_size=batch_size, model_dir=model_dir)
