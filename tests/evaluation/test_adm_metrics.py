"""ADM evaluator maths: statistics, FID, IS, precision/recall, npz batches, parity."""

import json
import os
import shutil
import warnings
import zipfile

import numpy as np
import pytest
from scipy import linalg

import helpers
from vwt_jax.evaluation import adm_npz
from vwt_jax.evaluation.fid import FeatureStatistics, Statistics, frechet_distance
from vwt_jax.evaluation.inception_score import inception_score
from vwt_jax.evaluation.precision_recall import (ManifoldEstimator, pairwise_distances,
                                                 precision_recall, uses_float32)
from vwt_jax.tools import parity


def test_parity_adm_eval_passes_on_fixtures(fixtures_dir, capsys):
  assert parity.main(["adm-eval", os.path.join(fixtures_dir, "eval")]) == 0
  out = capsys.readouterr().out
  for name in ("fid/c0/fid", "prec_recall/c1/radii_ref", "prec_recall/pd_out_big",
               "is/c0/is_from_preds", "resize/c0/out"):
    assert name in out
  assert "0 failed" in out


def test_parity_adm_eval_fails_on_perturbed_unknown_and_missing(fixtures_dir, tmp_path, capsys):
  src = os.path.join(fixtures_dir, "eval")
  shutil.copy(os.path.join(src, "eval_meta.json"), tmp_path)
  with np.load(os.path.join(src, "fid_cases.npz")) as data:
    arrays = {k: data[k] for k in data.files}
  arrays["c0_fid"] = arrays["c0_fid"] * (1 + 1e-5)
  arrays["mystery"] = np.zeros(2)
  np.savez(tmp_path / "fid_cases.npz", **arrays)
  assert parity.main(["adm-eval", str(tmp_path)]) == 1
  failed = [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.endswith("FAIL")]
  assert failed == ["fid/c0/fid", "fid_cases.npz/mystery",
                    str(tmp_path / "prec_recall_cases.npz"), str(tmp_path / "is_cases.npz"),
                    str(tmp_path / "resize_cases.npz")]


def test_streaming_statistics_merge_equals_one_shot():
  rs = np.random.RandomState(0)
  # A large common offset, as pool_3 features have, stresses cancellation.
  x = (1e3 + rs.standard_normal((300, 5)) @ rs.standard_normal((5, 5))).astype(np.float32)
  parts = [FeatureStatistics(5).update(x[:7]).update(x[7:100]),
           FeatureStatistics(5).update(x[100:101]),
           FeatureStatistics(5).update(x[101:] - 0).update(np.zeros((0, 5)))]
  merged = FeatureStatistics(5)
  for p in parts:
    merged.merge(p)
  merged.merge(FeatureStatistics(5))
  x64 = x.astype(np.float64)
  assert merged.count == 300
  # float64 throughout: sums of 300 rows differ by at most 2*300*2^-53 ~ 7e-14
  # relative. The covariance's terms carry the 1e3 offset's rounding, ~1e3 times
  # their own (deviations ~1.5): ~7e-11 of entries that all lie in [1.0, 6.2].
  np.testing.assert_allclose(merged.mu, x64.mean(0), rtol=1e-13)
  np.testing.assert_allclose(merged.sigma, np.cov(x64, rowvar=False), rtol=1e-9)
  np.testing.assert_allclose(FeatureStatistics.from_activations(x, chunk=64).sigma,
                             np.cov(x64, rowvar=False), rtol=1e-9)
  with pytest.raises(ValueError, match=r"expected \[B, 5\]"):
    merged.update(np.zeros((2, 4)))
  with pytest.raises(ValueError, match="at least 2 rows"):
    _ = FeatureStatistics(5).update(x[:1]).sigma


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
  mu1, mu2 = np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 1.0])
  s1, s2 = np.diag([4.0, 1.0, 9.0]), np.diag([1.0, 1.0, 4.0])
  # |d|^2 + sum (sqrt(a) - sqrt(b))^2 for commuting diagonal covariances.
  expected = 6.0 + (2 - 1) ** 2 + 0 + (3 - 2) ** 2
  # float64 on 3x3 matrices with exact square roots: a few 2^-53 roundings.
  assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_eps_branch_on_singular_product():
  # Two points per set: rank-1 covariances whose product scipy cannot root.
  samples = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, -1.0]])
  ref = np.array([[1.0, 1.0, 1.0], [3.0, 0.0, 2.0]])
  s = FeatureStatistics.from_activations(samples).statistics()
  r = FeatureStatistics.from_activations(ref).statistics()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    assert not np.isfinite(linalg.sqrtm(s.sigma @ r.sigma)).all()
    with pytest.warns(UserWarning, match="adding 1e-06 to the diagonals"):
      fid = frechet_distance(*s, *r)
  offset = 1e-6 * np.eye(3)
  eig = np.linalg.eigvals((s.sigma + offset) @ (r.sigma + offset)).real
  d = s.mu - r.mu
  expected = d @ d + np.trace(s.sigma) + np.trace(r.sigma) - 2 * np.sum(np.sqrt(eig.clip(0)))
  # float64, but the two eigenvalues near eps^2 = 1e-12 are known only to
  # ~|S|*2^-53 ~ 1e-15, their roots to ~1e-15 / (2 * 1e-6) ~ 1e-9, of a FID of 7.7.
  assert fid == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_imaginary_component():
  mu = np.zeros(2)
  with pytest.raises(ValueError, match="imaginary component"):
    frechet_distance(mu, np.eye(2), mu, -np.eye(2))
  # A tiny negative eigenvalue gives |imag| = 1e-4 <= 1e-3: accepted, real part used.
  fid = frechet_distance(mu, np.eye(2), mu, np.diag([1.0, -1e-8]))
  # float64 sums of values ~2: rounding ~1e-15.
  assert fid == pytest.approx(2 + (1 - 1e-8) - 2 * 1.0, abs=1e-12)


def test_inception_score_short_last_split():
  rs = np.random.RandomState(1)
  logits = rs.standard_normal((7, 5)) * 2
  probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)

  def score(p):
    p = p.astype(np.float64)
    marginal = p.mean(0)
    return np.exp(np.mean([np.sum(row * np.log(row / marginal)) for row in p]))

  expected = np.mean([score(probs[0:3]), score(probs[3:6]), 1.0])
  # Scored in float32 against float64: IS = exp(mean KL), so its relative error
  # is the KL's absolute one. Sums over <= 7 rows, 3 in sequence (marginal,
  # classes, rows), of p * log terms below 10 (probabilities > 2.8e-4).
  rel = helpers.f32_atol(10.0, reduction=7, depth=3)
  assert inception_score(probs, split_size=3) == pytest.approx(expected, rel=rel)
  assert inception_score(probs) == pytest.approx(score(probs), rel=rel)
  with pytest.raises(ValueError, match="split_size"):
    inception_score(probs, split_size=0)


def test_pairwise_distances_float16_and_float32_fallback():
  u = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
  v = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
  np.testing.assert_array_equal(pairwise_distances(u, v), [[0, 1], [25, 20]])
  assert not uses_float32(u, v)
  # |u|^2 = 90000 overflows float16 (max 65504): the block is redone in float32.
  big = np.array([[300.0, 0.0], [0.0, 1.0]], np.float32)
  assert uses_float32(big, big)
  np.testing.assert_array_equal(pairwise_distances(big, big), [[0, 90001], [90001, 0]])
  # Without overflow the input and the square are rounded to float16.
  tenth = np.float16(np.float32(np.float16(0.1)) ** 2)
  assert tenth != np.float32(0.1) ** 2
  assert pairwise_distances(np.zeros((1, 1)), np.full((1, 1), 0.1))[0, 0] == tenth


def _exact_precision_recall(ref, samples):
  """Float64 brute force; matches float16 when every value is a multiple of 1/16 below 128."""
  def sq(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  radii_ref = np.sort(sq(ref, ref), 1)[:, 3]
  radii_sample = np.sort(sq(samples, samples), 1)[:, 3]
  d = sq(ref, samples)
  return (np.mean((d <= radii_ref[:, None]).any(0)), np.mean((d <= radii_sample[None, :]).any(1)))


def test_manifold_radii_and_precision_recall_on_a_grid():
  grid = np.stack(np.meshgrid(np.arange(6.0), np.arange(5.0)), -1).reshape(-1, 2)
  estimator = ManifoldEstimator(row_batch_size=7, col_batch_size=4)
  radii = estimator.manifold_radii(grid)
  # Self, then 4 neighbours at distance 1 (interior) or 1, 1, 2 (corner).
  corner = np.flatnonzero((grid == [0, 0]).all(1))[0]
  interior = np.flatnonzero((grid == [2, 2]).all(1))[0]
  assert radii[interior, 0] == 1.0 and radii[corner, 0] == 2.0
  np.testing.assert_array_equal(radii, ManifoldEstimator().manifold_radii(grid))
  assert estimator.block_counts["float16"] == 5 * 8 and estimator.block_counts["float32"] == 0
  near = grid[:10] + 0.25
  far = np.concatenate([near, grid[:10] + [0.0, 8.0]])
  precision, recall = precision_recall(grid, near)
  assert precision == 1.0 and 0 < recall < 1
  assert (precision, recall) == _exact_precision_recall(grid, near)
  precision, recall = precision_recall(grid, far, ManifoldEstimator(8, 3))
  assert precision == 0.5
  assert (precision, recall) == _exact_precision_recall(grid, far)
  with pytest.raises(ValueError, match="more than 3 feature rows"):
    ManifoldEstimator().manifold_radii(grid[:3])


def _write_member(path, name, array):
  with zipfile.ZipFile(path, "w") as archive:
    with archive.open(f"{name}.npy", "w") as f:
      np.lib.format.write_array(f, array)


def test_npz_reader_streams_batches_and_round_trips(tmp_path):
  rs = np.random.RandomState(2)
  images = rs.randint(0, 256, (10, 4, 5, 3)).astype(np.uint8)
  path = str(tmp_path / "samples.npz")
  adm_npz.write_samples(path, images, labels=np.arange(10))
  with adm_npz.open_images(path) as reader:
    assert len(reader) == 10
    batches = list(reader.batches(4))
  assert [len(b) for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate(batches), images)
  with np.load(path) as data:
    assert sorted(data.files) == ["arr_0", "arr_1"]
    np.testing.assert_array_equal(data["arr_1"], np.arange(10))
  assert adm_npz.read_statistics(path) is None

  ref_path = str(tmp_path / "ref.npz")
  pool = Statistics(np.arange(3.0), np.eye(3))
  spatial = Statistics(np.ones(2), 2 * np.eye(2))
  adm_npz.write_reference(ref_path, images[:2], pool, spatial)
  stored_pool, stored_spatial = adm_npz.read_statistics(ref_path)
  np.testing.assert_array_equal(stored_pool.mu, pool.mu)
  np.testing.assert_array_equal(stored_spatial.sigma, spatial.sigma)


def test_npz_reader_errors_name_the_file(tmp_path):
  floats = str(tmp_path / "floats.npz")
  np.savez(floats, arr_0=np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r"floats\.npz: arr_0: dtype float32, expected uint8"):
    with adm_npz.open_images(floats):
      pass
  no_images = str(tmp_path / "no_images.npz")
  np.savez(no_images, images=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match=r"no_images\.npz has no array 'arr_0'"):
    with adm_npz.open_images(no_images):
      pass
  gray = str(tmp_path / "gray.npz")
  np.savez(gray, arr_0=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(ValueError, match=r"gray\.npz: arr_0: shape \(2, 4, 4\)"):
    with adm_npz.open_images(gray):
      pass
  truncated = str(tmp_path / "truncated.npz")
  _write_member(truncated, "arr_0", np.zeros((3, 2, 2, 3), np.uint8))
  with zipfile.ZipFile(truncated) as archive:
    member = archive.read("arr_0.npy")
  with zipfile.ZipFile(truncated, "w") as archive:
    archive.writestr("arr_0.npy", member[:-5])
  with adm_npz.open_images(truncated) as reader:
    with pytest.raises(ValueError, match=r"truncated\.npz: arr_0 ends after"):
      list(reader.batches(2))
  text = tmp_path / "text.npz"
  text.write_text("not a zip")
  with pytest.raises(ValueError, match=r"text\.npz is not an \.npz"):
    with adm_npz.open_images(str(text)):
      pass
  partial = str(tmp_path / "partial.npz")
  np.savez(partial, arr_0=np.zeros((1, 2, 2, 3), np.uint8), mu=np.zeros(3))
  with pytest.raises(ValueError, match=r"partial\.npz has precomputed 'mu' but lacks"):
    adm_npz.read_statistics(partial)
  with pytest.raises(ValueError, match=r"write_samples\(.*\) images: dtype float32"):
    adm_npz.write_samples(str(tmp_path / "x.npz"), np.zeros((1, 2, 2, 3), np.float32))


def test_parity_reads_batch_sizes_from_meta(fixtures_dir, tmp_path, capsys):
  src = os.path.join(fixtures_dir, "eval")
  with open(os.path.join(src, "eval_meta.json")) as f:
    meta = json.load(f)
  meta["prec_recall"] = meta["prec_recall"][1:]
  meta["inception_score"] = []
  with open(tmp_path / "eval_meta.json", "w") as f:
    json.dump(meta, f)
  for name in ("prec_recall_cases.npz", "is_cases.npz"):
    shutil.copy(os.path.join(src, name), tmp_path)
  assert parity.main(["adm-eval", str(tmp_path)]) == 1
  failed = [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.endswith("FAIL")]
  assert "prec_recall/c0" in failed and "is/c0" in failed and "is/c1" in failed
  assert not any(name.startswith("prec_recall/c1") for name in failed)
