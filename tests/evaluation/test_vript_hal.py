"""Vript-HAL against the official scorer's fixture values; file formats and edge cases."""

import csv
import json
import os

import pytest

import helpers
from vwt_jax.evaluation import vript_hal
from vwt_jax.tools import parity_vript_hal


@pytest.fixture(scope="module")
def cases(fixtures_dir):
  with open(os.path.join(fixtures_dir, "vript", "hal_cases.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def scorer():
  return vript_hal.HalScorer("minilm_sm")


@pytest.fixture(scope="module")
def results(scorer, cases):
  return scorer.score_many([(c["pred"], c["gt"]) for c in cases])


def test_cases_equal_the_official_scorer(cases, results):
  for case, ours in zip(cases, results):
    ref = case["official"]["minilm_sm"]
    assert ours.gt_words == ref["gt_words"], case["id"]
    assert ours.pred_words == ref["pred_words"], case["id"]
    assert ours.matched_pred_words == sorted(ref["matched_pred_words"]), case["id"]
    if ref["error"]:
      assert ours.empty_prediction and (ours.precision, ours.recall, ours.f1) == (0, 0, 0)
    else:
      assert not ours.empty_prediction
      assert (ours.precision, ours.recall, ours.f1) == pytest.approx(
          (ref["precision"], ref["recall"], ref["f1"]),
          abs=parity_vript_hal.RATIO_TOL), case["id"]
  by_category = {c["category"]: r for c, r in zip(cases, results)}
  assert by_category["exact_copy"].f1 == 1.0
  assert by_category["recall_above_one"].recall == 2.0
  assert by_category["stopword_aux_only"].empty_prediction


def test_batching_and_caching_do_not_change_results(cases, results):
  fresh = vript_hal.HalScorer("minilm_sm")
  for case, batched in zip(reversed(cases), reversed(results)):
    alone = fresh.score(case["pred"], case["gt"])
    # Other batch shapes round the embeddings differently (float32 order only):
    # MiniLM's longest sum is its 1536-wide FFN; 6 layers of 6 dots, then the
    # mean pooling and the cosine.
    assert alone.pred_word_max_sim == pytest.approx(
        batched.pred_word_max_sim, abs=helpers.f32_atol(1.0, reduction=1536, depth=38))
    alone.pred_word_max_sim = batched.pred_word_max_sim
    assert alone == batched


def test_aggregate_and_official_printout(fixtures_dir, results):
  with open(os.path.join(fixtures_dir, "vript", "hal_aggregate.json")) as f:
    ref = json.load(f)["aggregate"]["minilm_sm"]
  metrics = vript_hal.aggregate(results)
  all_cases = ref["mean_x100_all_cases_failing_counted_as_zero"]
  for key in ("f1", "precision", "recall"):
    assert metrics[key] == pytest.approx(all_cases[key], abs=parity_vript_hal.MEAN_TOL)
  assert (metrics["num_clips"], metrics["num_empty_predictions"]) == (12, 2)
  assert vript_hal.format_official(metrics) == (
      "Vript-HAL [Hallucination]  F1:  37.72\n"
      "Vript-HAL [Hallucination]  Precision:  47.81\n"
      "Vript-HAL [Hallucination]  Recall:  42.82")


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def test_csv_gt_cell_is_one_ground_truth_string(scorer, cases, tmp_path):
  pred, gts = cases[3]["pred"], cases[3]["gt"] + cases[5]["gt"]
  cell = json.dumps(gts)  # the stringified list the official CSVs hold
  path = tmp_path / "HAL_model_output.csv"
  _write_csv(path, ["id", "pred", "gt", "meta"], [["clip-a", pred, cell, "{}"],
                                                  ["clip-b", "", cell, "{}"]])
  out = vript_hal.evaluate_file(str(path), scorer)
  whole = scorer.score(pred, [cell])
  assert out["results"][0] == whole
  assert out["results"][0].gt_words == scorer.score(pred, gts).gt_words
  assert out["results"][1].empty_prediction
  assert out["rows"][0]["id"] == "clip-a" and out["rows"][0]["f1_score"] == whole.f1
  # A float64 mean of two values: approx's default rel 1e-6 is far above its rounding.
  assert out["metrics"]["f1"] == pytest.approx(whole.f1 / 2 * 100)
  assert out["metrics"]["num_empty_predictions"] == 1


def test_jsonl_with_annotations_file(scorer, cases, tmp_path):
  annotations = tmp_path / "HAL_annotations.jsonl"
  annotations.write_text("".join(
      json.dumps({"video_id": c["id"][:11], "clip_id": c["id"], "content": c["gt"]}) + "\n"
      for c in cases[:3]))
  predictions = tmp_path / "preds.jsonl"
  predictions.write_text(
      json.dumps({"id": cases[1]["id"], "pred": cases[1]["pred"]}) + "\n"
      + json.dumps({"id": "inline", "pred": cases[2]["pred"], "gt": cases[2]["gt"]}) + "\n")
  out = vript_hal.evaluate_file(str(predictions), scorer, gt_path=str(annotations))
  assert [r["id"] for r in out["rows"]] == [cases[1]["id"], "inline"]
  assert out["results"][0] == scorer.score(cases[1]["pred"], cases[1]["gt"])
  assert out["rows"][1]["precision"] == cases[2]["official"]["minilm_sm"]["precision"]
  predictions.write_text(json.dumps({"id": "unknown-clip", "pred": "A dog runs."}) + "\n")
  with pytest.raises(ValueError, match="'unknown-clip' is not in"):
    vript_hal.evaluate_file(str(predictions), scorer, gt_path=str(annotations))
  with pytest.raises(ValueError, match="has no 'gt' column"):
    vript_hal.evaluate_file(str(predictions), scorer)


def test_ground_truth_without_words_is_flagged(scorer):
  result = scorer.score("A dog runs across the park.", ["It is what it is."])
  assert result.empty_ground_truth and not result.empty_prediction
  assert (result.precision, result.recall, result.f1) == (0.0, 0.0, 0.0)
  assert result.pred_words == ["dog", "park", "run"]


def test_config_errors(monkeypatch):
  monkeypatch.delenv(vript_hal.MPNET_DIR_ENV, raising=False)
  with pytest.raises(ValueError, match="VWT_MPNET_DIR"):
    vript_hal.HalScorer("mpnet_sm")
  with pytest.raises(ValueError, match="unknown Vript-HAL config 'lg'"):
    vript_hal.HalScorer("lg")
  monkeypatch.setenv(vript_hal.MPNET_DIR_ENV, vript_hal.resolve_encoder_dir("minilm_sm"))
  with pytest.raises(ValueError, match="expects a mpnet encoder, but .* holds a bert model"):
    vript_hal.HalScorer("mpnet_sm")
