"""InceptionRunner on a random-init FID Inception, and `python -m vwt_jax.evaluate`.

The CLI test swaps the network for a small feature function: a Frechet step
on the real 2048-d features costs ~30 s of scipy sqrtm per metric on 2 cores,
and the maths is checked on the fixtures in test_adm_metrics.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

import helpers
from vwt_jax import evaluate
from vwt_jax.conversion import inception as inception_conversion
from vwt_jax.conversion import weights_npz
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.evaluation import adm_npz, evaluator
from vwt_jax.evaluation.fid import Statistics
from vwt_jax.models.inception import InceptionV3


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
  """He-normal kernels, zero beta/mean, unit variance, small fc: an .npz like the converters'."""
  rs = np.random.RandomState(0)
  flat = {}
  for key, shape in sorted(inception_conversion.expected_shapes().items()):
    if key.endswith("conv2d_params"):
      flat[key] = rs.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:3]))
    elif key.endswith("moving_variance"):
      flat[key] = np.ones(shape)
    elif key == inception_conversion.FC_WEIGHTS:
      flat[key] = rs.standard_normal(shape) * 0.05
    else:
      flat[key] = 0.1 * rs.standard_normal(shape)
  path = str(tmp_path_factory.mktemp("inception") / "inception_random.npz")
  weights_npz.write(flat, path)
  return path


def test_runner_matches_the_model_and_drops_padding(random_inception_weights):
  images = np.random.RandomState(1).randint(0, 256, (5, 40, 48, 3)).astype(np.uint8)
  # One device: partitioning the whole network over 8 CPU devices takes ~30 s
  # to compile; the sharded path is covered with injected features below.
  mesh = sharding_lib.create_mesh((1, 1, 1), devices=jax.devices()[:1])
  runner = evaluator.InceptionRunner(random_inception_weights, mesh=mesh, batch_size=2)
  # Forward passes of 2, 1 (+1 padding) and 2 images.
  acts = runner.activations([images[:3], images[3:]], total=5)
  assert acts.pool.shape == (5, 2048) and acts.spatial.shape == (5, 2023)
  assert acts.probs.shape == (5, 1008)
  params = inception_conversion.load_inception(random_inception_weights)
  pool, aux = jax.jit(lambda p, x: InceptionV3().apply({"params": p}, x))(params, images)
  # Batches of 2 and of 5: two fusions of one network. Longest sums: Mixed_7b's
  # 3x3 conv over 448 channels (4032), Mixed_6a's over 288 (2592) before the
  # sFID tap; depths as in test_inception's real-weights check (resize, 47 convs
  # or 28 to the tap, pool). A logit error e moves a probability by <= 2*p*e;
  # the logits' summed terms are |pool| @ |fc|, then the softmax's sum.
  helpers.assert_allclose_f32(acts.pool, pool, reduction=4032, depth=50)
  helpers.assert_allclose_f32(acts.spatial, aux["spatial"], reduction=2592, depth=30)
  logit_scale = (np.abs(pool) @ np.abs(params["softmax"]["weights"])).max()
  np.testing.assert_allclose(acts.probs, jax.nn.softmax(aux["logits"]), atol=0,
                             rtol=2 * helpers.f32_atol(logit_scale, reduction=4032, depth=52))
  assert np.abs(acts.pool[0] - acts.pool[1]).max() > 1e-3


def test_runner_without_weights_names_config_key(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match=r"eval\.inception_weights.*vwt_jax\.conversion\.inception"):
    evaluator.InceptionRunner("")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    evaluator.InceptionRunner(str(tmp_path / "missing.npz"))
  monkeypatch.delenv(evaluate.WEIGHTS_ENV, raising=False)
  adm_npz.write_samples(str(tmp_path / "a.npz"), np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"eval\.inception_weights"):
    evaluate.main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz")])


def _fake_apply(params, images):
  """Pool: 4x4 average pool of 16x16 images, 48-d; spatial: its first 20; logits: pool @ w."""
  x = images.astype(jnp.float32) / 255.0
  pool = x.reshape(x.shape[0], 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(x.shape[0], -1)
  return pool, {"spatial": pool[:, :20], "logits": pool @ params["w"]}


def _features(images, w):
  x = images.astype(np.float64) / 255.0
  pool = x.reshape(len(x), 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(len(x), -1)
  return pool, pool[:, :20], pool @ w


def _stats(features):
  return features.mean(0), np.cov(features, rowvar=False)


def _adm_fid(mu1, s1, mu2, s2):
  d = mu1 - mu2
  return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)


def _adm_is(logits):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  return np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0))), 1)))


def test_cli_end_to_end(tmp_path, monkeypatch, capsys):
  rs = np.random.RandomState(3)
  w = rs.standard_normal((48, 10)).astype(np.float32) * 5
  seen = []
  real_runner = evaluator.InceptionRunner

  def runner(weights_path, **kwargs):
    seen.append(weights_path)
    return real_runner(None, apply_fn=_fake_apply, params={"w": w}, **kwargs)

  monkeypatch.setattr(evaluator, "InceptionRunner", runner)
  monkeypatch.setenv(evaluate.WEIGHTS_ENV, "from_env.npz")
  base = rs.randint(0, 256, (1, 16, 16, 3))
  ref_images = np.clip(base + rs.randint(-60, 60, (40, 16, 16, 3)), 0, 255).astype(np.uint8)
  sample_images = np.clip(base + 8 + rs.randint(-60, 60, (30, 16, 16, 3)), 0, 255)
  sample_images = sample_images.astype(np.uint8)
  ref_path, sample_path = str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz")
  adm_npz.write_samples(ref_path, ref_images)
  adm_npz.write_samples(sample_path, sample_images, labels=np.arange(30))
  report = str(tmp_path / "report.json")

  metrics = evaluate.main([ref_path, sample_path, "--batch_size", "16", "--output", report])
  assert seen == ["from_env.npz"]
  lines = capsys.readouterr().out.splitlines()
  labels = [line.split(":")[0] for line in lines[-5:]]
  assert labels == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
  assert lines[-4] == f"FID: {metrics['fid']}"
  with open(report) as f:
    assert {k: v for k, v in json.load(f).items() if k in metrics} == metrics

  ref_pool, ref_spatial, _ = _features(ref_images, w)
  pool, spatial, logits = _features(sample_images, w)
  # The runner's features are float32 means of 16 pixels, the reference's
  # float64; the statistics are float64 from there. A relative change e of
  # every feature moves each quadratic term of FID (|mu1|^2, -2 mu1.mu2, |mu2|^2,
  # traces, -2 tr sqrt(S1 S2)) by <= 2e of it: the terms sum to at most
  # 2 * (E|x1|^2 + E|x2|^2), the scale.
  def fid_tol(x1, x2):
    return helpers.f32_atol(2 * (np.mean(x1 ** 2, 0).sum() + np.mean(x2 ** 2, 0).sum()),
                            reduction=16)

  assert metrics["fid"] == pytest.approx(_adm_fid(*_stats(pool), *_stats(ref_pool)),
                                         abs=fid_tol(pool, ref_pool))
  assert metrics["sfid"] == pytest.approx(_adm_fid(*_stats(spatial), *_stats(ref_spatial)),
                                          abs=fid_tol(spatial, ref_spatial))
  assert metrics["fid"] > 0.01 and metrics["sfid"] > 0.01
  # IS = exp(mean KL): its relative error is the KL's absolute one, of the
  # logits' magnitude. Longest sum: the 48-d logit dot; after the 16-pixel
  # mean: softmax, marginal, KL and row sums follow.
  assert metrics["inception_score"] == pytest.approx(
      _adm_is(logits), rel=helpers.f32_atol(np.abs(logits).max(), reduction=48, depth=6))
  assert 0 < metrics["precision"] <= 1 and 0 < metrics["recall"] <= 1

  # A reference batch with stored statistics: FID uses them, not its images.
  stored = Statistics(ref_pool.mean(0) + 0.1, np.cov(ref_pool, rowvar=False))
  stored_spatial = Statistics(*_stats(ref_spatial))
  adm_npz.write_reference(ref_path, ref_images, stored, stored_spatial)
  metrics_stored = evaluate.main([ref_path, sample_path, "--inception_weights", "flag.npz"])
  assert seen[-1] == "flag.npz"
  assert metrics_stored["fid"] == pytest.approx(_adm_fid(*_stats(pool), *stored),
                                                abs=fid_tol(pool, ref_pool + 0.1))
  # Stored float64 statistics of float64 features vs the runner's float32 ones.
  assert metrics_stored["sfid"] == pytest.approx(metrics["sfid"],
                                                 abs=fid_tol(spatial, ref_spatial))
  assert metrics_stored["precision"] == metrics["precision"]


def test_format_report_without_softmax():
  report = evaluator.format_report({"inception_score": None, "fid": 1.5, "sfid": 2.0,
                                    "precision": 0.5, "recall": 0.25})
  assert report.splitlines() == [
      "Inception Score: n/a (the Inception weights have no softmax/weights)", "FID: 1.5",
      "sFID: 2.0", "Precision: 0.5", "Recall: 0.25"]


def test_runner_injected_features_keep_order_across_batches():
  w = np.eye(48, 10, dtype=np.float32)
  # 8 test devices: batch_size 5 becomes 8, so 21 images run as 8 + 5 | 8 (padded).
  runner = evaluator.InceptionRunner(None, apply_fn=_fake_apply, params={"w": w}, batch_size=5)
  assert runner.batch_size == 8
  images = np.random.RandomState(4).randint(0, 256, (21, 16, 16, 3)).astype(np.uint8)
  acts = runner.activations(iter([images[:13], images[13:]]))
  pool, spatial, logits = _features(images, w)
  # float32 against float64: a mean of 16 pixels (<= 1); then the logits (one
  # term each here) go through the softmax's 10-term sum and a float32 log of
  # values up to |log p| (the summed terms' scale).
  helpers.assert_allclose_f32(acts.pool, pool, reduction=16)
  helpers.assert_allclose_f32(acts.spatial, spatial, reduction=16)
  helpers.assert_allclose_f32(np.log(acts.probs) - np.log(acts.probs[:, :1]),
                              logits - logits[:, :1], reduction=16, depth=2,
                              scale=np.abs(np.log(acts.probs)).max())
  with pytest.raises(ValueError, match=r"expected \[N, H, W, 3\]"):
    runner.activations([images[:, :, :, 0]])
  with pytest.raises(ValueError, match="apply_fn needs params"):
    evaluator.InceptionRunner(None, apply_fn=_fake_apply)
