r"""Evaluator throughput: images/s through the FID Inception and the host metrics.

Times `evaluation.evaluator.InceptionRunner.activations` (TF1 resize to 299,
Inception-v3, pool_3 + sFID tap + softmax, gathered to the host) on uint8
NHWC batches at the ADM sample size, over all local devices, and the host-side
steps of a report (float64 statistics, one Frechet distance of 2048-d
statistics, precision/recall of N x N pool features). Weights are random
unless --weights names a converted .npz: the cost does not depend on them.
Prints one JSON line per measurement.

  python benchmarks/inception_throughput.py --quick
  python benchmarks/inception_throughput.py --batch_sizes 64,256 --images 2048 --size 256
"""

import argparse
import json
import time

import jax
import numpy as np

from vwt_jax.evaluation import evaluator
from vwt_jax.evaluation.fid import FeatureStatistics, frechet_distance
from vwt_jax.evaluation.precision_recall import precision_recall
from vwt_jax.models.inception import InceptionV3


def random_params(seed: int):
  init = jax.jit(lambda key: InceptionV3().init(key, np.zeros((1, 299, 299, 3), np.float32)))
  return jax.device_get(init(jax.random.key(seed))["params"])


def make_runner(args, batch_size: int) -> evaluator.InceptionRunner:
  if args.weights:
    return evaluator.InceptionRunner(args.weights, batch_size=batch_size)
  params = random_params(args.seed)
  return evaluator.InceptionRunner(
      None, batch_size=batch_size, params=params,
      apply_fn=lambda p, x: InceptionV3().apply({"params": p}, x))


def bench_network(args, batch_size: int) -> dict:
  runner = make_runner(args, batch_size)
  rng = np.random.default_rng(args.seed)
  images = rng.integers(0, 256, (runner.batch_size, args.size, args.size, 3), np.uint8)
  start = time.perf_counter()
  runner.activations([images], desc="compile")
  compile_s = time.perf_counter() - start
  steps = max(1, args.images // runner.batch_size)
  start = time.perf_counter()
  runner.activations((images for _ in range(steps)), total=steps * runner.batch_size,
                     desc=f"batch {runner.batch_size}")
  seconds = time.perf_counter() - start
  return {"bench": "inception", "batch_size": runner.batch_size, "image_size": args.size,
          "images": steps * runner.batch_size, "seconds": round(seconds, 3),
          "images_per_s": round(steps * runner.batch_size / seconds, 2),
          "first_call_s": round(compile_s, 2), "weights": args.weights or "random"}


def bench_host(args) -> dict:
  rng = np.random.default_rng(args.seed)
  # pool_3-like features: non-negative and correlated.
  mix = rng.standard_normal((2048, 2048)).astype(np.float32) / 45.0
  ref = np.maximum(rng.standard_normal((args.host_images, 2048)).astype(np.float32) @ mix, 0)
  sample = np.maximum(rng.standard_normal((args.host_images, 2048)).astype(np.float32) @ mix
                      + 0.05, 0)
  start = time.perf_counter()
  stats = [FeatureStatistics.from_activations(a).statistics() for a in (sample, ref)]
  stats_s = time.perf_counter() - start
  start = time.perf_counter()
  fid = frechet_distance(*stats[0], *stats[1])
  fid_s = time.perf_counter() - start
  start = time.perf_counter()
  precision, recall = precision_recall(ref, sample)
  pr_s = time.perf_counter() - start
  return {"bench": "host_metrics", "images": args.host_images, "dim": 2048,
          "statistics_s": round(stats_s, 3), "frechet_distance_s": round(fid_s, 3),
          "precision_recall_s": round(pr_s, 3), "fid": round(float(fid), 4),
          "precision": precision, "recall": recall}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch_sizes", default="64", help="comma-separated global batches")
  parser.add_argument("--images", type=int, default=256, help="images timed per batch size")
  parser.add_argument("--size", type=int, default=256, help="input side (resized to 299)")
  parser.add_argument("--host_images", type=int, default=2000,
                      help="feature rows per side for the host-metric timing (0 = skip)")
  parser.add_argument("--weights", default="", help="converted Inception .npz (default random)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="one batch of 16, 500 host rows")
  args = parser.parse_args()
  if args.quick:
    args.batch_sizes, args.images, args.host_images = "16", 32, 500
  device = jax.devices()[0]
  header = {"backend": jax.default_backend(), "device": device.device_kind,
            "devices": jax.device_count(), "jax": jax.__version__}
  for batch_size in (int(b) for b in args.batch_sizes.split(",")):
    print(json.dumps({**header, **bench_network(args, batch_size)}), flush=True)
  if args.host_images:
    print(json.dumps({**header, **bench_host(args)}), flush=True)


if __name__ == "__main__":
  main()
