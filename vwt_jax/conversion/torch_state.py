"""Reading PyTorch state dicts and turning torch layouts into Flax params.

Converters read keys through a `StateDictReader`, which records missing and
unused keys, then call `check_params` against the model's abstract init so
that every problem surfaces in a single error. An array of the wrong number of
dimensions for its transpose or split is reported at once.
"""

import argparse
import io
import os
from typing import Any, Callable, Iterable, Mapping, Optional

from etils import epath
import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from vwt_jax.core import files

# Checkpoints saved as {'model': sd} or {'state_dict': sd}.
_NESTING_KEYS = ("model", "state_dict")


class ConversionError(ValueError):
  """A state dict does not match the model it is converted for."""


class StateDict(dict):
  """Arrays by state-dict key, and the file they were read from, for error messages."""

  def __init__(self, arrays: Mapping[str, np.ndarray], path: str):
    super().__init__(arrays)
    self.path = path


def _type_name(obj) -> str:
  cls = type(obj)
  module = "" if cls.__module__ == "builtins" else f"{cls.__module__}."
  return module + cls.__qualname__


def _unwrap(obj: Mapping[str, Any]) -> Mapping[str, Any]:
  for key in _NESTING_KEYS:
    if key in obj and isinstance(obj[key], Mapping):
      return obj[key]
  return obj


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype in (torch.bfloat16, torch.float16):
    tensor = tensor.float()
  return tensor.detach().cpu().numpy()


def load_state_dict(path: str) -> StateDict:
  """Loads `.npz`, `.safetensors` or torch `.bin/.pt/.pth` into numpy arrays.

  A URL (`gs://...`) is read whole into memory first: the readers below take
  local paths or in-memory files only.

  Raises:
    ValueError: an unsupported extension, or a torch file that holds something
      other than a state dict (e.g. a bare tensor).
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".npz", ".safetensors", ".bin", ".pt", ".pth"):
    raise ValueError(f"unsupported checkpoint format {ext!r} for {path}")
  source = io.BytesIO(epath.Path(path).read_bytes()) if files.is_remote(path) else path
  if ext == ".npz":
    with np.load(source, allow_pickle=False) as data:
      return StateDict({k: data[k] for k in data.files}, path)
  if ext == ".safetensors":
    from safetensors import numpy as safetensors_np  # pylint: disable=g-import-not-at-top
    arrays = (safetensors_np.load(source.getvalue()) if isinstance(source, io.BytesIO)
              else safetensors_np.load_file(source))
    return StateDict(_unwrap(arrays), path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs PyTorch (pip install 'vwt_jax[torch]'); "
        "or convert it to .safetensors / .npz first") from e
  # The official training checkpoints pickle their argparse `args` next to the
  # weights; allow-listing that one plain class keeps the restricted unpickler.
  with torch.serialization.safe_globals([argparse.Namespace]):
    obj = torch.load(source, map_location="cpu", weights_only=True)
  if not isinstance(obj, Mapping):
    raise ValueError(
        f"{path} holds a {_type_name(obj)}; expected a state dict (a dict of parameter "
        f"names to tensors), or a dict holding one under {' or '.join(map(repr, _NESTING_KEYS))}")
  return StateDict({k: _torch_to_numpy(v) for k, v in _unwrap(obj).items()
                    if isinstance(v, torch.Tensor)}, path)


def as_state_dict(path_or_state_dict: Any) -> Mapping[str, Any]:
  """`load_state_dict(path)` of a path (str); a state dict is returned as it is."""
  if isinstance(path_or_state_dict, str):
    return load_state_dict(path_or_state_dict)
  return path_or_state_dict


class StateDictReader:
  """Key access that remembers missing and unused keys for `check_params`."""

  def __init__(self, state_dict: Mapping[str, Any]):
    self._sd = {k: np.asarray(v) for k, v in state_dict.items()}
    self._used: set[str] = set()
    self.missing: list[str] = []
    # What errors name: the file of a `load_state_dict` result.
    self.source = getattr(state_dict, "path", "") or "the state dict"

  def __contains__(self, key: str) -> bool:
    return key in self._sd

  def get(self, key: str, ndim: Optional[int] = None) -> Optional[np.ndarray]:
    """The array under `key`, or None (recorded as missing).

    Raises:
      ConversionError: the array has another number of dimensions than `ndim`,
        the number the caller's transpose or reshape needs (None = any).
    """
    if key not in self._sd:
      self.missing.append(key)
      return None
    self._used.add(key)
    array = self._sd[key]
    if ndim is not None and array.ndim != ndim:
      raise ConversionError(f"{self.source}: {key} has shape {array.shape} ({array.ndim}-d); "
                            f"expected a {ndim}-d array")
    return array

  def unused(self) -> list[str]:
    return sorted(set(self._sd) - self._used)


def _apply(array: Optional[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]):
  return None if array is None else fn(array)


def _drop_none(tree: dict) -> dict:
  return {k: v for k, v in tree.items() if v is not None}


def prune_missing(tree: dict) -> dict:
  """Drops leaves of missing keys (and subtrees left empty); `check_params` reports them."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      v = prune_missing(v)
      if v:
        out[k] = v
    elif v is not None:
      out[k] = v
  return out


def reshape_checked(array: Optional[np.ndarray], shape: tuple) -> Optional[np.ndarray]:
  """`array` in our layout `shape` (e.g. a fused projection split into heads).

  A wrong size is left as it is, so that `check_params` reports it with its shape.
  """
  if array is None or array.size != int(np.prod(shape)):
    return array
  return array.reshape(shape)


def _kernel_and_bias(sd: StateDictReader, prefix: str, bias: bool, ndim: int,
                     fn: Callable[[np.ndarray], np.ndarray]) -> dict:
  return _drop_none({"kernel": _apply(sd.get(f"{prefix}.weight", ndim=ndim), fn),
                     "bias": sd.get(f"{prefix}.bias") if bias else None})


def linear(sd: StateDictReader, prefix: str, bias: bool = True) -> dict:
  """torch Linear (out,in) -> Dense kernel (in,out)."""
  return _kernel_and_bias(sd, prefix, bias, 2, lambda w: w.T)


def conv1x1_as_linear(sd: StateDictReader, prefix: str, bias: bool = True) -> dict:
  """torch 1x1 Conv2d (O,I,1,1) -> Dense kernel (I,O)."""
  return _kernel_and_bias(sd, prefix, bias, 4, lambda w: w.reshape(w.shape[:2]).T)


def conv(sd: StateDictReader, prefix: str, bias: bool = True) -> dict:
  """torch Conv2d (O,I,kh,kw) -> Flax Conv kernel (kh,kw,I,O)."""
  return _kernel_and_bias(sd, prefix, bias, 4, lambda w: w.transpose(2, 3, 1, 0))


def heads_linear(sd: StateDictReader, prefix: str, dim: int, heads: int, head_dim: int,
                 bias: bool = True, out: bool = False) -> dict:
  """torch Linear -> kernel (dim, heads, head_dim) and bias (heads, head_dim), or
  with `out` an output projection's kernel (heads, head_dim, dim) and bias (dim,)."""
  dense = linear(sd, prefix, bias)
  if out:
    return {"kernel": reshape_checked(dense.get("kernel"), (heads, head_dim, dim)),
            "bias": dense.get("bias")}
  return {"kernel": reshape_checked(dense.get("kernel"), (dim, heads, head_dim)),
          "bias": reshape_checked(dense.get("bias"), (heads, head_dim))}


def norm(sd: StateDictReader, prefix: str) -> dict:
  """LayerNorm / GroupNorm weight, bias -> scale, bias."""
  return _drop_none({"scale": sd.get(f"{prefix}.weight"), "bias": sd.get(f"{prefix}.bias")})


def embedding(sd: StateDictReader, key: str) -> dict:
  """nn.Embedding (num, dim) -> Flax Embed, same layout."""
  return _drop_none({"embedding": sd.get(key)})


def multihead_attention(sd: StateDictReader, prefix: str, num_heads: int) -> dict:
  """torch nn.MultiheadAttention (packed in_proj rows [q; k; v]) -> `layers.MultiHeadAttention`.

  query/key/value kernels (embed, heads, head_dim), out kernel (heads, head_dim, embed).
  """
  tree = {}
  w_in = sd.get(f"{prefix}.in_proj_weight", ndim=2)
  b_in = sd.get(f"{prefix}.in_proj_bias", ndim=1)
  for i, name in enumerate(("query", "key", "value")):
    def rows(a, i=i):
      third = a.shape[0] // 3
      return a[i * third:(i + 1) * third]
    tree[name] = _drop_none({
        "kernel": _apply(w_in, lambda w: rows(w).T.reshape(w.shape[1], num_heads, -1)),
        "bias": _apply(b_in, lambda b: rows(b).reshape(num_heads, -1)),
    })
  tree["out"] = _drop_none({
      "kernel": _apply(sd.get(f"{prefix}.out_proj.weight", ndim=2),
                       lambda w: w.T.reshape(num_heads, -1, w.shape[0])),
      "bias": sd.get(f"{prefix}.out_proj.bias"),
  })
  return tree


def _flatten_shapes(tree) -> dict[str, tuple]:
  flat = traverse_util.flatten_dict(nn.meta.unbox(tree), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_params(params: Mapping[str, Any], expected: Mapping[str, Any],
                 reader: Optional[StateDictReader] = None,
                 ignore_unused: Iterable[str] = ()) -> None:
  """Raises one `ConversionError` listing every mismatch between trees.

  Args:
    params: converted parameter tree.
    expected: abstract tree (e.g. `jax.eval_shape(model.init, ...)['params']`,
      boxed or not).
    reader: if given, its missing keys and never-read keys are reported too.
    ignore_unused: state-dict keys that may legitimately be left unread.
  """
  got, want = _flatten_shapes(params), _flatten_shapes(expected)
  problems = []
  if reader is not None:
    problems += [f"  missing state-dict key: {k}" for k in reader.missing]
    skip = set(ignore_unused)
    problems += [f"  unexpected state-dict key: {k}" for k in reader.unused() if k not in skip]
  problems += [f"  missing param: {k} {want[k]}" for k in sorted(set(want) - set(got))]
  problems += [f"  unexpected param: {k} {got[k]}" for k in sorted(set(got) - set(want))]
  problems += [f"  shape mismatch: {k} converted {got[k]} vs model {want[k]}"
               for k in sorted(set(got) & set(want)) if got[k] != want[k]]
  if problems:
    source = reader.source if reader is not None else "the state dict"
    raise ConversionError(f"{source} does not match the model:\n" + "\n".join(problems))


def cast_tree(params, dtype) -> Any:
  """Leaves -> host numpy arrays, floats in `dtype` (integers are left alone).

  Host memory on purpose: the caller places the tree (sharded), so a
  converted 7B model never has to fit on one accelerator.
  """
  dtype = jax.numpy.dtype(dtype)

  def cast(x):
    x = np.asarray(x)
    return x.astype(dtype) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x
  return jax.tree_util.tree_map(cast, params)
