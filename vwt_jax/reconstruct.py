r"""Images through a tokenizer and back: the tokens, the reconstructions, PSNR.

  # your own pictures (files, folders, globs; any size), with released weights
  python -m vwt_jax.reconstruct --pretrained titok-l32 photo.jpg holiday/ \
      --output reconstructions.png --tokens tokens.npz
  # one of our runs, on its config's evaluation split
  python -m vwt_jax.reconstruct --checkpoint demo_workdir/tokenizer --num_images 8
  # official weights from a local file and the config they need
  python -m vwt_jax.reconstruct --config configs/titok.py:B-64,recipe=stage2 \
      --checkpoint tokenizer_titok_b64.bin 'photos/*.jpg'

Pictures are cropped to the tokenizer's image size as its paper's code
evaluates: TiTok as torchvision's `Resize` (shorter side, bicubic,
antialiased) + `CenterCrop`, LlamaGen's VQGAN as ADM's `center_crop_arr`
(`families.*.EVAL_CROP`). Folders are read recursively in name order; a file
that is not a readable image is reported and skipped. Each picture's tokens
are printed (`PATH: ids`; a VAE has none) and, with --tokens, saved: `codes`
(int32, one row per picture), `paths` and `psnr`. The grid shows the crops
above their reconstructions, turned into pixels by the family's own rule.
"""

import glob
import json
import os

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax import cli
from vwt_jax import families
from vwt_jax.core import files
from vwt_jax.core import images as images_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.evaluation import reconstruction as recon_eval
from vwt_jax.families import common

FLAGS = flags.FLAGS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def define_flags():
  # Defined on demand so that importing this module (tests, notebooks) does not
  # collide with the trainer's --config flag.
  cli.define_config_flag("Tokenizer config (a config file or a run folder); default: "
                         "the --checkpoint run's or the --pretrained release's.")
  cli.define_checkpoint_flags("A run folder, a step folder, or released weights (a file or "
                              "hf://).")
  flags.DEFINE_string("output", "reconstructions.png", "Grid PNG to write.")
  flags.DEFINE_string("tokens", "", "An .npz to write each picture's tokens to.")
  flags.DEFINE_integer("num_images", 8, "Without pictures: images of the evaluation split.")


def image_paths(sources: list[str]) -> list[str]:
  """The image files named by `sources` (files, folders, globs), in order."""
  paths = []
  for source in sources:
    source = os.path.expanduser(source)
    if glob.has_magic(source):
      found = sorted(glob.glob(source, recursive=True))
    elif os.path.isdir(source):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(source)
                     for name in names)
    elif os.path.exists(source):
      paths.append(source)
      continue
    else:
      raise FileNotFoundError(f"{source}: no such file or folder")
    found = [p for p in found if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)]
    if not found:
      raise FileNotFoundError(f"{source} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
    paths.extend(found)
  return paths


def read_images(paths: list[str], crop, size: int) -> tuple[list[str], np.ndarray]:
  """(the readable paths, their crops uint8 (N, size, size, 3)); the others are
  reported and left out."""
  kept, images = [], []
  for path in paths:
    try:
      image = transforms.decode_image(epath.Path(path).read_bytes())
    except transforms.CorruptRecordError as e:
      logging.warning("%s skipped: %s", path, e)
      continue
    kept.append(path)
    images.append(crop(image, size))
  if not images:
    raise ValueError(f"none of the {len(paths)} files is a readable image")
  if len(kept) < len(paths):
    print(f"skipped {len(paths) - len(kept)} of {len(paths)} files: not readable images")
  return kept, np.stack(images)


def batches(images: np.ndarray, batch_size: int):
  """Host batches of `images` in [-1, 1], the last one padded and masked."""
  for start in range(0, len(images), batch_size):
    chunk = transforms.to_float(images[start:start + batch_size])
    mask = np.zeros(batch_size, np.int32)
    mask[:len(chunk)] = 1
    pad = np.repeat(chunk[-1:], batch_size - len(chunk), 0)
    yield {"image": np.concatenate([chunk, pad]), "mask": mask}


def reconstruct(config, checkpoint: str, output: str, num_images: int = 8,
                pictures: list[str] | None = None, tokens: str = "") -> dict:
  """Reconstructs `pictures` (paths, folders, globs), or else `num_images`
  images of the config's evaluation split; writes the grid (and `tokens`).
  Returns the mean scores, and for pictures their paths and tokens."""
  family = families.get(config.family)
  mesh = sharding_lib.create_mesh(config.mesh_shape)
  cfg = family.model_config(config)
  model = family.build(cfg)
  size = config.data.image_size
  params = common.place_params(model, family.load_params(checkpoint, config), mesh,
                               config.logical_axis_rules, jnp.zeros((1, size, size, 3)))
  run = jax.jit(lambda p, x: family.reconstruct(model, p, x))
  dp = sharding_lib.data_parallel_size(mesh)
  if not pictures:
    batch_size = max(dp, -(-num_images // dp) * dp)
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

  paths, images = read_images(image_paths(pictures), family.EVAL_CROP, size)
  batch_size = max(dp, min(-(-len(paths) // dp) * dp, 16 * dp))
  out = {"reconstruction": [], "psnr": [], "codes": []}
  for batch in recon_eval.reconstruction_batches(
      lambda x: run(params, x), batches(images, batch_size), mesh, num_images=len(paths)):
    for key in out:
      out[key].extend(batch.get(key, ()))
  recons = np.stack(out["reconstruction"])
  grid = images_lib.image_grid([images, family.PICTURE_PIXELS(recons)])
  images_lib.save_grid(grid, output)
  codes = np.asarray(out["codes"], np.int32).reshape(len(paths), -1) if out["codes"] else None
  for i, path in enumerate(paths):
    ids = " ".join(map(str, codes[i])) if codes is not None else "(continuous latents)"
    print(f"{path}: {ids}")
  if tokens:
    files.makedirs(os.path.dirname(tokens) or ".")
    with files.write_file(tokens, "wb") as f:
      np.savez(f, codes=codes if codes is not None else np.zeros((len(paths), 0), np.int32),
               paths=np.asarray(paths), psnr=np.asarray(out["psnr"], np.float32))
  result = {"output": output, "tokens": tokens, "num_images": len(paths),
            "psnr": float(np.mean(out["psnr"]))}
  print(json.dumps(result))
  return {**result, "paths": paths, "codes": codes}


def main(argv):
  config, checkpoint = cli.config_and_checkpoint()
  reconstruct(config, checkpoint, FLAGS.output, FLAGS.num_images, argv[1:], FLAGS.tokens)


if __name__ == "__main__":
  define_flags()
  app.run(main)
