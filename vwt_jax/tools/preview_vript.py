"""A picture of a Vript root: keyframes with their scene titles and captions.

  python -m vwt_jax.tools.preview_vript --root VRIPT_ROOT --output preview.png \
      [--num_clips 12] [--columns 4]

One cell per clip (the first readable clips in index order): the middle
frame, then the scene title and the start of the caption, word-wrapped. Clips
that cannot be decoded are reported and skipped. A quick look at
whether clips and captions belong together, for the real download as for the
embedded synthetic set.
"""

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from vwt_jax.core import images as images_lib
from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import frames


def preview(root: str, output: str, *, num_clips: int = 12, columns: int = 4,
            cell: int = 192, cache_dir: str = "") -> tuple[int, list[str]]:
  """Writes the picture; returns the number of clips shown and the reasons
  of those skipped (unreadable)."""
  videos = clip_source.load_videos(root, cache_dir=cache_dir)
  source = clip_source.KeyframeSource(videos, image_size=cell, keyframe="middle")
  records, skipped = [], []
  for i in range(len(source)):
    if len(records) == num_clips:
      break
    try:
      records.append(source[i])
    except frames.CorruptClipError as e:
      skipped.append(str(e))
  if not records:
    raise ValueError(f"no readable clip with a caption and an mp4 under {root!r}"
                     + "".join(f"\n  {reason}" for reason in skipped))
  grid = images_lib.captioned_grid(
      np.stack([r["image"] for r in records]),
      [f"{r['clip_id']}: {r['scene_title']}. {r['caption']}" for r in records],
      columns=min(columns, len(records)))
  images_lib.save_grid(grid, output)
  return len(records), skipped


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.tools.preview_vript",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", required=True, help="extracted Vript root")
  parser.add_argument("--output", required=True, help="PNG to write")
  parser.add_argument("--num_clips", type=int, default=12)
  parser.add_argument("--columns", type=int, default=4, help="cells per row")
  parser.add_argument("--cell", type=int, default=192,
                      help="cell width in pixels (the frame is square)")
  parser.add_argument("--cache_dir", default="",
                      help="where the clip index goes when the root is read-only")
  args = parser.parse_args(argv)
  shown, skipped = preview(args.root, args.output, num_clips=args.num_clips,
                           columns=args.columns, cell=args.cell, cache_dir=args.cache_dir)
  print(f"{shown} clips -> {args.output}")
  if skipped:
    print(f"skipped {len(skipped)} unreadable clip(s):\n" + "\n".join(f"  {r}" for r in skipped))


if __name__ == "__main__":
  main(sys.argv[1:])
