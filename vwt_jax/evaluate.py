"""ADM evaluator CLI: IS, FID, sFID, precision and recall of a sample batch.

  python -m vwt_jax.evaluate REF.npz SAMPLES.npz [--inception_weights PATH]
      [--batch_size 64] [--output report.json]

Both files are ADM batches (`arr_0` uint8 [N, H, W, 3]); REF may carry
precomputed `mu`/`sigma`/`mu_s`/`sigma_s` (e.g. VIRTUAL_imagenet256_labeled.npz).
Prints the lines the official evaluator prints. The weights default to
$VWT_INCEPTION_WEIGHTS; make them with `python -m vwt_jax.conversion.inception`.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from vwt_jax.evaluation import evaluator

WEIGHTS_ENV = "VWT_INCEPTION_WEIGHTS"


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Runs the evaluation, prints the report; returns the metrics."""
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("ref_batch", help="reference batch .npz")
  parser.add_argument("sample_batch", help="sample batch .npz")
  parser.add_argument("--inception_weights", default=os.environ.get(WEIGHTS_ENV, ""),
                      help=f"Inception .npz (default ${WEIGHTS_ENV})")
  parser.add_argument("--batch_size", type=int, default=evaluator.ADM_BATCH_SIZE,
                      help="images per Inception forward pass")
  parser.add_argument("--output", default="", help="also write the metrics as JSON here")
  args = parser.parse_args(argv)
  for path in (args.ref_batch, args.sample_batch):
    if not os.path.isfile(path):
      parser.error(f"{path} does not exist")
  runner = evaluator.InceptionRunner(args.inception_weights, batch_size=args.batch_size)
  metrics = evaluator.evaluate_npz(args.ref_batch, args.sample_batch, runner, log=print)
  print(evaluator.format_report(metrics))
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump({"ref_batch": args.ref_batch, "sample_batch": args.sample_batch,
                 "inception_weights": args.inception_weights, **metrics}, f, indent=2)
  return metrics


if __name__ == "__main__":
  main(sys.argv[1:])
