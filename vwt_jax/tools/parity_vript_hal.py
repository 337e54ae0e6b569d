"""`parity vript-hal`: our Vript-HAL against the official scorer's outputs.

`hal_cases.jsonl` (tests/fixtures/README.md) holds per case the
return values of the unmodified official `HallucinationScorer` for each
configuration, with its word sets; `hal_aggregate.json` the official printout
on the single-GT non-failing cases (a) and plain means over the non-failing (b)
and over all cases with failures as zeros (c). Compared:
* word lists (sorted) and their counts: exact;
* precision / recall / F1 (ratios of exact counts): abs 1e-6; a case where the
  official code raised must come out as `empty_prediction` with zeros;
* each prediction word's max cosine to the GT words (rounded to 5 dp there): abs 1e-4;
* aggregates: (a) as printed with 2 decimals, abs 0.005 + 1e-9; (b), (c) abs 1e-6.
Every field of a case and of an aggregate entry is either compared or declared
an input / information, so a new field fails until a comparison exists.
'minilm_sm' is always compared; 'mpnet_sm' only when $VWT_MPNET_DIR points at
all-mpnet-base-v2.
"""

import json
import os

from vwt_jax.evaluation import vript_hal
from vwt_jax.tools.parity_common import EXACT, Result, compare, load_json, missing_files

CASES = "hal_cases.jsonl"
AGGREGATE = "hal_aggregate.json"
RATIO_TOL = 1e-6
SIM_TOL = 1e-4
PRINTED_TOL = 0.005 + 1e-9
MEAN_TOL = 1e-6
CASE_INPUTS = ("id", "category", "pred", "gt", "official")
WORD_LISTS = ("gt_words", "pred_words", "matched_pred_words")
COUNTS = {"n_gt_words": "gt_words", "n_pred_words": "pred_words",
          "n_matched_pred_words": "matched_pred_words"}
RATIOS = ("precision", "recall", "f1")
# Facts about the fixture itself (how close it sits to the threshold).
CASE_INFO = ("borderline_words", "min_abs_margin_to_threshold")
PRINTED = "official_HALScorer_compute_scores_on_single_gt_nonfailing_cases"
NONFAILING = "mean_x100_over_all_nonfailing_cases"
ALL_CASES = "mean_x100_all_cases_failing_counted_as_zero"
PRINTED_KEYS = {"Hallucination F1": "f1", "Hallucination Precision": "precision",
                "Hallucination Recall": "recall"}


def _within(name: str, err: float, tol: float) -> Result:
  return Result(name, err, f"atol={tol:g}", err <= tol)


def _compare_value(name: str, ours: float, ref, tol: float) -> Result:
  if ref is None:
    return Result.failed(name, "reference is null")
  return _within(name, abs(float(ours) - float(ref)), tol)


def _compare_words(name: str, ours: list[str], ref: list[str]) -> Result:
  differing = len(set(ours) ^ set(ref))
  ok = sorted(ours) == sorted(ref)
  tol = "exact" if ok else f"exact; ours-only {sorted(set(ours) - set(ref))}, " \
                            f"official-only {sorted(set(ref) - set(ours))}"
  return Result(name, float(differing), tol, ok)


def _compare_case(prefix: str, ours: vript_hal.HalResult, ref: dict) -> list[Result]:
  results = []
  for key, value in ref.items():
    name = f"{prefix}/{key}"
    if key in CASE_INFO:
      results.append(Result.declared(name, "information"))
    elif key in WORD_LISTS:
      results.append(_compare_words(name, getattr(ours, key), value))
    elif key in COUNTS:
      results.append(compare(name, len(getattr(ours, COUNTS[key])), value, EXACT))
    elif key in RATIOS:
      if ref.get("error"):
        continue  # the official code raised; checked under `error`
      results.append(_compare_value(name, getattr(ours, key), value, RATIO_TOL))
    elif key == "error":
      if value:
        zeros = max(abs(ours.precision), abs(ours.recall), abs(ours.f1))
        ok = ours.empty_prediction and zeros == 0.0
        results.append(Result(name, zeros, f"official raised {value!r}: empty_prediction "
                              f"{'with' if ok else 'expected, with'} P=R=F1=0", ok))
      else:
        ok = not ours.empty_prediction and not ours.empty_ground_truth
        results.append(Result(name, 0.0, "no error: not flagged", ok))
    elif key == "pred_word_max_sim":
      absent = sorted(set(value) - set(ours.pred_word_max_sim))
      if absent:
        results.append(Result(name, float("inf"), f"no similarity for {absent}", False))
        continue
      err = max((abs(ours.pred_word_max_sim[w] - v["max_sim"]) for w, v in value.items()),
                default=0.0)
      results.append(_within(name, err, SIM_TOL))
    else:
      results.append(Result.failed(name, "no comparison known"))
  return results


def _compare_aggregates(prefix: str, ref: dict, by_id: dict) -> list[Result]:
  results = []
  for variant, entry in ref.items():
    label = f"{prefix}/aggregate/{variant}"
    if variant == ALL_CASES:
      ids = list(by_id)
    elif variant in (PRINTED, NONFAILING):
      unknown = [i for i in entry.get("case_ids", []) if i not in by_id]
      if unknown or "case_ids" not in entry:
        results.append(Result.failed(label, f"unknown case ids {unknown}"))
        continue
      ids = entry["case_ids"]
    else:
      results.append(Result.failed(label, "no comparison known"))
      continue
    ours = vript_hal.aggregate([by_id[i] for i in ids])
    for key, value in entry.items():
      name = f"{label}/{key}"
      if key == "case_ids":
        results.append(Result.declared(name, "input"))
      elif key == "n_cases":
        results.append(compare(name, len(ids), value, EXACT))
      elif variant == PRINTED and key in PRINTED_KEYS:
        results.append(_compare_value(name, ours[PRINTED_KEYS[key]], value, PRINTED_TOL))
      elif variant != PRINTED and key in RATIOS:
        results.append(_compare_value(name, ours[key], value, MEAN_TOL))
      else:
        results.append(Result.failed(name, "no comparison known"))
  return results


def _configs() -> list[str]:
  configs = ["minilm_sm"]
  mpnet = os.environ.get(vript_hal.MPNET_DIR_ENV, "")
  if mpnet and os.path.isdir(mpnet):
    configs.append("mpnet_sm")
  else:
    print(f"vript-hal: comparing minilm_sm only; mpnet_sm needs ${vript_hal.MPNET_DIR_ENV} "
          f"pointing at all-mpnet-base-v2 (not set or not a directory)")
  return configs


def run_vript_hal(fixture_dir: str) -> list[Result]:
  """One Result per compared field of every case and aggregate (see module docstring)."""
  absent = missing_files(fixture_dir, "", (CASES, AGGREGATE))
  if absent:
    return absent
  with open(os.path.join(fixture_dir, CASES), encoding="utf-8") as f:
    cases = [json.loads(line) for line in f if line.strip()]
  aggregates = load_json(fixture_dir, AGGREGATE)["aggregate"]
  results = []
  for case in cases:
    unknown = sorted(set(case) - set(CASE_INPUTS))
    if unknown:
      results.append(Result.failed(f"hal/{case.get('id')}", f"no comparison known for {unknown}"))
  for config in _configs():
    scorer = vript_hal.HalScorer(config)
    ours = scorer.score_many([(c["pred"], c["gt"]) for c in cases])
    by_id = {c["id"]: r for c, r in zip(cases, ours)}
    for case, result in zip(cases, ours):
      if config not in case["official"]:
        results.append(Result.failed(f"hal/{config}/{case['id']}",
                                     "no official values for this config"))
        continue
      results += _compare_case(f"hal/{config}/{case['id']}", result, case["official"][config])
    if config not in aggregates:
      results.append(Result.failed(f"hal/{config}/aggregate", f"no {config} entry in {AGGREGATE}"))
      continue
    results += _compare_aggregates(f"hal/{config}", aggregates[config], by_id)
  return results
