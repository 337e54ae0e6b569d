"""What every family shares: config sections into dataclasses, run folders, dtypes."""

import dataclasses
import importlib.util
import json
import os
import typing
from typing import Any, Mapping

from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from vwt_jax import families
from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import torch_state
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import files
from vwt_jax.core import hub
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.models import layers

CONFIG_FILE = "config.json"
# Parameters converted once from released weights (`vwt_jax.convert`).
CONVERTED_FILE = "params.safetensors"


def dtypes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model dtypes of a run: `compute_dtype` and `param_dtype`."""
  return dict(dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.dtype(config.param_dtype))


def from_fields(cls, values: Mapping[str, Any], section: str = "config.model", **given):
  """`cls(**values, **given)`: a config section whose keys are the dataclass's fields.

  Nested dataclass fields take a mapping of their own fields, tuple fields
  take any sequence (JSON gives lists).

  Raises:
    ValueError: naming `section` and the keys that are not fields of `cls`.
  """
  values = dict(values.to_dict() if isinstance(values, ml_collections.ConfigDict) else values)
  hints = typing.get_type_hints(cls)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"{section}: {unknown} are not fields of {cls.__name__}; expected "
                     f"keys among {sorted(fields - set(given))}")
  for name, value in values.items():
    hint = hints[name]
    kinds = typing.get_args(hint) or (hint,)
    nested = next((k for k in kinds if dataclasses.is_dataclass(k)), None)
    if nested is not None and isinstance(value, Mapping):
      values[name] = from_fields(nested, value, f"{section}.{name}")
    elif isinstance(value, list) or (typing.get_origin(hint) is tuple and value is not None):
      values[name] = tuple(value)
  return cls(**values, **given)


def check_same(config: ml_collections.ConfigDict, model_key: str, data_key: str) -> None:
  """A model field and the data field it must equal (one reference in a config
  file; two values once saved as JSON, where overriding one leaves the other)."""
  model, data = config.model[model_key], config.data[data_key]
  if model != data:
    raise ValueError(f"config.model.{model_key}={model} but config.data.{data_key}={data}: "
                     "set both to the same value")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` (as --config reads it) or a run's config.json."""
  if spec.endswith(".json"):
    with files.open_text(spec) as f:
      return ml_collections.ConfigDict(json.load(f))
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("vwt_jax_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"config {spec!r}: no such config file")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def config_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, default=list)


def save_config(config: ml_collections.ConfigDict, folder: str) -> None:
  """Writes `folder/config.json` whole or not at all (what `run_config` reads)."""
  files.makedirs(folder)
  files.write_text(os.path.join(folder, CONFIG_FILE), config_json(config))


def run_config(checkpoint: str) -> ml_collections.ConfigDict:
  """The config.json of the run that holds `checkpoint` (a run, checkpoints or
  step folder), or the config that an official TiTok model folder's
  config.json implies (a local folder or `hf://ORG/REPO`, read as the official
  `from_pretrained` reads it)."""
  folder = checkpoint.rstrip("/")
  if hub.is_hub(folder) and not hub.parse(folder).filename:
    folder = hub.resolve(folder)
  for _ in range(3):
    path = os.path.join(folder, CONFIG_FILE)
    if epath.Path(path).exists():
      config = load_config(path)
      model = config.get("model", {})
      official = "family" not in config and ("vq_model" in model or "generator" in model)
      return _official_folder_config(config.to_dict()) if official else config
    folder = os.path.dirname(folder)
  raise FileNotFoundError(
      f"no {CONFIG_FILE} next to {checkpoint}; pass the model's config "
      "(e.g. configs/titok.py:tiny) explicitly")


def _official_folder_config(official: dict[str, Any]) -> ml_collections.ConfigDict:
  family = "maskgit" if "generator" in official["model"] else "titok"
  return families.get(family).config_from_official(official)


def is_run(path: str) -> bool:
  """True for one of our run (or checkpoint) folders; False for a weights file,
  a Hugging Face model folder or an `hf://` reference."""
  if hub.is_hub(path) or not epath.Path(path).is_dir():
    return False
  return not any(epath.Path(path, name).exists() for name in hf_checkpoint.WEIGHT_FILES)


def write_converted(params: Any, path: str) -> None:
  """Writes a parameter tree as safetensors, keys joined by '/' (whole or not at all)."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  # safetensors writes an array's buffer as it lies: transposed views must be copied.
  data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in flat.items()})
  with files.write_file(path, "wb") as f:
    f.write(data)


def read_converted(path: str) -> Any:
  """The parameter tree `write_converted` wrote, as numpy arrays."""
  flat = safetensors.numpy.load(epath.Path(path).read_bytes())
  return traverse_util.unflatten_dict(flat, sep="/")


def official_state_dict(path: str) -> Mapping[str, Any]:
  """The state dict of released weights: a file (`.pt`, `.bin`, `.safetensors`,
  `.npz`), a Hugging Face model folder (`config.json` and its weights, as
  `PyTorchModelHubMixin` saves them), or either on the Hub (`hf://`)."""
  local = hub.resolve(path)
  if os.path.isdir(local):
    return hf_checkpoint.read_state_dict(local)
  return torch_state.load_state_dict(local)


def run_params(path: str, config: ml_collections.ConfigDict) -> Any:
  """Host parameters of one of our runs (the EMA copy when the run keeps one),
  or of a folder `vwt_jax.convert` wrote."""
  converted = os.path.join(path, CONVERTED_FILE)
  if epath.Path(converted).exists():
    return read_converted(converted)
  if config.get("ema_decay"):
    try:
      return checkpoint_lib.load_state_subtree(path, "ema_params")
    except KeyError:
      pass
  return checkpoint_lib.load_state_subtree(path, "params")


def fill_from_dataset(fields: dict[str, Any], given: Mapping[str, Any], source: str) -> None:
  """Sets the `fields` left unset (None) to what the code dataset `given`.

  A size set in the config must agree with the code dataset, so a generator
  is never silently trained on codes of another tokenizer.

  Raises:
    ValueError: naming the field, its config value and the dataset's.
  """
  for name, value in given.items():
    if fields[name] is None:
      fields[name] = value
    elif fields[name] != value:
      raise ValueError(f"config.model.{name}={fields[name]} but the code dataset {source} "
                       f"has {value}; leave it unset (None) to take the dataset's value")


def place_params(module, params: Any, mesh, rules, *init_args, **init_kwargs) -> Any:
  """`params` on `mesh`, split as their logical axis names and `rules` say (as in
  training); `init_args` are inputs `module.init` takes."""
  boxed = layers.abstract_params(module, *init_args, **init_kwargs)
  return jax.device_put(params, sharding_lib.logical_to_sharding(boxed, mesh, rules))
