r"""Class-conditional sampling from a generator: an image grid and an ADM-style npz.

  # one of our runs (config.json and the tokenizer come from the run)
  python -m vwt_jax.sample --checkpoint demo_workdir/generator --classes 0,1,2 \
      --per_class 8 --cfg 2.0 --output samples.png
  # official LlamaGen weights (converted on load) with the official VQ-16
  python -m vwt_jax.sample --config configs/llamagen.py:XL --checkpoint c2i_XL_384.pt \
      --config.tokenizer.checkpoint vq_ds16_c2i.pt \
      --config.tokenizer.config configs/llamagen_vq.py:vq16,image_size=384 \
      --classes 207,360,387,974 --cfg 4.0 --top_k 2000 --output samples.png
  # 50k samples with random labels for FID, resized 384 -> 256 as the paper does
  python -m vwt_jax.sample ... --num_samples 50000 --cfg 1.75 --top_k 0 \
      --resize 256 --npz samples_50k.npz --batch_size 256

The npz holds `arr_0` (uint8 NHWC) and `arr_1` (labels), the layout OpenAI's
ADM evaluator reads. Pixels are quantised as the official sampler does:
clip(127.5 x + 128, 0, 255) truncated to uint8 (`reconstruction.quantize`).
For FID runs (50 per class, resumable, scored) see `vwt_jax.sample_eval`.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
from tqdm import tqdm

from vwt_jax.core import distributed
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.evaluation import reconstruction as recon_eval
from vwt_jax.training import generator as generator_lib
from vwt_jax.training import tokenizers

FLAGS = flags.FLAGS


def define_sampling_flags():
  """The sampler settings shared by `sample` and `sample_eval` (None = config.sampling)."""
  flags.DEFINE_float("cfg", None, "Classifier-free guidance scale (1 = off).")
  flags.DEFINE_integer("cfg_interval", None, "Guide only the first cfg_interval+2 tokens.")
  flags.DEFINE_float("temperature", None, "Softmax temperature.")
  flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens (0 = all).")
  flags.DEFINE_float("top_p", None, "Nucleus sampling threshold (1 = off).")
  flags.DEFINE_integer("seed", 0, "PRNG seed: the same seed gives the same samples.")
  flags.DEFINE_integer("batch_size", 64, "Images per compiled sampling call (all devices).")
  flags.DEFINE_integer("resize", 0, "Bicubic-resize the images to this size (0 = keep).")


def sampling_overrides() -> dict:
  """The sampler settings given on the command line, as `sample_codes` kwargs."""
  return {k: v for k, v in dict(
      cfg_scale=FLAGS.cfg, cfg_interval=FLAGS.cfg_interval, temperature=FLAGS.temperature,
      top_k=FLAGS.top_k, top_p=FLAGS.top_p).items() if v is not None}


def define_flags():
  config_flags.DEFINE_config_file(
      "config", None, "Generator config; defaults to the config.json of the --checkpoint run.",
      lock_config=True)
  flags.DEFINE_string("checkpoint", None, "A generator run folder or an official state dict.")
  flags.DEFINE_list("classes", None, "Class labels; one grid row per class.")
  flags.DEFINE_integer("per_class", 4, "Samples per class in --classes.")
  flags.DEFINE_integer("num_samples", 0, "Instead of --classes: this many random labels.")
  define_sampling_flags()
  flags.DEFINE_string("output", "samples.png", "Grid PNG to write ('' = none).")
  flags.DEFINE_integer("grid_max", 64, "At most this many images in the grid.")
  flags.DEFINE_string("npz", "", "Also write all samples to this .npz (arr_0, arr_1).")
  flags.mark_flags_as_required(["checkpoint"])


def load(config, checkpoint: str, mesh=None):
  """(generator trainer, its parameters placed on the mesh) for sampling."""
  trainer = generator_lib.GeneratorTrainer(config, workdir="", mesh=mesh)
  params = jax.device_put(trainer.arch.load_pretrained(checkpoint),
                          trainer.param_shardings)
  return trainer, params


def global_batch_size(trainer, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel devices."""
  dp = sharding_lib.data_parallel_size(trainer.mesh)
  return -(-batch_size // dp) * dp


def sample(trainer, params, labels: np.ndarray, *, seed: int = 0, key=None,
           batch_size: int = 64, resize: int = 0, bar=None, **overrides) -> np.ndarray:
  """uint8 NHWC samples for `labels`, in order; defaults from `config.sampling`.

  Batch i draws from `fold_in(key, i)`, `key` defaulting to `key(seed)`. A
  given tqdm `bar` is advanced instead of showing a new one.
  """
  tok = trainer.tokenizer()
  batch_size = global_batch_size(trainer, batch_size)
  key = jax.random.key(seed) if key is None else key
  out = []
  with tqdm(total=len(labels), desc="sample", unit="img", disable=bar is not None) as own:
    for i, start in enumerate(range(0, len(labels), batch_size)):
      chunk = labels[start:start + batch_size]
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])
      codes = trainer.sample_codes(params, padded, jax.random.fold_in(key, i), **overrides)
      images = tok.decode(jnp.asarray(codes))
      if resize and resize != images.shape[1]:
        images = jax.image.resize(images, (images.shape[0], resize, resize, 3), "bicubic")
      out.append(recon_eval.quantize(jax.device_get(images))[:len(chunk)])
      (bar or own).update(len(chunk))
  return np.concatenate(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  config = FLAGS.config or tokenizers.run_config(FLAGS.checkpoint)
  trainer, params = load(config, FLAGS.checkpoint)
  if FLAGS.num_samples:
    rng = np.random.default_rng(FLAGS.seed)
    labels = rng.integers(0, trainer.arch.num_classes, FLAGS.num_samples)
    rows = None
  else:
    classes = [int(c) for c in (FLAGS.classes or config.sampling.classes)]
    labels = np.repeat(np.asarray(classes), FLAGS.per_class)
    rows = len(classes)
  overrides = sampling_overrides()
  images = sample(trainer, params, labels.astype(np.int32), seed=FLAGS.seed,
                  batch_size=FLAGS.batch_size, resize=FLAGS.resize, **overrides)
  if jax.process_index() != 0:
    return
  written = {}
  if FLAGS.output:
    if rows:
      grid = recon_eval.image_grid(list(images.reshape(rows, -1, *images.shape[1:])))
    else:
      n = min(len(images), FLAGS.grid_max)
      cols = int(np.ceil(np.sqrt(n)))
      pad = np.zeros((cols * cols - n, *images.shape[1:]), np.uint8)
      grid = recon_eval.image_grid(list(np.concatenate([images[:n], pad]).reshape(
          cols, cols, *images.shape[1:])))
    recon_eval.save_grid(grid, FLAGS.output)
    written["grid"] = FLAGS.output
  if FLAGS.npz:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.npz)), exist_ok=True)
    np.savez(FLAGS.npz, arr_0=images, arr_1=labels.astype(np.int64))
    written["npz"] = FLAGS.npz
  logging.info("wrote %s", written)
  print(json.dumps({"num_samples": int(len(images)), "shape": list(images.shape[1:]),
                    **written, **overrides}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
