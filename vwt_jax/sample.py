r"""Sampling from a generator: class rows or captioned images, and an ADM-style npz.

  # one of our runs (config.json and the tokenizer come from the run)
  python -m vwt_jax.sample --checkpoint demo_workdir/generator --classes 0,1,2 \
      --per_class 8 --cfg 2.0 --output samples.png
  # released weights by name (docs/pretrained.md): the Hub, the config, the tokenizer
  python -m vwt_jax.sample --pretrained llamagen-c2i-xl-384 --classes 207,360,387,974 \
      --cfg 4.0 --top_k 2000 --output samples.png
  # the same from local files, converted on load
  python -m vwt_jax.sample --config configs/llamagen.py:XL --checkpoint c2i_XL_384.pt \
      --config.tokenizer.checkpoint vq_ds16_c2i.pt \
      --config.tokenizer.config configs/llamagen_vq.py:vq16,image_size=384 \
      --classes 207,360,387,974 --cfg 4.0 --top_k 2000 --output samples.png
  # 50k samples with random labels for FID, resized 384 -> 256 as the paper does
  python -m vwt_jax.sample ... --num_samples 50000 --cfg 1.75 --top_k 0 \
      --resize 256 --npz samples_50k.npz --batch_size 256
  # text-to-image (a t2i run): captions from a file (one per line) or from the
  # clips of a Vript root, encoded by the caption encoder recorded in the code
  # dataset's metadata; one cell per sample with its caption underneath
  python -m vwt_jax.sample --checkpoint demo_workdir/t2i --captions prompts.txt \
      --cfg 3.0 --output captions_to_images.png
  python -m vwt_jax.sample --checkpoint demo_workdir/t2i \
      --captions_from demo_workdir/vript/heldout --num_captions 8 --per_caption 2
  # official t2i weights: the release implies its text encoder (FLAN-T5-XL,
  # hf://google/flan-t5-xl, 120 tokens) and the official sampler's settings
  # (cfg 7.5, top-k 1000, temperature 1, top-p 1); --caption_encoder_dir
  # reads the encoder from elsewhere (e.g. a local copy)
  python -m vwt_jax.sample --pretrained llamagen-t2i-xl-256 --captions prompts.txt \
      --output t2i.png

The npz holds `arr_0` (uint8 NHWC) and `arr_1` (labels), the layout OpenAI's
ADM evaluator reads, and `codes` (the tokens decoded); caption samples hold
`captions` instead of `arr_1`.
Pixels are made as the tokenizer's official sampler makes them: --resize is
`F.interpolate(mode="bicubic")` on the decoder's unclamped output, then uint8
by LlamaGen's clip(127.5 x + 128, 0, 255) or TiTok's clamp(0, 1) x 255, both
truncated (`core.images`).
For FID runs (50 per class, resumable, scored) see `vwt_jax.sample_eval`.
"""

import json
import os
from typing import Any, Callable, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from tqdm import tqdm

from vwt_jax import cli
from vwt_jax.cli import SettingsError, check_flag
from vwt_jax.core import distributed
from vwt_jax.core import files
from vwt_jax.core import images as images_lib
from vwt_jax.data.vript import clip_source
from vwt_jax.evaluation import adm_npz
from vwt_jax.families import generator as generator_lib
from vwt_jax.families import text_encoders
from vwt_jax.models import gpt as gpt_lib

FLAGS = flags.FLAGS
# Captions need about 20 characters per line: smaller samples are enlarged
# (nearest neighbour) to this many pixels in the captioned grid.
_MIN_CAPTION_CELL = 128
# The `sample_codes` setting each sampler flag overrides.
_FLAG_SETTINGS = {"cfg": "cfg_scale", "cfg_interval": "cfg_interval",
                  "temperature": "temperature", "top_k": "top_k", "top_p": "top_p"}


def define_sampling_flags():
  """The image sampler's settings, shared by `sample` and `sample_eval` (None =
  config.sampling's)."""
  cli.define_sampling_flags(batch_size=64)
  flags.DEFINE_float("cfg", None, "Classifier-free guidance scale (1 = off).")
  flags.DEFINE_integer("cfg_interval", None, "Guide only the first cfg_interval+2 tokens.")
  flags.DEFINE_integer("resize", 0, "Resize the images to this size as torch's bicubic "
                       "interpolate (0 = keep).")


def sampling_overrides() -> dict:
  """The sampler settings given on the command line, as `sample_codes` kwargs."""
  return {setting: FLAGS[flag].value for flag, setting in _FLAG_SETTINGS.items()
          if FLAGS[flag].value is not None}


def check_sampling(gen: generator_lib.Generator, overrides: dict[str, Any], *,
                   batch_size: int, resize: int, seed: int) -> None:
  """Checks what `sample` is given against the generator's sampler.

  `overrides` are `sample_codes` settings given as flags (named by their flag
  in messages); the sampler's other settings come from `config.sampling`.

  Raises:
    SettingsError: naming the first setting the generator cannot use.
  """
  check_flag(batch_size >= 1, "--batch_size", batch_size, ">= 1 images per call")
  check_flag(resize >= 0, "--resize", resize, "a size in pixels >= 0 (0 = keep)")
  check_flag(seed >= 0, "--seed", seed, "a seed >= 0")
  rules = gen.sampling_rules()
  flag_of = {setting: f"--{flag}" for flag, setting in _FLAG_SETTINGS.items()}
  for key, value in overrides.items():
    if key not in rules:
      raise SettingsError(f"{flag_of.get(key, key)}={value!r}: the sampler of the "
                          f"{gen.description} has no {key}; it reads {sorted(rules)}")
  settings = {**gen.config.sampling.to_dict(), **overrides}
  for key, (test, allowed) in rules.items():
    name = flag_of.get(key, key) if key in overrides else f"config.sampling.{key}"
    check_flag(test(settings[key]), name, settings[key],
               f"{allowed} for the {gen.description}")


def class_ids(gen: generator_lib.Generator, values, name: str) -> list[int]:
  """`values` (ints or their strings) as class ids of the generator.

  Raises:
    SettingsError: naming `name`, for an empty list or a value that is not a class.
  """
  num = gen.num_classes
  if not values:
    raise SettingsError(f"{name} is empty: expected class ids 0..{num - 1}")
  for value in values:
    try:
      ok = 0 <= int(value) < num
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise SettingsError(f"{name}: {value} is not a class of this generator ({num} "
                          f"classes: 0..{num - 1})")
  return [int(value) for value in values]


def define_flags():
  cli.define_config_flag("Generator config (a config file or a run folder); default: "
                         "the --checkpoint run's.")
  cli.define_checkpoint_flags("A generator run folder or released weights (a file or hf://).")
  flags.DEFINE_list("classes", None, "Class labels; one grid row per class.")
  flags.DEFINE_integer("per_class", 4, "Samples per class in --classes.")
  flags.DEFINE_integer("num_samples", 0, "Instead of --classes: this many random labels.")
  flags.DEFINE_string("captions", "", "t2i: a text file of captions, one per line.")
  flags.DEFINE_string("captions_from", "", "t2i: instead, the captions of --num_captions "
                      "clips spread over this Vript root.")
  flags.DEFINE_integer("num_captions", 8, "Captions taken by --captions_from.")
  flags.DEFINE_integer("per_caption", 1, "Samples per caption (one grid row each if > 1).")
  flags.DEFINE_enum("caption_encoder", None, text_encoders.KINDS, "t2i text encoder; "
                    "default the recorded one: the config's (a release's: FLAN-T5-XL), "
                    "else the code dataset's.")
  flags.DEFINE_string("caption_encoder_dir", "", "Its model directory or hf:// repository "
                      "('' = the recorded one, else the kind's default).")
  flags.DEFINE_integer("caption_length", 0, "Caption tokens (0 = the recorded length, "
                       "else the generator's prefix length).")
  define_sampling_flags()
  flags.DEFINE_string("output", None, "Grid PNG to write ('' = none); default samples.png, "
                      "captions_to_images.png for captions.")
  flags.DEFINE_integer("grid_max", 64, "At most this many images in the grid.")
  flags.DEFINE_string("npz", "", "Also write all samples to this .npz (arr_0, arr_1 labels "
                      "or captions, and the codes they were decoded from).")


def load(config, checkpoint: str, mesh=None,
         check: Optional[Callable[[generator_lib.Generator], None]] = None):
  """(generator, its parameters placed on the mesh) for sampling.

  `check(generator)` runs before the weights are read, so that settings the
  generator cannot use fail before minutes of loading.
  """
  gen = generator_lib.Generator(config, mesh=mesh)
  if check is not None:
    check(gen)
  return gen, gen.load_params(checkpoint)


def global_batch_size(gen: generator_lib.Generator, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel devices."""
  return -(-batch_size // gen.data_parallel) * gen.data_parallel


def sample(gen: generator_lib.Generator, params, cond: np.ndarray, *, emb_mask: np.ndarray | None = None,
           seed: int = 0, key=None, batch_size: int = 64, resize: int = 0, bar=None,
           return_codes: bool = False, **overrides):
  """uint8 NHWC samples for `cond`, in order; defaults from `config.sampling`.

  `cond` holds class labels (N,), or for a t2i generator left-padded caption
  features (N, T, D) with their mask `emb_mask` (N, T) (`caption_conditions`).
  Batch i draws from `fold_in(key, i)`, `key` defaulting to `key(seed)`. A
  given tqdm `bar` is advanced instead of showing a new one. With
  `return_codes`, (images, int32 codes (N, L) they were decoded from).
  """
  tok = gen.tokenizer()
  batch_size = global_batch_size(gen, batch_size)
  key = jax.random.key(seed) if key is None else key

  def pad(rows):
    return np.concatenate([rows, np.repeat(rows[-1:], batch_size - len(rows), axis=0)])

  out, all_codes = [], []
  with tqdm(total=len(cond), desc="sample", unit="img", disable=bar is not None) as own:
    for i, start in enumerate(range(0, len(cond), batch_size)):
      chunk = cond[start:start + batch_size]
      mask = None if emb_mask is None else pad(emb_mask[start:start + batch_size])
      codes = gen.sample_codes(params, pad(chunk), jax.random.fold_in(key, i),
                                   emb_mask=mask, **overrides)
      out.append(tok.pictures(codes, resize)[:len(chunk)])
      all_codes.append(codes[:len(chunk)])
      (bar or own).update(len(chunk))
  if return_codes:
    return np.concatenate(out), np.concatenate(all_codes)
  return np.concatenate(out)


def read_captions(path: str) -> list[str]:
  """The non-empty lines of a text file, stripped."""
  with files.open_text(path) as f:
    captions = [line.strip() for line in f if line.strip()]
  if not captions:
    raise ValueError(f"{path} holds no captions (one per line)")
  return captions


def vript_captions(root: str, num: int) -> list[str]:
  """The captions of `num` captioned clips spread evenly over a Vript root's index."""
  # Reading a record decodes a (small, unused) frame too; only a few are read.
  source = clip_source.KeyframeSource(clip_source.load_videos(root), image_size=16)
  if not len(source):
    raise ValueError(f"no clip with a caption and an mp4 under {root!r}")
  picks = np.unique(np.linspace(0, len(source) - 1, num).round().astype(int))
  return [source[int(i)]["caption"] for i in picks]


def caption_encoder_description(config, metadata=None, *, prefix_length: int,
                                kind: str | None = None, model_dir: str = "",
                                max_length: int = 0) -> dict[str, Any]:
  """Which encoder a t2i generator's captions go through (`text_encoders.describe`'s
  keys; "dim" only where a code dataset recorded one).

  The recorded encoder is the config's `caption_encoder` section (a release's,
  e.g. FLAN-T5-XL for LlamaGen's t2i weights, kept in the config.json of their
  conversion), else the one the code dataset's metadata records
  (`extract_codes --vript_root`). `kind` (another kind replaces the recorded
  encoder), `model_dir` (e.g. a local copy of the recorded one) and
  `max_length` override it; the length is otherwise the recorded one, else the
  GPT's prefix `prefix_length`.

  Raises:
    SettingsError: no encoder is recorded and none is named.
  """
  if "caption_encoder" in config:
    recorded, where = dict(config.caption_encoder), "the config's caption_encoder"
  else:
    source = getattr(metadata, "source", None) or {}
    recorded, where = source.get("caption_encoder"), f"the code dataset {config.data.dir!r}"
  if kind and (not recorded or recorded.get("kind") != kind):
    recorded = {"kind": kind, "model_dir": ""}
  if not recorded:
    raise SettingsError(f"{where} records no caption encoder: name one (--caption_encoder, "
                        "--caption_encoder_dir)")
  description = dict(recorded)
  if model_dir:
    description["model_dir"] = model_dir
  description["max_length"] = int(max_length or description.get("max_length") or prefix_length)
  return description


def caption_encoder(gen: generator_lib.Generator, kind: str | None = None, model_dir: str = "",
                    max_length: int = 0) -> text_encoders.CaptionFeatureEncoder:
  """The text encoder of a t2i generator (`caption_encoder_description`); it
  must produce the GPT's caption width and prefix length."""
  cfg = gen.cfg
  description = caption_encoder_description(
      gen.config, gen.metadata, prefix_length=cfg.cls_token_num, kind=kind,
      model_dir=model_dir, max_length=max_length)
  if "dim" in description:
    # A code dataset's encoder, rebuilt as it was recorded.
    encoder = text_encoders.from_description(description)
  else:
    # A release's or a named one: the kind's defaults unless the config says otherwise.
    encoder = text_encoders.load_caption_encoder(
        description["kind"], description["model_dir"], max_length=description["max_length"],
        clean_captions=description.get("clean_captions"))
  if (encoder.dim, encoder.max_length) != (cfg.caption_dim, cfg.cls_token_num):
    raise ValueError(f"caption encoder {encoder.kind} gives {encoder.max_length} tokens of "
                     f"{encoder.dim}-d features; the generator takes {cfg.cls_token_num} "
                     f"of {cfg.caption_dim}")
  return encoder


def caption_conditions(encoder: text_encoders.CaptionFeatureEncoder,
                       captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """(left-padded features float32 (N, T, D), mask bool (N, T)): the t2i GPT's
  input, laid out as the code reader lays out the training captions."""
  features, mask = encoder.encode(captions)
  # Jitted: eagerly, each of its few ops would compile on its own.
  cond, emb_mask = jax.jit(gpt_lib.left_pad_captions)(features, mask)
  return np.asarray(cond, np.float32), np.asarray(emb_mask, bool)


def captions_grid(images: np.ndarray, captions: list[str], per_caption: int) -> np.ndarray:
  """One cell per sample with its caption under it; a row per caption if per_caption > 1."""
  cells = images_lib.upscale(images, _MIN_CAPTION_CELL)
  columns = per_caption if per_caption > 1 else min(4, len(images))
  return images_lib.captioned_grid(cells, captions, columns=columns)


def _square_grid(images: np.ndarray, limit: int) -> np.ndarray:
  n = min(len(images), limit)
  cols = int(np.ceil(np.sqrt(n)))
  pad = np.zeros((cols * cols - n, *images.shape[1:]), np.uint8)
  return images_lib.image_grid(list(np.concatenate([images[:n], pad]).reshape(
      cols, cols, *images.shape[1:])))


def _grid_classes(config) -> tuple[list, str]:
  """The classes of the grid rows and what set them."""
  if FLAGS.classes is not None:
    return FLAGS.classes, "--classes"
  return list(config.sampling.classes), "config.sampling.classes"


def _check_counts() -> None:
  """Checks the flags that need no model."""
  if FLAGS.captions and FLAGS.captions_from:
    raise SettingsError("--captions and --captions_from exclude each other")
  for name, ok, allowed in (
      ("per_class", FLAGS.per_class >= 1, ">= 1 samples per class"),
      ("num_samples", FLAGS.num_samples >= 0, ">= 0 (0 = sample --classes)"),
      ("per_caption", FLAGS.per_caption >= 1, ">= 1 samples per caption"),
      ("num_captions", FLAGS.num_captions >= 1, ">= 1 captions"),
      ("caption_length", FLAGS.caption_length >= 0,
       ">= 0 tokens (0 = the generator's prefix length)"),
      ("grid_max", FLAGS.grid_max >= 1, ">= 1 images")):
    check_flag(ok, f"--{name}", FLAGS[name].value, allowed)


def _check_with_model(gen: generator_lib.Generator) -> None:
  """Checks the flags against the generator (`load`'s check)."""
  check_sampling(gen, sampling_overrides(), batch_size=FLAGS.batch_size,
                 resize=FLAGS.resize, seed=FLAGS.seed)
  if not gen.conditional_on_class:
    if not (FLAGS.captions or FLAGS.captions_from):
      raise SettingsError("a t2i generator samples from --captions or --captions_from")
    caption_encoder_description(gen.config, gen.metadata, prefix_length=gen.cfg.cls_token_num,
                                kind=FLAGS.caption_encoder, model_dir=FLAGS.caption_encoder_dir,
                                max_length=FLAGS.caption_length)
  elif FLAGS.captions or FLAGS.captions_from:
    raise SettingsError("captions need a t2i generator (config.model.model_type='t2i')")
  elif not FLAGS.num_samples:
    class_ids(gen, *_grid_classes(gen.config))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    _check_counts()
    distributed.initialize()
    config, checkpoint = cli.config_and_checkpoint()
    gen, params = load(config, checkpoint, check=_check_with_model)
  except SettingsError as e:
    raise app.UsageError(str(e)) from e
  overrides = sampling_overrides()
  kwargs = dict(seed=FLAGS.seed, batch_size=FLAGS.batch_size, resize=FLAGS.resize, **overrides)
  captions = rows = None
  if not gen.conditional_on_class:
    if FLAGS.captions:
      captions = read_captions(FLAGS.captions)
    else:
      captions = vript_captions(FLAGS.captions_from, FLAGS.num_captions)
    captions = [c for c in captions for _ in range(FLAGS.per_caption)]
    encoder = caption_encoder(gen, FLAGS.caption_encoder, FLAGS.caption_encoder_dir,
                              FLAGS.caption_length)
    cond, emb_mask = caption_conditions(encoder, captions)
    images, codes = sample(gen, params, cond, emb_mask=emb_mask, return_codes=True, **kwargs)
  else:
    if FLAGS.num_samples:
      rng = np.random.default_rng(FLAGS.seed)
      labels = rng.integers(0, gen.num_classes, FLAGS.num_samples)
    else:
      classes = class_ids(gen, *_grid_classes(config))
      labels = np.repeat(np.asarray(classes), FLAGS.per_class)
      rows = len(classes)
    images, codes = sample(gen, params, labels.astype(np.int32), return_codes=True, **kwargs)
  if jax.process_index() != 0:
    return
  written = {}
  output = FLAGS.output
  if output is None:
    output = "samples.png" if captions is None else "captions_to_images.png"
  if output:
    if captions is not None:
      n = min(len(images), FLAGS.grid_max)
      grid = captions_grid(images[:n], captions[:n], FLAGS.per_caption)
    elif rows:
      grid = images_lib.image_grid(list(images.reshape(rows, -1, *images.shape[1:])))
    else:
      grid = _square_grid(images, FLAGS.grid_max)
    images_lib.save_grid(grid, output)
    written["grid"] = output
  if FLAGS.npz:
    files.makedirs(os.path.dirname(files.absolute(FLAGS.npz)))
    if captions is None:
      adm_npz.write_samples(FLAGS.npz, images, labels.astype(np.int64), codes=codes)
    else:
      # A file object keeps np.savez from appending ".npz" to the given name.
      with files.write_file(FLAGS.npz, "wb") as f:
        np.savez(f, arr_0=images, captions=np.asarray(captions), codes=codes)
    written["npz"] = FLAGS.npz
  logging.info("wrote %s", written)
  print(json.dumps({"num_samples": int(len(images)), "shape": list(images.shape[1:]),
                    **written, **overrides}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
