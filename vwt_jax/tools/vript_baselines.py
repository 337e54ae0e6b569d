"""Reference HAL prediction files for a Vript root: the bounds a captioner sits between.

  python -m vwt_jax.tools.vript_baselines --root VRIPT_ROOT --output_dir OUT [--seed 0]
  python -m vwt_jax.evaluate_captions --task hal OUT/other_scene.jsonl

writes two JSON Lines files in the format `vwt_jax.evaluate_captions` reads
(`{"id": clip_id, "pred": ..., "gt": [caption content]}`), one line per
captioned clip:
  ground_truth.jsonl  each clip's own caption: the ceiling (HAL 100).
  other_scene.jsonl   the caption of a random clip of another video: what a
                      fluent captioner that ignores the video scores.
"""

import argparse
import json
import os
import random
import sys
from typing import Optional, Sequence

from vwt_jax.data.vript import clip_source

BASELINES = ("ground_truth", "other_scene")


def baseline_predictions(videos, *, seed: int = 0) -> dict[str, list[dict]]:
  """{baseline name: records} over the clips of `videos` that have a caption."""
  clips = [c for v in videos for c in v.clips if c.caption.content]
  if len({c.video_id for c in clips}) < 2:
    raise ValueError("the other_scene baseline needs captioned clips of at least two videos")
  rng = random.Random(seed)
  records = {name: [] for name in BASELINES}
  for clip in clips:
    gt = [clip.caption.content]
    other = rng.choice([c for c in clips if c.video_id != clip.video_id])
    records["ground_truth"].append({"id": clip.clip_id, "pred": clip.caption.content, "gt": gt})
    records["other_scene"].append({"id": clip.clip_id, "pred": other.caption.content, "gt": gt})
  return records


def write(root: str, output_dir: str, *, seed: int = 0, cache_dir: str = "") -> dict[str, str]:
  """Writes the files; returns {baseline name: path}."""
  records = baseline_predictions(clip_source.load_videos(root, cache_dir=cache_dir), seed=seed)
  os.makedirs(output_dir, exist_ok=True)
  paths = {}
  for name, lines in records.items():
    paths[name] = os.path.join(output_dir, f"{name}.jsonl")
    with open(paths[name], "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
  return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.tools.vript_baselines",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", required=True, help="extracted Vript root")
  parser.add_argument("--output_dir", required=True, help="where the .jsonl files go")
  parser.add_argument("--seed", type=int, default=0, help="picks the other scenes")
  parser.add_argument("--cache_dir", default="",
                      help="where the clip index goes when the root is read-only")
  args = parser.parse_args(argv)
  for name, path in write(args.root, args.output_dir, seed=args.seed,
                          cache_dir=args.cache_dir).items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  main(sys.argv[1:])
