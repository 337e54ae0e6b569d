r"""Writes an originals/reconstructions grid (and PSNR) for a TiTok or VQGAN checkpoint.

  # one of our runs (its config.json is read from the run folder)
  python -m vwt_jax.tools.reconstruct --checkpoint /tmp/titok_tiny --output grid.png
  # converted official weights
  python -m vwt_jax.tools.reconstruct --config configs/titok.py:B-64,recipe=stage2 \
      --checkpoint tokenizer_titok_b64.bin --output grid.png \
      --config.data.data_dir ~/tensorflow_datasets
  # your own pictures instead of the eval split
  python -m vwt_jax.tools.reconstruct --checkpoint RUN --images 'photos/*.jpg' --output g.png
"""

import glob
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax import cli
from vwt_jax import families
from vwt_jax.core import images as images_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.evaluation import reconstruction as recon_eval
from vwt_jax.families import common

FLAGS = flags.FLAGS


def define_flags():
  # Defined on demand so that importing this module (tests, notebooks) does not
  # collide with the trainer's --config flag.
  cli.define_config_flag("Tokenizer config (a config file or a run folder); default: "
                         "the --checkpoint run's.")
  cli.define_checkpoint_flags("A run folder, a step folder, or released weights (a file or "
                              "hf://).")
  flags.DEFINE_string("output", "reconstructions.png", "Grid PNG to write.")
  flags.DEFINE_integer("num_images", 8, "Images in the grid / PSNR average.")
  flags.DEFINE_string("images", None, "Glob of image files to reconstruct.")


def image_batches(pattern: str, image_size: int, batch_size: int):
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise FileNotFoundError(f"--images {pattern!r} matched no file")
  images = []
  for path in paths:
    with open(path, "rb") as f:
      images.append(transforms.preprocess_image(f.read(), image_size=image_size, train=False))
  images = np.stack(images)
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    mask = np.ones(batch_size, np.int32)
    if len(chunk) < batch_size:
      mask[len(chunk):] = 0
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    yield {"image": chunk, "mask": mask}


def reconstruct(config, checkpoint: str, output: str, num_images: int,
                images: str | None = None) -> dict:
  family = families.get(config.family)
  mesh = sharding_lib.create_mesh(config.mesh_shape)
  cfg = family.model_config(config)
  model = family.build(cfg)
  size = config.data.image_size
  params = common.place_params(model, family.load_params(checkpoint, config), mesh,
                               config.logical_axis_rules, jnp.zeros((1, size, size, 3)))
  run = jax.jit(lambda p, x: family.reconstruct(model, p, x))
  dp = sharding_lib.data_parallel_size(mesh)
  batch_size = max(dp, -(-num_images // dp) * dp)
  if images:
    dataset = image_batches(images, size, batch_size)
  else:
    dataset = pipeline.create_image_dataset(
        config.data, split=config.data.eval_split, global_batch_size=batch_size,
        seed=config.seed, train=False)
  result = recon_eval.evaluate_reconstruction(
      lambda x: run(params, x), dataset, mesh,
      num_images=num_images, grid_images=num_images, codebook_size=cfg.codebook_size)
  images_lib.save_grid(result.pop("grid"), output)
  logging.info("wrote %s; PSNR %.2f dB over %d images", output, result["psnr"],
               result["num_images"])
  print(json.dumps({"output": output, **result}))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, checkpoint = cli.config_and_checkpoint()
  reconstruct(config, checkpoint, FLAGS.output, FLAGS.num_images, FLAGS.images)


if __name__ == "__main__":
  define_flags()
  app.run(main)
