"""Classification accuracy of class-conditional samples, next to real images'.

  python -m vwt_jax.sample --checkpoint GEN_RUN --classes 0,1,2,3,4,5,6,7,8,9 \
      --per_class 20 --npz samples.npz --output samples.png
  python -m vwt_jax.tools.class_accuracy --samples samples.npz --data_from TOKENIZER_RUN \
      --output class_accuracy.json [--summary GEN_RUN/summary.txt]

trains a small classifier (`vwt_jax.evaluation.class_accuracy`) on the real
training images that `--data_from`'s config.json names (any run folder whose
`data` section describes them: the tokenizer's), at the samples' size, then
prints its accuracy on the real validation images and on the samples (`arr_0`
images, `arr_1` labels, as `vwt_jax.sample --npz` writes them), overall and per
class. `--output` gets the numbers as JSON; `--summary` (e.g. the generator
run's summary.txt) gets the printed table appended.
"""

import argparse
import json
import sys
import time
from typing import Optional, Sequence

from etils import epath
import ml_collections
import numpy as np

from vwt_jax.core import files
from vwt_jax.data import pipeline
from vwt_jax.data import synthetic_shapes
from vwt_jax.data import transforms
from vwt_jax.evaluation import adm_npz
from vwt_jax.evaluation import class_accuracy
from vwt_jax.families import common


def read_split(data_config: ml_collections.ConfigDict, split: str, image_size: int,
               limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The first `limit` (0 = all) images of a split, centre-cropped to `image_size`."""
  source, description = pipeline.open_source(data_config, split)
  count = min(len(source), limit) if limit else len(source)
  images, labels = [], []
  for index in range(count):
    record = source[index]
    try:
      images.append(transforms.preprocess_image(record["image"], image_size=image_size,
                                                train=False))
    except transforms.CorruptRecordError as e:
      raise ValueError(f"record {index} of {description}: {e}") from e
    labels.append(int(record["label"]))
  return np.stack(images), np.asarray(labels, np.int64)


def score(samples: str, data_config: ml_collections.ConfigDict, *, train_images: int = 0,
          settings: class_accuracy.TrainSettings = class_accuracy.TrainSettings()) -> dict:
  """Trains the classifier and scores the real validation split and the samples."""
  images, labels = adm_npz.read_samples(samples)
  num_classes = pipeline.num_classes(data_config)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"{samples}: labels must lie in [0, {num_classes}) for "
                     f"{data_config.name}, got {labels.min()}..{labels.max()}")
  size = images.shape[1]
  start = time.perf_counter()
  train_x, train_y = read_split(data_config, data_config.train_split, size, train_images)
  model, params, losses = class_accuracy.train(train_x, train_y, num_classes, settings)
  train_seconds = time.perf_counter() - start
  real_x, real_y = read_split(data_config, data_config.eval_split, size)
  real, real_per_class = class_accuracy.per_class_accuracy(
      class_accuracy.predict(model, params, real_x), real_y, num_classes)
  sampled, sampled_per_class = class_accuracy.per_class_accuracy(
      class_accuracy.predict(model, params, images), labels, num_classes)
  return {
      "samples": samples, "num_samples": len(images), "image_size": size,
      "dataset": data_config.name, "num_classes": num_classes,
      "classifier": {"train_images": len(train_x), "steps": settings.steps,
                     "batch_size": settings.batch_size, "seed": settings.seed,
                     "final_loss": float(losses[-10:].mean()),
                     "train_seconds": round(train_seconds, 1)},
      "real_validation": {"num_images": len(real_x), "accuracy": real,
                          "per_class": real_per_class},
      "samples_accuracy": {"accuracy": sampled, "per_class": sampled_per_class},
  }


def report(result: dict, class_names: Sequence[str] | None = None) -> str:
  """The result as a small table (percentages), one row per class."""
  names = class_names or [str(c) for c in range(result["num_classes"])]
  real, sampled = result["real_validation"], result["samples_accuracy"]
  pct = lambda x: "   -" if x is None else f"{100 * x:5.1f}"  # noqa: E731
  lines = [
      f"Classification accuracy ({result['dataset']}, {result['image_size']} px; classifier "
      f"trained on {result['classifier']['train_images']} real images):",
      f"  {'class':<12} {'samples':>8} {'real':>8}",
  ]
  for c, name in enumerate(names):
    lines.append(f"  {name:<12} {pct(sampled['per_class'][c]):>8} "
                 f"{pct(real['per_class'][c]):>8}")
  lines.append(f"  {'all':<12} {pct(sampled['accuracy']):>8} {pct(real['accuracy']):>8}"
               f"   ({result['num_samples']} samples, {real['num_images']} real images)")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.tools.class_accuracy",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--samples", required=True, help="samples .npz (arr_0 images, arr_1 labels)")
  parser.add_argument("--data_from", required=True,
                      help="a run folder whose config.json's data section names the real images")
  parser.add_argument("--output", default="", help="JSON file for the numbers")
  parser.add_argument("--summary", default="", help="a text file to append the table to")
  parser.add_argument("--train_images", type=int, default=0,
                      help="train the classifier on the first N training images (0 = all)")
  parser.add_argument("--steps", type=int, default=class_accuracy.TrainSettings.steps)
  parser.add_argument("--batch_size", type=int, default=class_accuracy.TrainSettings.batch_size)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for name, least in (("train_images", 0), ("steps", 1), ("batch_size", 1)):
    if getattr(args, name) < least:
      parser.error(f"--{name} must be >= {least}, got {getattr(args, name)}")
  try:
    config = common.run_config(args.data_from)
  except FileNotFoundError as e:
    parser.error(f"--data_from: {e}")
  if "data" not in config or "name" not in config.data:
    parser.error(f"--data_from: the config of {args.data_from} has no data section naming a "
                 "dataset")
  settings = class_accuracy.TrainSettings(steps=args.steps, batch_size=args.batch_size,
                                          seed=args.seed)
  result = score(args.samples, config.data, train_images=args.train_images, settings=settings)
  class_names = (synthetic_shapes.CLASS_NAMES if config.data.name == "synthetic_shapes"
                 else None)
  table = report(result, class_names)
  print(table)
  if args.output:
    files.write_text(args.output, json.dumps(result, indent=2) + "\n")
  if args.summary:
    before = files.read_text(args.summary) if epath.Path(args.summary).exists() else ""
    files.write_text(args.summary, before + "\n" + table + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
