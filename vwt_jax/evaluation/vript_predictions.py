"""Vript-Hard prediction and annotation files, read as the official verifier reads them.

`vript-hard/verification_pipeline/verify_vript-hard_answer.py` reads one CSV per
model with pandas: columns `id` and `pred`, plus `gt` when the ground truth is
inline (the official VideoChat2 scripts write `id,pred,gt,meta`). Without a
`gt` column the scorers look the answer up by `id` in the HF annotations
(`RR_annotations.jsonl` by `clip_id`, `ERO_annotations.jsonl` by `video_id`).

A row whose `pred` cell pandas reads as NaN (an empty cell, or one of pandas'
default NA strings such as 'None', 'NA' or 'nan') is skipped by the official
scorers and so also here. JSON Lines files with the same keys per line are
accepted too (`id` or, as in the HF annotations, `clip_id`; `null` or a
missing `pred` is skipped; `gt` may be a list).
"""

import csv
import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Optional

# pandas.read_csv's default `na_values`: cells equal to one of these become NaN.
PANDAS_NA_STRINGS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
REQUIRED = ("id", "pred")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One row of a prediction file."""
  id: str
  pred: Optional[str]  # None: no prediction, the row is skipped
  gt: Any  # inline ground truth (str, or list from JSON Lines); None if absent
  where: str  # 'row N' (CSV data row) or 'line N' (JSON Lines), for messages


def _read_csv(path: str) -> list[Prediction]:
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; expected a CSV with columns "
                       f"id,pred[,gt] as written by the official Vript-Hard scripts")
    rows = []
    for n, row in enumerate(reader, start=1):
      pred, gt = row["pred"], row.get("gt")
      rows.append(Prediction(
          id=row["id"], pred=None if pred is None or pred in PANDAS_NA_STRINGS else pred,
          gt=None if gt is None or gt in PANDAS_NA_STRINGS else gt, where=f"row {n}"))
  return rows


def _json_lines(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, decoded object) per non-blank line; a bad line is an error."""
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        yield n, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {n} is not JSON ({e})") from e


def _read_jsonl(path: str) -> list[Prediction]:
  rows = []
  for n, record in _json_lines(path):
    key = next((k for k in ("id", "clip_id") if isinstance(record, dict) and k in record), None)
    if key is None:
      raise ValueError(f"{path}: line {n} should be an object with keys id (or clip_id), "
                       "pred[, gt]")
    pred = record.get("pred")
    rows.append(Prediction(id=str(record[key]), pred=None if pred is None else str(pred),
                           gt=record.get("gt"), where=f"line {n}"))
  return rows


def read_predictions(path: str) -> list[Prediction]:
  """Reads a `.csv` or `.jsonl` prediction file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prediction file {path} does not exist")
  if path.endswith(".csv"):
    return _read_csv(path)
  if path.endswith((".jsonl", ".json")):
    return _read_jsonl(path)
  raise ValueError(f"{path}: expected a .csv or .jsonl prediction file")


def read_annotations(path: str, key: str, fields: tuple[str, ...]) -> dict[str, dict]:
  """Reads an HF Vript-Hard `*_annotations.jsonl` into `record[key] -> record`.

  Raises:
    ValueError: a line is not JSON or lacks `key` or one of `fields`.
  """
  records = {}
  for n, record in _json_lines(path):
    missing = [k for k in (key,) + fields if not isinstance(record, dict) or k not in record]
    if missing:
      raise ValueError(f"{path}: line {n} lacks key(s) {missing}")
    records[str(record[key])] = record
  return records


def ground_truth(row: Prediction, path: str, annotations: Optional[dict[str, dict]],
                 annotations_path: Optional[str]) -> tuple[str, Any]:
  """('inline', gt) or ('annotations', record) for a row, as the official scorers choose."""
  if row.gt is not None:
    return "inline", row.gt
  if annotations is None:
    raise ValueError(f"{path}: {row.where} (id {row.id!r}) has no 'gt' column/key; pass the "
                     f"HF annotations file to look the answer up by id")
  if row.id not in annotations:
    raise ValueError(f"{path}: {row.where}: id {row.id!r} is not in {annotations_path}")
  return "annotations", annotations[row.id]


def score_rows(path: str, annotations: Optional[str], key: str, fields: tuple[str, ...],
               score_row: Callable[[Prediction, str, Any], dict]) -> tuple[list[dict], int]:
  """`score_row(row, source, gt)` for the rows of `path` with a prediction.

  Returns (results, number of rows skipped); ValueError if no row is scored.
  """
  rows = read_predictions(path)
  table = None if annotations is None else read_annotations(annotations, key, fields)
  scored = [score_row(row, *ground_truth(row, path, table, annotations))
            for row in rows if row.pred is not None]
  if not scored:
    raise ValueError(f"{path}: no row with a prediction to score")
  return scored, len(rows) - len(scored)
