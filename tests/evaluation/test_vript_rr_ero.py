"""Vript-RR / Vript-ERO scorers on hand-made prediction files with hand-computed scores."""

import csv
import json

import pytest

from vwt_jax.evaluation import vript_ero
from vwt_jax.evaluation import vript_rr


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


def test_parse_choice_and_answer_letter():
  assert vript_rr.parse_choice("Best option:(B) A yellow cup.") == "B"
  assert vript_rr.parse_choice("The answer: (C) because (A) is wrong") == "C"
  assert vript_rr.parse_choice("I think B") is None
  assert vript_rr.parse_choice("(a) lower case") is None
  assert vript_rr.answer_letter(["w", "x", "y", "z"], "y") == "C"
  with pytest.raises(ValueError, match="'v' is not one of"):
    vript_rr.answer_letter(["w", "x"], "v")


def test_score_rr():
  assert vript_rr.score_rr(["A", None, "C"], ["A", "B", "B"]) == {
      "accuracy": 33.33, "num_correct": 1, "num_total": 3}
  with pytest.raises(ValueError):
    vript_rr.score_rr(["A"], ["A", "B"])


def test_rr_csv_with_inline_gt(tmp_path):
  path = _write_csv(tmp_path / "RR_clip_model_output.csv", ["id", "pred", "gt", "meta"], [
      ["c1", "(A) A yellow trophy.", "(A) A yellow trophy.", "{}"],
      ["c2", "(D) A yellow cup.", "(A) A yellow trophy.", "{}"],
      ["c3", "I think it is B", "(B) b", "{}"],
      ["c4", "", "(C) c", "{}"],  # pandas reads NaN: skipped
      ["c5", "None", "(C) c", "{}"],  # also NaN for pandas
      ["c6", "The answer: (C)\nnot (A)", "(C) c", "{}"],
      ["c7", "(a) lower", "(A) a", "{}"],
  ])
  result = vript_rr.evaluate_file(path)
  assert result["metrics"] == {"accuracy": 40.0, "num_correct": 2, "num_total": 5,
                               "num_skipped": 2}
  assert result["num_unparsed"] == 2
  assert [(r["id"], r["parsed"], r["gt"], r["correct"]) for r in result["rows"]] == [
      ("c1", "A", "A", True), ("c2", "D", "A", False), ("c3", None, "B", False),
      ("c6", "C", "C", True), ("c7", None, "A", False)]


def test_rr_jsonl_with_annotations(tmp_path):
  annotations = _write_jsonl(tmp_path / "RR_annotations.jsonl", [
      {"video_id": "v", "clip_id": f"v-Scene-00{i}", "question": "q", "hint": "h",
       "multiple_choice": ["w", "x", "y", "z"], "multiple_choice_answer": a, "open_answer": "o"}
      for i, a in ((1, "y"), (2, "w"), (3, "z"))])
  path = _write_jsonl(tmp_path / "preds.jsonl", [
      # `clip_id`, as in the HF annotations, names a row as well as `id`.
      {"id": "v-Scene-001", "pred": "(C) y"}, {"clip_id": "v-Scene-002", "pred": "Best option:(B)"},
      {"id": "v-Scene-003", "pred": None}])
  result = vript_rr.evaluate_file(path, annotations=annotations)
  assert result["metrics"] == {"accuracy": 50.0, "num_correct": 1, "num_total": 2,
                               "num_skipped": 1}
  assert [r["gt"] for r in result["rows"]] == ["C", "A"]
  with pytest.raises(ValueError, match=r"preds.jsonl: line 1 .*no 'gt'"):
    vript_rr.evaluate_file(path)
  stray = _write_jsonl(tmp_path / "stray.jsonl", [{"id": "v-Scene-009", "pred": "(A)"}])
  with pytest.raises(ValueError, match="'v-Scene-009' is not in .*RR_annotations.jsonl"):
    vript_rr.evaluate_file(stray, annotations=annotations)


def test_rr_bad_files(tmp_path):
  no_pred = _write_csv(tmp_path / "answers.csv", ["id", "answer"], [["c1", "(A)"]])
  with pytest.raises(ValueError, match=r"answers.csv: missing column\(s\) \['pred'\]"):
    vript_rr.evaluate_file(no_pred)
  bad_gt = _write_csv(tmp_path / "bad_gt.csv", ["id", "pred", "gt"], [["c1", "(A)", "yellow"]])
  with pytest.raises(ValueError, match="bad_gt.csv: row 1: gt 'yellow'"):
    vript_rr.evaluate_file(bad_gt)
  with pytest.raises(FileNotFoundError, match="nothing.csv"):
    vript_rr.evaluate_file(str(tmp_path / "nothing.csv"))


def test_parse_order():
  assert vript_ero.parse_order("Scene (B)\nScene (A)\nScene (C)\nScene (A)") == ["B", "A", "C"]
  # Fewer than three 'Scene (X)': the first capital letters anywhere.
  assert vript_ero.parse_order("Based on the video: Scene (C)") == ["B", "S", "C"]
  assert vript_ero.parse_order("ACB") == ["A", "C", "B"]
  assert vript_ero.parse_order("order: c, a, b") == []


def test_score_ero():
  metrics = vript_ero.score_ero([["A", "C", "B"], ["A", "B", "C"], ["A"]],
                                [["A", "C", "B"], ["A", "C", "B"], ["A", "C", "B"]])
  assert metrics == {"acc@1": 66.67, "num_correct@1": 2, "acc@2": 33.33, "num_correct@2": 1,
                     "acc@3": 33.33, "num_correct@3": 1, "num_total": 3}


def test_ero_csv_with_inline_gt(tmp_path):
  acb = "['A', 'C', 'B']"
  path = _write_csv(tmp_path / "ERO_model_output.csv", ["id", "pred", "gt", "meta"], [
      ["v1", "Scene (A)\nScene (C)\nScene (B)", acb, "{}"],  # 3 right
      ["v2", "Scene (B) then Scene (A) then Scene (C)", acb, "{}"],  # 0
      ["v3", "Scene (A), Scene (B), Scene (C)", acb, "{}"],  # 1
      ["v4", "Based on the video: Scene (C)", "['C', 'A', 'B']", "{}"],  # B,S,C: 0
      ["v5", "order: c, a, b", acb, "{}"],  # unparsed
      ["v6", "ACB", acb, "{}"],  # 3 via the capital-letter fallback
      ["v7", "Scene (A) Scene (C) Scene (D)", acb, "{}"],  # 2
      ["v8", "", acb, "{}"],  # skipped
  ])
  result = vript_ero.evaluate_file(path)
  assert result["metrics"] == {
      "acc@1": 57.14, "num_correct@1": 4, "acc@2": 42.86, "num_correct@2": 3,
      "acc@3": 28.57, "num_correct@3": 2, "num_total": 7, "num_skipped": 1}
  assert result["num_unparsed"] == 1
  assert [(r["id"], r["top1"], r["top2"], r["top3"]) for r in result["rows"]] == [
      ("v1", True, True, True), ("v2", False, False, False), ("v3", True, False, False),
      ("v4", False, False, False), ("v5", False, False, False), ("v6", True, True, True),
      ("v7", True, True, False)]
  assert result["rows"][3]["parsed"] == ["B", "S", "C"]


def test_ero_without_gt(tmp_path):
  path = _write_csv(tmp_path / "ERO_claude_output.csv", ["id", "pred"], [
      ["v1", "Scene (C)\nScene (A)\nScene (B)"], ["v2", "Scene (A) Scene (B) Scene (C)"]])
  with pytest.raises(ValueError, match=r"ERO_claude_output.csv: row 1 \(id 'v1'\) has no 'gt'"):
    vript_ero.evaluate_file(path)
  annotations = _write_jsonl(tmp_path / "ERO_annotations.jsonl", [
      {"video_id": "v1", "question": "q", "answer": ["C", "A", "B"]},
      {"video_id": "v2", "question": "q", "answer": ["C", "B", "A"]}])
  result = vript_ero.evaluate_file(path, annotations=annotations)
  assert result["metrics"]["acc@1"] == 100.0 and result["metrics"]["acc@2"] == 50.0
  assert result["metrics"]["acc@3"] == 50.0 and result["num_unparsed"] == 0
  short = _write_jsonl(tmp_path / "short.jsonl", [{"id": "v1", "pred": "ABC", "gt": ["A", "B"]}])
  with pytest.raises(ValueError, match="short.jsonl: line 1: ground truth"):
    vript_ero.evaluate_file(short)
