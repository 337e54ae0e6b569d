"""`parity adm-eval`: the ADM evaluator's metrics against `tests/fixtures/eval`.

Files: `fid_cases.npz`, `prec_recall_cases.npz`, `is_cases.npz`,
`resize_cases.npz` (cases `c{i}_*`, any number of them) and `eval_meta.json`
for the per-case settings the arrays do not hold (precision/recall block
sizes, IS split sizes).

`parity lpips` (`run_lpips`): LPIPS v0.1 against `lpips_cases.npz` /
`lpips_meta.json`.
"""

import collections
import functools
import hashlib
import os
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import lpips as lpips_conversion
from vwt_jax.conversion import torch_state
from vwt_jax.evaluation.fid import FeatureStatistics, frechet_distance
from vwt_jax.evaluation.inception_score import class_probabilities, inception_score
from vwt_jax.evaluation.precision_recall import (ManifoldEstimator, pairwise_distances,
                                                 uses_float32)
from vwt_jax.models import lpips as lpips_model
from vwt_jax.models.inception import tf1_resize_bilinear
from vwt_jax.tools.parity_common import (Result, compare_io, load_arrays, load_json, missing,
                                         missing_files)

META = "eval_meta.json"
_CASE = re.compile(r"^(c\d+)_(.+)$")

# Tolerances of the fixture README, with the deviations explained where used.
STATS_RTOL = 1e-6
FID_TOL = dict(atol=0.0, rtol=1e-6)
# N <= D: scipy's sqrtm of a singular product is ill-conditioned.
FID_RANK_DEFICIENT_TOL = dict(atol=0.0, rtol=1e-4)
FID_SAME_TOL = dict(atol=1e-6, rtol=0.0)
# Radii are float16 values. TF-CPU's half arithmetic rounds the norms and the
# dot product differently from the exactly-rounded emulation; each is up to
# ~2.4e-3 from the float64 distance on the fixtures, so the two may differ
# by ~5 float16 ulps (2^-10 relative at the bottom of a binade): 3.2e-3 is
# seen on `default_batches`.
RADII_FP16_TOL = dict(atol=0.0, rtol=5e-3)
RADII_FP32_TOL = dict(atol=0.0, rtol=1e-5)
PD_FP16_RTOL_OF_MAX = 3e-3
PD_FP32_TOL = dict(atol=0.0, rtol=1e-5)
# TF's CPU matmul/softmax round differently in float32: a logit's rounding
# error (a few eps32 * |logit|) is the relative error it gives its
# probability, so the README's atol 1e-7 alone is unattainable near p ~ 1
# (2.4e-7 seen with logits up to 14); rtol scales with the largest logit.
PREDS_ATOL = 1e-7
PREDS_RTOL_PER_LOGIT = 4 * float(np.finfo(np.float32).eps)
IS_TOL = dict(atol=0.0, rtol=1e-5)
RESIZE_TOL = dict(atol=5e-3, rtol=0.0)


def _split_cases(arrays: dict) -> tuple[dict[str, dict], dict]:
  """{case: {name: array}} for `c{i}_name` keys, and the remaining keys."""
  cases, rest = collections.defaultdict(dict), {}
  for key, value in arrays.items():
    m = _CASE.match(key)
    if m:
      cases[m.group(1)][m.group(2)] = value
    else:
      rest[key] = value
  return dict(sorted(cases.items(), key=lambda kv: int(kv[0][1:]))), rest


def _meta_case(meta: dict, group: str, case: str) -> Optional[dict]:
  return next((e for e in meta.get(group, []) if f"c{e['case']}" == case), None)


def _no_meta(label: str, group: str) -> list[Result]:
  return [Result.failed(label, f"no {group} entry in {META}")]


def _fid_case(case: str, io: dict) -> list[Result]:
  ours = {}
  for role in ("a", "b"):
    acts = io.get(f"acts_{role}")
    if acts is not None:
      stats = FeatureStatistics.from_activations(acts, chunk=max(1, len(acts) // 3))
      ours[f"mu_{role}"], ours[f"sigma_{role}"] = stats.mu, stats.sigma
  if "mu_a" in ours and "mu_b" in ours:
    # ADM: sample_stats.frechet_distance(ref_stats), b being the sample role.
    ours["fid"] = frechet_distance(ours["mu_b"], ours["sigma_b"], ours["mu_a"], ours["sigma_a"])

  def tolerance(name: str, ref: np.ndarray) -> dict:
    if name.startswith("mu_"):
      # ADM's mean of float32 activations is float32 with summation error of
      # order eps32 * |acts|, not eps32 * |mu| (near-zero means are far off
      # relatively); ours is float64.
      scale = float(np.max(np.abs(io[f"acts_{name[3:]}"])))
      return dict(atol=STATS_RTOL * scale, rtol=STATS_RTOL)
    if name.startswith("sigma_"):
      return dict(atol=0.0, rtol=STATS_RTOL)
    a, b = io["acts_a"], io["acts_b"]
    if a.shape == b.shape and np.array_equal(a, b):
      return FID_SAME_TOL
    if min(len(a), len(b)) <= a.shape[1]:
      return FID_RANK_DEFICIENT_TOL
    return FID_TOL

  return compare_io(f"fid/{case}", io, ours, ("acts_a", "acts_b"), tolerance)


def _prec_recall_case(case: str, io: dict, meta: dict) -> list[Result]:
  entry = _meta_case(meta, "prec_recall", case)
  if entry is None:
    return _no_meta(f"prec_recall/{case}", "prec_recall")
  if "ref" not in io or "sample" not in io:
    return compare_io(f"prec_recall/{case}", io, {})
  rows, cols = int(entry["row_batch_size"]), int(entry["col_batch_size"])
  nhood_sizes = entry.get("nhood_sizes", (3,))
  ref, sample = io["ref"], io["sample"]
  ours, float32_path = {}, {}
  for role, features in (("ref", ref), ("sample", sample)):
    estimator = ManifoldEstimator(rows, cols, nhood_sizes)
    ours[f"radii_{role}"] = estimator.manifold_radii(features)
    # The tight tolerance holds only if no block took the float16 path.
    float32_path[role] = estimator.block_counts["float16"] == 0
  precision, recall = ManifoldEstimator(rows, cols, nhood_sizes).evaluate_pr(
      ref, ours["radii_ref"], sample, ours["radii_sample"])
  ours["precision"], ours["recall"] = precision[0], recall[0]

  def tolerance(name: str, ref_value: np.ndarray) -> dict:
    # One flipped point in either direction is within float16 noise.
    if name == "precision":
      return dict(atol=2.0 / len(sample), rtol=0.0)
    if name == "recall":
      return dict(atol=2.0 / len(ref), rtol=0.0)
    return RADII_FP32_TOL if float32_path[name[len("radii_"):]] else RADII_FP16_TOL

  return compare_io(f"prec_recall/{case}", io, ours, ("ref", "sample"), tolerance)


def _pairwise_arrays(rest: dict) -> list[Result]:
  """`pd_u{s}`, `pd_v{s}` inputs -> `pd_out{s}` for every suffix s."""
  ours, inputs = {}, []
  for key in rest:
    if key.startswith("pd_out"):
      suffix = key[len("pd_out"):]
      u, v = rest.get("pd_u" + suffix), rest.get("pd_v" + suffix)
      if u is not None and v is not None:
        ours[key] = pairwise_distances(u, v)
        inputs += ["pd_u" + suffix, "pd_v" + suffix]

  def tolerance(name: str, ref: np.ndarray) -> dict:
    suffix = name[len("pd_out"):]
    if uses_float32(rest["pd_u" + suffix], rest["pd_v" + suffix]):
      return PD_FP32_TOL
    return dict(atol=PD_FP16_RTOL_OF_MAX * float(np.max(np.abs(ref))), rtol=0.0)

  return compare_io("prec_recall", rest, ours, inputs, tolerance)


def _is_case(case: str, io: dict, meta: dict) -> list[Result]:
  entry = _meta_case(meta, "inception_score", case)
  if entry is None:
    return _no_meta(f"is/{case}", "inception_score")
  split_size = int(entry["split_size"])
  preds = class_probabilities(io["acts"], io["W"])
  ours = {"preds": preds, "is": inception_score(preds, split_size),
          "is_from_preds": inception_score(io["preds"], split_size)}
  max_logit = float(np.max(np.abs(io["acts"].astype(np.float64) @ io["W"])))

  def tolerance(name: str, ref: np.ndarray) -> dict:
    if name == "preds":
      return dict(atol=PREDS_ATOL, rtol=PREDS_RTOL_PER_LOGIT * max_logit)
    return IS_TOL

  return compare_io(f"is/{case}", io, ours, ("acts", "W"), tolerance)


def _resize_case(case: str, io: dict) -> list[Result]:
  ours = {}
  if "in_uint8" in io and "out" in io:
    _, height, width, _ = io["out"].shape
    ours["out"] = np.asarray(tf1_resize_bilinear(io["in_uint8"], height, width))
  return compare_io(f"resize/{case}", io, ours, ("in_uint8",), lambda name, ref: RESIZE_TOL)


def run_adm_eval(fixture_dir: str) -> list[Result]:
  """Every array of the four eval fixture files, compared or declared an input."""
  meta = load_json(fixture_dir, META) if os.path.exists(os.path.join(fixture_dir, META)) else {}
  results = []

  def each_file(name: str, per_case, per_rest=None):
    path = os.path.join(fixture_dir, name)
    if not os.path.exists(path):
      results.extend(missing(path))
      return
    cases, rest = _split_cases(load_arrays(fixture_dir, name))
    if not cases:
      results.extend(missing(f"{path}: c{{i}}_* cases"))
    for case, io in cases.items():
      results.extend(per_case(case, io))
    results.extend(per_rest(rest) if per_rest else compare_io(name, rest, {}))

  each_file("fid_cases.npz", _fid_case)
  each_file("prec_recall_cases.npz", lambda c, io: _prec_recall_case(c, io, meta),
            _pairwise_arrays)
  each_file("is_cases.npz", lambda c, io: _is_case(c, io, meta))
  each_file("resize_cases.npz", _resize_case)
  return results


# LPIPS: lpips_cases.npz / lpips_meta.json, the `lpips` wheel (v0.1) on backbones
# regenerated from the README's numpy recipe.
LPIPS_DIST_TOL = dict(atol=1e-7, rtol=1e-4)
LPIPS_SPATIAL_TOL = dict(atol=1e-5, rtol=0.0)


def lpips_backbone(entries: list[dict], seed: int) -> tuple[dict[str, np.ndarray], list[str]]:
  """The fixture README's backbone recipe, in `entries` order.

  Returns the state dict (official `net.slice{s}.{idx}.*` keys) and the keys
  whose sha256 prefix differs from the one recorded in lpips_meta.json.
  """
  rs = np.random.RandomState(seed)
  state_dict, mismatched = {}, []
  for entry in entries:
    shape = tuple(entry["shape"])
    if entry["key"].endswith("weight"):
      a = rs.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    else:
      a = 0.05 * rs.standard_normal(shape)
    a = a.astype(np.float32)
    if not hashlib.sha256(a.tobytes()).hexdigest().startswith(entry["sha256"]):
      mismatched.append(entry["key"])
    state_dict[entry["key"]] = a
  return state_dict, mismatched


@functools.lru_cache(maxsize=4)
def _lpips_forward(net: str):
  """One jitted forward per net: [-1, 1] inputs, and the same pair on [0, 1]."""
  model = lpips_model.LPIPS(net)

  def forward(params, x0, x1):
    dist, aux = model.apply({"params": params}, x0, x1)
    dist01, _ = model.apply({"params": params}, (x0 + 1) / 2, (x1 + 1) / 2, normalize=True)
    return dist, dist01, aux

  return jax.jit(forward)


def _lpips_tolerance(name: str, ref: np.ndarray) -> dict:
  del ref
  return LPIPS_SPATIAL_TOL if name.endswith("_spatial") else LPIPS_DIST_TOL


def run_lpips(fixture_dir: str) -> list[Result]:
  """Every net of lpips_meta.json: dist, dist_normalize01, per_layer and spatial maps."""
  if absent := missing_files(fixture_dir, "lpips_", ("meta.json", "cases.npz")):
    return absent
  meta, io = load_json(fixture_dir, "lpips_meta.json"), load_arrays(fixture_dir, "lpips_cases.npz")
  x0, x1 = (jnp.asarray(io[k].transpose(0, 2, 3, 1)) for k in ("in0", "in1"))
  results, ours, inputs = [], {}, {"in0", "in1"}
  for net, spec in meta["nets"].items():
    # The lin heads (and their `lins.` aliases, scaling constants) feed the converter.
    heads = {k[len(net) + 1:]: v for k, v in io.items() if k.startswith(f"{net}/")}
    inputs.update(f"{net}/{k}" for k in heads)
    backbone, mismatched = lpips_backbone(spec["backbone"], spec["backbone_seed"])
    label = f"lpips/{net}/backbone_recipe"
    results.append(Result.failed(label, f"sha256 prefixes; mismatched: {mismatched}")
                   if mismatched else Result.declared(label, "sha256 prefixes"))
    try:
      params = lpips_conversion.convert_torch({**backbone, **heads}, net)
    except torch_state.ConversionError as e:
      results.append(Result.failed(f"lpips/{net}/weights", str(e)))
      continue
    with jax.default_matmul_precision("highest"):
      dist, dist01, aux = _lpips_forward(net)(params, x0, x1)
    ours.update({f"{net}_dist": dist, f"{net}_dist_normalize01": dist01,
                 f"{net}_per_layer": aux["per_layer"],
                 f"{net}_spatial": np.asarray(aux["spatial"])[:, None]})
  return results + compare_io("lpips", io, ours, inputs, _lpips_tolerance)
