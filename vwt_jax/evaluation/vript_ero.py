"""Vript-ERO event re-ordering accuracy @1/@2/@3, as the official `EROScorer`.

`vript-hard/verification_pipeline/bench_utils.py::EROScorer` (mutonix/Vript
@3dd89c7): the predicted order is the first three letters of 'Scene (X)'
mentions; with fewer than three of those, the first three capital letters
anywhere in the text (so 'Based on...' contributes a 'B'). The ground truth is
every capital letter of the inline `gt` cell (the scripts write the list
"['A', 'C', 'B']") or the `answer` list of `ERO_annotations.jsonl` (by video
id). With three predicted letters, @k is right when at least k of the three
positions match; a prediction with fewer letters is wrong at every k. A row
without a prediction is not counted. Accuracies x100, rounded to 2 decimals.

Beyond the official scorer: JSON Lines predictions (`gt` may be a list), and a
clear error (instead of a crash) for a ground truth with fewer than 3 letters.
"""

import re
from typing import Optional, Sequence

from vwt_jax.evaluation import vript_predictions

_SCENE = re.compile(r"Scene \(([A-Z])\)")
_CAPITAL = re.compile(r"[A-Z]")
ORDER_LENGTH = 3


def parse_order(text: str) -> list[str]:
  """Up to three scene letters: 'Scene (X)' mentions, else any capital letters."""
  letters = _SCENE.findall(text)[:ORDER_LENGTH]
  if len(letters) < ORDER_LENGTH:
    letters = _CAPITAL.findall(text)[:ORDER_LENGTH]
  return letters


def matching_positions(pred: Sequence[str], gt: Sequence[str]) -> Optional[int]:
  """How many of the three positions agree; None if `pred` is not three letters."""
  if len(pred) != ORDER_LENGTH:
    return None
  return sum(p == g for p, g in zip(pred, gt[:ORDER_LENGTH]))


def score_ero(pred_orders: Sequence[Sequence[str]], gt_orders: Sequence[Sequence[str]]) -> dict:
  """Accuracy @1/@2/@3 x100 (2 decimals): at least k positions right."""
  if len(pred_orders) != len(gt_orders) or not gt_orders:
    raise ValueError(f"need as many predictions as answers (> 0), got {len(pred_orders)} "
                     f"and {len(gt_orders)}")
  hits = [matching_positions(p, g) or 0 for p, g in zip(pred_orders, gt_orders)]
  metrics = {}
  for k in range(1, ORDER_LENGTH + 1):
    correct = sum(h >= k for h in hits)
    metrics[f"acc@{k}"] = round(correct / len(hits) * 100, 2)
    metrics[f"num_correct@{k}"] = correct
  metrics["num_total"] = len(hits)
  return metrics


def _gt_letters(gt) -> list[str]:
  if isinstance(gt, list):
    return [str(x) for x in gt]
  return _CAPITAL.findall(str(gt))


def evaluate_file(path: str, *, annotations: Optional[str] = None) -> dict:
  """Scores an ERO prediction file (CSV `id,pred[,gt]` or JSON Lines).

  Args:
    path: the predictions.
    annotations: `ERO_annotations.jsonl`, needed for rows without `gt`.

  Returns:
    {'metrics': {'acc@1', 'acc@2', 'acc@3', 'num_correct@k', 'num_total',
     'num_skipped'}, 'rows': [{'id', 'pred', 'gt', 'parsed', 'top1', 'top2',
     'top3'}] for the counted rows, 'num_unparsed': predictions without three
     letters}.
  """
  def score_row(row, source, gt):
    letters = _gt_letters(gt if source == "inline" else gt["answer"])
    if len(letters) < ORDER_LENGTH:
      raise ValueError(f"{path}: {row.where}: ground truth {gt!r} should hold 3 scene letters")
    parsed = parse_order(row.pred)
    hits = matching_positions(parsed, letters) or 0
    return {"id": row.id, "pred": row.pred, "gt": letters[:ORDER_LENGTH], "parsed": parsed,
            **{f"top{k}": hits >= k for k in (1, 2, 3)}}

  scored, skipped = vript_predictions.score_rows(path, annotations, "video_id", ("answer",),
                                                  score_row)
  metrics = score_ero([r["parsed"] for r in scored], [r["gt"] for r in scored])
  metrics["num_skipped"] = skipped
  return {"metrics": metrics, "rows": scored,
          "num_unparsed": sum(len(r["parsed"]) != ORDER_LENGTH for r in scored)}
