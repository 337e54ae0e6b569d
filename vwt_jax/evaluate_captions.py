"""Vript-Hard scoring CLI: HAL (caption hallucination), RR and ERO predictions.

  python -m vwt_jax.evaluate_captions --task {hal,rr,ero} PREDICTIONS
      [--gt ANNOTATIONS.jsonl] [--config minilm_sm|mpnet_sm] [--encoder_dir DIR]
      [--spacy_model NAME] [--output scores.csv]

PREDICTIONS is the CSV the official `verify_vript-hard_answer.py` reads (columns
id, pred and optionally gt) or JSON Lines with the same keys. Without inline gt,
--gt names the HF annotations (HAL_annotations.jsonl / RR_annotations.jsonl /
ERO_annotations.jsonl). Prints the official summary lines (for HAL preceded by
the configuration: which sentence encoder and spaCy pipeline were used) and,
with --output, writes one CSV row per scored clip.
"""

import argparse
import csv
import json
import os
import sys
from typing import Optional, Sequence

from vwt_jax.evaluation import vript_ero, vript_hal, vript_rr

TASKS = ("hal", "rr", "ero")


def _cell(value):
  return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_rows(path: str, rows: Sequence[dict]) -> None:
  """Per-clip rows as CSV (lists/dicts as JSON); the columns of the first row."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _cell(v) for k, v in row.items()})


def _summary(task: str, result: dict) -> str:
  m = result["metrics"]
  if task == "hal":
    lines = [f"configuration {result['config']}", vript_hal.format_official(m),
             f"clips {m['num_clips']}, empty predictions (scored 0) "
             f"{m['num_empty_predictions']}, empty ground truths {m['num_empty_ground_truths']}"]
  elif task == "rr":
    lines = ["configuration: official RRScorer rules (first '(X)' in the prediction)",
             f"Vript-RR [multiple-choice] acc: {m['num_correct']}/{m['num_total']} "
             f"{m['accuracy']}"]
  else:
    lines = ["configuration: official EROScorer rules (Scene (X) letters, else capitals)"]
    lines += [f"Vript-ERO @{k} acc: {m[f'num_correct@{k}']}/{m['num_total']} {m[f'acc@{k}']}"
              for k in (1, 2, 3)]
  if task != "hal":
    lines.append(f"rows without prediction (skipped) {m['num_skipped']}, "
                 f"unparsed predictions (counted wrong) {result['num_unparsed']}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Scores the file, prints the summary; returns the evaluator's result dict."""
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.evaluate_captions",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("predictions", help="prediction .csv (id,pred[,gt]) or .jsonl")
  parser.add_argument("--task", choices=TASKS, required=True, help="Vript-Hard task")
  parser.add_argument("--gt", default=None,
                      help="HF annotations .jsonl for rows without inline gt")
  parser.add_argument("--config", default=None, choices=sorted(vript_hal.CONFIGS),
                      help="HAL configuration (default minilm_sm)")
  parser.add_argument("--encoder_dir", default=None,
                      help="HAL sentence-transformers model directory (overrides the config's)")
  parser.add_argument("--spacy_model", default=None,
                      help="HAL spaCy pipeline (overrides the config's)")
  parser.add_argument("--output", default="", help="also write per-clip scores (CSV) here")
  args = parser.parse_args(argv)
  for path in (args.predictions, args.gt):
    if path is not None and not os.path.isfile(path):
      parser.error(f"{path} does not exist")
  hal_only = [f"--{k}" for k in ("config", "encoder_dir", "spacy_model")
              if getattr(args, k) is not None]
  if args.task != "hal" and hal_only:
    parser.error(f"{', '.join(hal_only)}: for --task hal only")

  try:
    if args.task == "hal":
      scorer = vript_hal.HalScorer(args.config or "minilm_sm", spacy_model=args.spacy_model,
                                   encoder_dir=args.encoder_dir)
      result = vript_hal.evaluate_file(args.predictions, scorer, args.gt, progress=True)
    elif args.task == "rr":
      result = vript_rr.evaluate_file(args.predictions, annotations=args.gt)
    else:
      result = vript_ero.evaluate_file(args.predictions, annotations=args.gt)
  except (ValueError, OSError, ImportError) as e:
    parser.error(str(e))
  print(_summary(args.task, result))
  if args.output:
    write_rows(args.output, result["rows"])
    print(f"per-clip scores written to {args.output}")
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
