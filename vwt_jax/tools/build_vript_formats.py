"""Writes the Vriptor training files the official builders write.

  python -m vwt_jax.tools.build_vript_formats --root VRIPT_ROOT \
      --stage stage1 --output_dir OUT [--seed 0] [--no_official_filters]

gives OUT/vript_{stage}_single.json and OUT/vript_{stage}_concat.json in the
layout of `vriptor/build_vript_training_data/build_training_vript_*.py`
(`[{"video": path | [paths], "QA": [{"i": prompt, "q": "", "a": target}]}]`,
video paths relative to the root), for training with ST-LLM's own code or for
reading what our pipeline feeds the captioner: `vwt_jax.data.vript.pipeline`
builds the same samples in memory from the same seed. Unlike the official
scripts the list is not shuffled, so equal seeds give equal files.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from absl import logging

from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import formats

def official_records(samples: Sequence[formats.Sample]) -> list[dict]:
  """`Sample`s as the official builders' JSON entries."""
  return [{"video": s.video[0] if s.format.startswith("single") else list(s.video),
           "QA": [{"i": s.prompt, "q": "", "a": s.target}]} for s in samples]


def write(root: str, stage: str, output_dir: str, *, seed: int = 0,
          official_filters: bool = True, cache_dir: str = "") -> dict[str, int]:
  """Writes both files; returns the number of samples per format."""
  videos = clip_source.load_videos(root, cache_dir=cache_dir)
  os.makedirs(output_dir, exist_ok=True)
  counts = {name: 0 for name in formats.FORMATS}
  for kind in formats.KINDS:
    samples = formats.build_samples(videos, stage=stage, seed=seed, kinds=(kind,),
                                    official_filters=official_filters)
    path = os.path.join(output_dir, f"vript_{stage}_{kind}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(official_records(samples), f, indent=2, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    for s in samples:
      counts[s.format] += 1
    logging.info("%d %s samples -> %s", len(samples), kind, path)
  return counts


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.tools.build_vript_formats",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", required=True,
                      help="extracted Vript root (the folder holding vript_captions/)")
  parser.add_argument("--stage", choices=formats.STAGES, default="stage1")
  parser.add_argument("--output_dir", required=True, help="where the .json files go")
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds window sampling and the stage-2 random filters")
  parser.add_argument("--no_official_filters", dest="official_filters", action="store_false",
                      help="skip the stage-2 duration filter, random drops and voice-over coin flip")
  parser.add_argument("--cache_dir", default="",
                      help="where the clip index goes when the root is read-only")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  counts = write(args.root, args.stage, args.output_dir, seed=args.seed,
                 official_filters=args.official_filters, cache_dir=args.cache_dir)
  print(json.dumps({"stage": args.stage, "samples": counts}))


if __name__ == "__main__":
  main(sys.argv[1:])
