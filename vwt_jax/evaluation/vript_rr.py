"""Vript-RR multiple-choice accuracy, as the official `RRScorer`.

`vript-hard/verification_pipeline/bench_utils.py::RRScorer` (mutonix/Vript
@3dd89c7): the prediction's choice is the first '(X)' (one capital letter in
parentheses) anywhere in the text; the ground truth is the first '(X)' of the
inline `gt` cell, or the letter of `multiple_choice_answer` within
`multiple_choice` in `RR_annotations.jsonl` (looked up by clip id). A
prediction without '(X)' counts as wrong; a row without a prediction is not
counted. Accuracy = correct / counted x 100, rounded to 2 decimals as printed.

Beyond the official scorer: JSON Lines predictions, and a clear error (instead
of a crash) for an empty `gt` cell or an unparsable ground truth.
"""

import re
from typing import Optional, Sequence

from vwt_jax.evaluation import vript_predictions

_CHOICE = re.compile(r"\([A-Z]\)")


def parse_choice(text: str) -> Optional[str]:
  """The letter of the first '(X)' in `text`, or None."""
  match = _CHOICE.search(text)
  return match.group(0)[1] if match else None


def answer_letter(choices: Sequence[str], answer: str) -> str:
  """'A'.. for `answer`'s position in `choices` (the official `RRScorer` lookup)."""
  if answer not in choices:
    raise ValueError(f"multiple_choice_answer {answer!r} is not one of {list(choices)}")
  return chr(ord("A") + list(choices).index(answer))


def score_rr(pred_letters: Sequence[Optional[str]], gt_letters: Sequence[str]) -> dict:
  """Accuracy x100 (2 decimals) of parsed choices (None = unparsed, wrong)."""
  if len(pred_letters) != len(gt_letters) or not gt_letters:
    raise ValueError(f"need as many predictions as answers (> 0), got {len(pred_letters)} "
                     f"and {len(gt_letters)}")
  correct = sum(p == g for p, g in zip(pred_letters, gt_letters))
  return {"accuracy": round(correct / len(gt_letters) * 100, 2), "num_correct": correct,
          "num_total": len(gt_letters)}


def evaluate_file(path: str, *, annotations: Optional[str] = None) -> dict:
  """Scores an RR prediction file (CSV `id,pred[,gt]` or JSON Lines).

  Args:
    path: the predictions.
    annotations: `RR_annotations.jsonl`, needed for rows without `gt`.

  Returns:
    {'metrics': {'accuracy', 'num_correct', 'num_total', 'num_skipped'},
     'rows': [{'id', 'pred', 'gt', 'parsed', 'correct'}] for the counted rows,
     'num_unparsed': predictions without '(X)'}.
  """
  def score_row(row, source, gt):
    if source == "inline":
      letter = parse_choice(str(gt))
      if letter is None:
        raise ValueError(f"{path}: {row.where}: gt {gt!r} has no '(A)'-style choice")
    else:
      letter = answer_letter(gt["multiple_choice"], gt["multiple_choice_answer"])
    parsed = parse_choice(row.pred)
    return {"id": row.id, "pred": row.pred, "gt": letter, "parsed": parsed,
            "correct": parsed == letter}

  scored, skipped = vript_predictions.score_rows(
      path, annotations, "clip_id", ("multiple_choice", "multiple_choice_answer"), score_row)
  metrics = score_rr([r["parsed"] for r in scored], [r["gt"] for r in scored])
  metrics["num_skipped"] = skipped
  return {"metrics": metrics, "rows": scored,
          "num_unparsed": sum(r["parsed"] is None for r in scored)}
