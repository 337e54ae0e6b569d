r"""Packs an image folder, webdataset tar shards or image-caption index files
into ArrayRecord shards.

  python -m vwt_jax.tools.pack_images --source image_folder --input pictures \
      --split train --output /data/packed
  python -m vwt_jax.tools.pack_images --source webdataset --input gs://bucket/shards \
      --split 'train-{000000..001023}.tar' --output_split train --output gs://bucket/packed
  # image-caption pairs: LlamaGen's jsonl folder, or tar shards with --captions
  python -m vwt_jax.tools.pack_images --source image_text --input /data/t2i \
      --split train --caption_key blip --output /data/packed_t2i

The result (`data/packed.py`) is read with `--config.data.name=packed
--config.data.data_dir=OUTPUT`. Images keep their encoding, in the source's
order; the labels index the classes of the image folder's train split
(`--train_split`), or for tar shards the class ids up to the largest one
seen (`--num_classes` to give it: every split of a packed dataset has the
same classes). Image-caption pairs (`--source image_text`, or tar shards with
`--captions`) keep their captions and have no classes; every split of a packed
dataset is captioned or none is. Corrupt images (unreadable files,
undecodable bytes, samples without a label or caption) are left out and
counted, up to `--max_corrupt`. No TensorFlow is needed.
"""

import argparse
import sys
import time
from typing import Optional, Sequence

from absl import logging
from tqdm import tqdm

from vwt_jax.data import image_folder
from vwt_jax.data import image_text
from vwt_jax.data import packed
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.data import webdataset

SOURCES = (image_folder.NAME, webdataset.NAME, image_text.NAME)


def pack(source_kind: str, input_path: str, split: str, output: str, *,
         output_split: str = "", train_split: str = "train", num_classes: int = 0,
         captions: bool = False, caption_key: str = image_text.DEFAULT_CAPTION_KEY,
         shard_size: int = packed.DEFAULT_SHARD_SIZE, max_corrupt: int = 100) -> dict:
  """Writes split `output_split` (default `split`) of a packed dataset; its summary."""
  if source_kind not in SOURCES:
    raise ValueError(f"--source={source_kind!r}: expected one of {SOURCES}")
  if captions and source_kind != webdataset.NAME:
    kind = "labelled" if source_kind == image_folder.NAME else "always captioned"
    raise ValueError(f"--captions is for tar shards (--source=webdataset); --source="
                     f"{source_kind} is {kind}")
  start = time.time()
  config = pipeline.default_data_config()
  config.update(dict(name=source_kind, data_dir=input_path, captions=captions,
                     caption_key=caption_key,
                     train_split=train_split if source_kind == image_folder.NAME else split))
  source, description = pipeline.open_source(config, split)
  captioned = pipeline.captioned(config)
  if captioned:
    classes = ()
  elif source_kind == image_folder.NAME:
    classes = image_folder.classes(input_path, train_split)
  else:
    seen = pipeline.num_classes(config)
    if num_classes and num_classes < seen:
      raise ValueError(f"--num_classes={num_classes}: {description} has labels up to {seen - 1}")
    classes = tuple(str(i) for i in range(num_classes or seen))
  corrupt = []
  with packed.PackWriter(output, output_split or split, classes, shard_size,
                         captioned) as writer:
    for index in tqdm(range(len(source)), desc="pack", unit="image"):
      try:
        record = source[index]
        transforms.decode_image(record["image"])
      except transforms.CorruptRecordError as e:
        logging.warning("Corrupt record %d (%s) of %s, left out: %s", index,
                        source.record_name(index), description, e)
        corrupt.append(source.record_name(index))
        if len(corrupt) > max_corrupt:
          raise pipeline.TooManyCorruptRecordsError(
              f"{len(corrupt)} corrupt images in {description} exceed --max_corrupt="
              f"{max_corrupt}; the last ones: {', '.join(corrupt[-5:])}") from None
        continue
      writer.add(record)
    writer.close(source=f"{source_kind}:{input_path}", source_split=split,
                 num_corrupt=len(corrupt))
  return {"output": output, "split": writer.split, "num_records": writer.num_records,
          "num_classes": len(classes), "captions": captioned, "num_corrupt": len(corrupt),
          "seconds": round(time.time() - start, 2)}


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.tools.pack_images",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True, choices=SOURCES)
  parser.add_argument("--input", required=True,
                      help="the image folder (holding the split folders), the shards' folder "
                      "or the index files' folder")
  parser.add_argument("--split", required=True,
                      help="split folder name, shard pattern for webdataset, index files "
                      "(a folder, file or pattern) for image_text")
  parser.add_argument("--output", required=True, help="packed dataset folder")
  parser.add_argument("--output_split", default="",
                      help="split name in the packed dataset (default --split)")
  parser.add_argument("--train_split", default="train",
                      help="image folder: the split whose class folders name the classes")
  parser.add_argument("--num_classes", type=int, default=0,
                      help="webdataset: the number of classes (default: the largest id + 1)")
  parser.add_argument("--captions", action="store_true",
                      help="webdataset: image-caption pairs (.txt or .json) instead of labels")
  parser.add_argument("--caption_key", default=image_text.DEFAULT_CAPTION_KEY,
                      choices=sorted(image_text.CAPTION_KEY),
                      help="image_text: the caption a LlamaGen [blip, llava, llava_first] "
                      "list gives")
  parser.add_argument("--shard_size", type=int, default=packed.DEFAULT_SHARD_SIZE)
  parser.add_argument("--max_corrupt", type=int, default=100)
  args = parser.parse_args(argv)
  summary = pack(args.source, args.input, args.split, args.output,
                 output_split=args.output_split, train_split=args.train_split,
                 num_classes=args.num_classes, captions=args.captions,
                 caption_key=args.caption_key, shard_size=args.shard_size,
                 max_corrupt=args.max_corrupt)
  print(summary)


if __name__ == "__main__":
  main(sys.argv[1:])
