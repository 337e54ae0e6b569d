"""`python -m vwt_jax.evaluate_captions` end to end on tiny HAL, RR and ERO files."""

import csv
import json
import os

import pytest

from vwt_jax import evaluate_captions


@pytest.fixture(scope="module")
def hal_cases(fixtures_dir):
  with open(os.path.join(fixtures_dir, "vript", "hal_cases.jsonl")) as f:
    cases = {c["id"]: c for c in map(json.loads, f)}
  return [cases["custom-short-gt-recall-gt-1"], cases["q7Wm2xYv8Ra_0-Scene-001"]]


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_hal_jsonl_with_annotations(hal_cases, tmp_path, capsys):
  annotations = tmp_path / "HAL_annotations.jsonl"
  annotations.write_text("".join(json.dumps({"clip_id": c["id"], "content": c["gt"]}) + "\n"
                                 for c in hal_cases))
  predictions = tmp_path / "preds.jsonl"
  predictions.write_text("".join(json.dumps({"id": c["id"], "pred": c["pred"]}) + "\n"
                                 for c in hal_cases))
  output = tmp_path / "out" / "scores.csv"
  result = evaluate_captions.main(["--task", "hal", str(predictions), "--gt", str(annotations),
                                   "--output", str(output)])
  out = capsys.readouterr().out
  # One clip with P 0.6, R 2.0, F1 12/13; the other an empty prediction (zeros).
  assert "configuration minilm_sm: sentence encoder all-MiniLM-L6-v2" in out
  assert "Vript-HAL [Hallucination]  F1:  46.15\n" in out
  assert "Vript-HAL [Hallucination]  Precision:  30.00\n" in out
  assert "Vript-HAL [Hallucination]  Recall:  100.00\n" in out
  assert "empty predictions (scored 0) 1" in out
  rows = _read_csv(output)
  assert [r["id"] for r in rows] == [c["id"] for c in hal_cases]
  assert (rows[0]["recall"], rows[0]["n_matched_pred_words"], rows[1]["empty_prediction"]) == (
      "2.0", "6", "True")
  assert result["metrics"]["num_clips"] == 2


def test_rr_and_ero_csv(tmp_path, capsys):
  rr = tmp_path / "RR_clip_model_output.csv"
  rr.write_text("id,pred,gt\nc1,(B) A red cup.,(B) A red cup.\nc2,A dog.,(A) A cat.\n"
                "c3,(C) no,(C) yes\nc4,,(D) x\n")
  result = evaluate_captions.main(["--task", "rr", str(rr), "--output", str(tmp_path / "rr.csv")])
  out = capsys.readouterr().out
  assert "Vript-RR [multiple-choice] acc: 2/3 66.67" in out
  assert "rows without prediction (skipped) 1, unparsed predictions (counted wrong) 1" in out
  assert [r["correct"] for r in _read_csv(tmp_path / "rr.csv")] == ["True", "False", "True"]
  assert result["metrics"]["accuracy"] == 66.67

  ero = tmp_path / "ERO_model_output.csv"
  ero.write_text('id,pred,gt\nv1,"Scene (B) Scene (A) Scene (C)","[\'B\', \'A\', \'C\']"\n'
                 'v2,"Scene (A) Scene (B) Scene (C)","[\'A\', \'C\', \'B\']"\n')
  evaluate_captions.main(["--task", "ero", str(ero)])
  out = capsys.readouterr().out
  assert "Vript-ERO @1 acc: 2/2 100.0" in out
  assert "Vript-ERO @3 acc: 1/2 50.0" in out


def test_clear_errors(tmp_path, capsys):
  bad = tmp_path / "bad.csv"
  bad.write_text("clip,prediction\na,b\n")
  with pytest.raises(SystemExit):
    evaluate_captions.main(["--task", "hal", str(bad)])
  assert "missing column(s) ['id', 'pred']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate_captions.main(["--task", "rr", str(bad), "--config", "mpnet_sm"])
  assert "--config: for --task hal only" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate_captions.main(["--task", "hal", str(tmp_path / "absent.csv")])
  assert "absent.csv does not exist" in capsys.readouterr().err
