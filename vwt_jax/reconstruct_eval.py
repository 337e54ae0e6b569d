r"""Reconstruction metrics of a tokenizer on a dataset split: rFID, PSNR, SSIM, LPIPS, usage.

  # one of our runs (TiTok or VQGAN; its config.json is read)
  python -m vwt_jax.reconstruct_eval --checkpoint demo_workdir/tokenizer \
      --num_images 1000 --output_dir /tmp/titok_rfid --inception_weights inception_fid.npz
  # official weights on ImageNet val 50k, as LlamaGen's rFID
  python -m vwt_jax.reconstruct_eval --config configs/llamagen_vq.py:vq16 \
      --checkpoint vq_ds16_c2i.pt --config.data.name imagenet2012 \
      --config.data.data_dir ~/tensorflow_datasets --config.data.image_size 256 \
      --num_images 50000 --output_dir /tmp/vq16_rfid --inception_weights inception_fid.npz \
      --lpips_weights lpips_vgg.npz

Every image of `--split` (up to --num_images, in record order, center crops
from the data pipeline) goes through the tokenizer's encode and decode. Written
to --output_dir:

* originals.npz, reconstructions.npz: ADM batches (`arr_0` uint8 NHWC). Both
  are quantised with one rule, LlamaGen's round-half-up
  clip(127.5 x + 128, 0, 255) (`images.quantize`), which returns the
  pipeline's decoded pixels exactly. originals.npz also serves as a reference
  batch for `vwt_jax.sample_eval --reference` / `vwt_jax.evaluate`.
* metrics.json: psnr, ssim (per-image means on [0, 1]), codebook_usage and
  codebook_perplexity (over all codes), and with weights lpips and the ADM
  metrics of reconstructions against originals (rfid, sfid, precision, recall,
  inception_score when the Inception weights hold the fc layer).
"""

import json
import os
from typing import Any, Optional

from absl import app
from absl import flags
import jax
import numpy as np

from vwt_jax import cli
from vwt_jax.core import distributed
from vwt_jax.core import files
from vwt_jax.core import images as images_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import pipeline
from vwt_jax.evaluation import adm_npz
from vwt_jax.evaluation import reconstruction as recon_eval
from vwt_jax.families import tokenizer as tokenizer_lib

FLAGS = flags.FLAGS

QUANTIZATION = "round half up: clip(127.5 x + 128, 0, 255) -> uint8 (LlamaGen)"


def define_flags():
  cli.define_config_flag("Tokenizer config (a config file or a run folder); default: "
                         "the --checkpoint run's.")
  cli.define_checkpoint_flags("A tokenizer run folder or released weights (a file or hf://).")
  flags.DEFINE_string("split", "validation", "Dataset split (tfds name; slices work).")
  flags.DEFINE_integer("num_images", 50_000, "Images to reconstruct (at most the split).")
  flags.DEFINE_string("output_dir", None, "originals.npz, reconstructions.npz, metrics.json.")
  flags.DEFINE_string("data_dir", "", "Overrides config.data.data_dir (e.g. for a run's "
                      "relative path).")
  flags.DEFINE_integer("batch_size", 64, "Images per compiled call (all devices).")
  flags.DEFINE_string("inception_weights", "",
                      "FID Inception .npz; defaults to config.eval.inception_weights.")
  flags.DEFINE_string("lpips_weights", "", "LPIPS .npz; defaults to config.eval.lpips_weights.")
  flags.DEFINE_string("lpips_net", "", "LPIPS backbone; defaults to config.eval.lpips_net.")
  flags.mark_flags_as_required(["output_dir"])


def _tokenizer_reconstruct(tok: tokenizer_lib.Tokenizer):
  def reconstruct(images):
    codes = tok.encode(images)
    return tok.decode(codes), codes
  return reconstruct


def run(config, checkpoint: str, output_dir: str, *, split: str = "validation",
        num_images: int = 50_000, batch_size: int = 64, inception_weights: str = "",
        lpips_weights: str = "", lpips_net: str = "vgg", mesh=None) -> dict[str, Any]:
  """Reconstructs, writes the two batches and metrics.json; returns the metrics."""
  mesh = mesh or sharding_lib.create_mesh((-1, 1, 1))
  tok = tokenizer_lib.load_tokenizer(checkpoint, config, mesh)
  dp = sharding_lib.data_parallel_size(mesh)
  batch_size = -(-batch_size // dp) * dp
  dataset = pipeline.create_image_dataset(config.data, split=split, global_batch_size=batch_size,
                                          seed=config.seed, train=False)
  networks = recon_eval.load_networks(mesh, inception_weights=inception_weights,
                                      lpips_weights=lpips_weights, lpips_net=lpips_net,
                                      batch_size=batch_size)
  stats = recon_eval.ReconstructionStats(tok.vocab_size)
  os.makedirs(output_dir, exist_ok=True)
  # Held on disk, not in memory: ImageNet val at 256 px is 9.8 GB per set.
  names = ("originals", "reconstructions")
  buffers = {n: os.path.join(output_dir, f".{n}.p{jax.process_index()}.npy") for n in names}
  arrays: dict[str, Optional[np.ndarray]] = {n: None for n in names}
  seen = 0
  try:
    for batch in recon_eval.reconstruction_batches(
        _tokenizer_reconstruct(tok), dataset, mesh, num_images=num_images,
        lpips=networks.lpips):
      stats.add(batch)
      for name, key in zip(names, ("image", "reconstruction")):
        if arrays[name] is None:
          arrays[name] = np.lib.format.open_memmap(
              buffers[name], mode="w+", dtype=np.uint8,
              shape=(num_images,) + batch[key].shape[1:])
        arrays[name][seen:seen + len(batch[key])] = images_lib.quantize(batch[key])
      seen += len(batch["psnr"])
    arrays = {n: a[:seen] for n, a in arrays.items()}
    metrics = stats.result()
    if networks.inception is not None:
      batches = lambda a: (a[i:i + batch_size] for i in range(0, seen, batch_size))
      metrics.update(recon_eval.inception_metrics(
          networks.inception, batches(arrays["originals"]),
          batches(arrays["reconstructions"]), total=seen))
    paths = {n: os.path.join(output_dir, f"{n}.npz") for n in names}
    if jax.process_index() == 0:
      for name in names:
        adm_npz.write_samples(paths[name], arrays[name])
  finally:
    arrays.clear()
    for path in buffers.values():
      if os.path.exists(path):
        os.remove(path)
  notes = networks.missing()
  result = {"checkpoint": checkpoint, "split": split, "quantization": QUANTIZATION,
            **paths, **metrics, "notes": notes}
  if jax.process_index() == 0:
    with files.write_file(os.path.join(output_dir, "metrics.json")) as f:
      json.dump(result, f, indent=2)
    print(format_report(metrics, notes))
  return result


def format_report(metrics: dict[str, float], notes: list[str]) -> str:
  """Human-readable lines: one metric per line, then what was skipped and why."""
  labels = (("num_images", "images", "{:.0f}"), ("psnr", "PSNR (dB)", "{:.3f}"),
            ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"),
            ("codebook_usage", "codebook usage", "{:.2%}"),
            ("codebook_perplexity", "code perplexity", "{:.1f}"), ("rfid", "rFID", "{:.4f}"),
            ("sfid", "sFID", "{:.4f}"), ("inception_score", "Inception Score", "{:.4f}"),
            ("precision", "Precision", "{:.4f}"), ("recall", "Recall", "{:.4f}"))
  lines = [f"{label}: {fmt.format(metrics[key])}" for key, label, fmt in labels
           if key in metrics]
  return "\n".join(lines + notes)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  config, checkpoint = cli.config_and_checkpoint()
  if FLAGS.data_dir:
    config.data.data_dir = FLAGS.data_dir
  ev = config.get("eval", {})
  run(config, checkpoint, FLAGS.output_dir, split=FLAGS.split,
      num_images=FLAGS.num_images, batch_size=FLAGS.batch_size,
      inception_weights=FLAGS.inception_weights or ev.get("inception_weights", ""),
      lpips_weights=FLAGS.lpips_weights or ev.get("lpips_weights", ""),
      lpips_net=FLAGS.lpips_net or ev.get("lpips_net", "vgg"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
