"""Reading Hugging Face model directories: `config.json` and the weights.

Weights are one `model.safetensors`, shards listed in
`model.safetensors.index.json`, or the older `pytorch_model.bin` (+
`.index.json`), all read without pickle (`torch.load(weights_only=True)`).
Half-precision floats come back as float32 so that converters see one dtype.
A directory may also be a repository on the Hub, `hf://ORG/REPO[@REVISION]`
(`core.hub`).
"""

import json
import os
from typing import Any, Callable, Iterable

# Importing ml_dtypes registers bfloat16 with numpy, which safetensors' numpy reader needs.
import ml_dtypes
import numpy as np

from vwt_jax.conversion import torch_state
from vwt_jax.core import hub

StateDict = dict[str, np.ndarray]

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# Looked for in this order, as transformers does (safetensors first).
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)


def read_json(path: str, kind: str = "Hugging Face") -> Any:
  """The parsed JSON file `path` of a `kind` model directory; errors name the path."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} not found (not a {kind} model directory?)") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def _check_dir(model_dir: str) -> str:
  model_dir = hub.resolve(os.fspath(model_dir))
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"model directory {model_dir} does not exist")
  return model_dir


def read_config(model_dir: str) -> dict:
  """The parsed `config.json` of `model_dir`; errors name the path."""
  path = os.path.join(_check_dir(model_dir), "config.json")
  config = read_json(path)
  if not isinstance(config, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
  return config


def _to_float32(array: np.ndarray) -> np.ndarray:
  if array.dtype in (np.float16, ml_dtypes.bfloat16):
    return array.astype(np.float32)
  return array


def _read_safetensors(path: str, keep: Callable[[str], bool]) -> StateDict:
  """Only the kept tensors are read (safetensors opens by name, lazily)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(path, framework="np") as f:
    return {k: _to_float32(f.get_tensor(k)) for k in f.keys() if keep(k)}


def _read_torch(path: str, keep: Callable[[str], bool]) -> StateDict:
  return {k: _to_float32(v) for k, v in torch_state.load_state_dict(path).items() if keep(k)}


def _shards(index_path: str, keep: Callable[[str], bool]) -> Iterable[str]:
  """Shard files of an index that hold at least one kept tensor, in first-use order."""
  weight_map = read_json(index_path).get("weight_map")
  if not isinstance(weight_map, dict):
    raise ValueError(f"{index_path}: no 'weight_map' object")
  return list(dict.fromkeys(f for name, f in weight_map.items() if keep(name)))


def read_state_dict(model_dir: str, prefix: str = "") -> StateDict:
  """Every tensor of `model_dir` whose name starts with `prefix` (names kept whole).

  Reads the first of `WEIGHT_FILES` that exists; half-precision floats are
  returned as float32, other dtypes unchanged.
  """
  model_dir = _check_dir(model_dir)

  def keep(name):
    return name.startswith(prefix)

  found = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(model_dir, name))]
  if not found:
    raise FileNotFoundError(f"{model_dir}: no weights; expected one of {', '.join(WEIGHT_FILES)}")
  path = os.path.join(model_dir, found[0])
  reader = _read_safetensors if found[0] in (SAFETENSORS, SAFETENSORS_INDEX) else _read_torch
  if found[0] in (SAFETENSORS, TORCH_BIN):
    return reader(path, keep)
  state_dict = {}
  for shard in _shards(path, keep):
    shard = os.path.join(model_dir, shard)
    if not os.path.isfile(shard):
      raise FileNotFoundError(f"weight file {shard} not found")
    state_dict.update(reader(shard, keep))
  return state_dict
