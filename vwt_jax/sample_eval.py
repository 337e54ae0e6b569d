r"""Class-conditional samples for FID, resumable, packed for the ADM evaluator.

  # 50 per class (50k for ImageNet), scored against the ADM reference batch
  python -m vwt_jax.sample_eval --checkpoint gs://bucket/gpt_b --per_class 50 \
      --output_dir /tmp/gpt_b_fid --reference VIRTUAL_imagenet256_labeled.npz \
      --inception_weights inception_fid.npz --cfg 2.0 --resize 256 --batch_size 256
  # official LlamaGen weights: the config and tokenizer flags as for vwt_jax.sample
  python -m vwt_jax.sample_eval --config configs/llamagen.py:XL --checkpoint c2i_XL_384.pt \
      --config.tokenizer.checkpoint vq_ds16_c2i.pt \
      --config.tokenizer.config configs/llamagen_vq.py:vq16,image_size=384 \
      --per_class 50 --cfg 1.75 --top_k 0 --resize 256 --output_dir /tmp/xl_fid

Works for every generator `vwt_jax.sample` loads (LlamaGen GPT over VQGAN
grids or TiTok tokens, MaskGIT over TiTok tokens). Labels are `per_class`
copies of each class in order, as TiTok's and LlamaGen's FID runs use. They are
cut into shards of `--shard_size` (a multiple of the global batch); shard i
goes to process i % process_count, draws from `fold_in(key(seed), i)` and is
written atomically to DIR/shards/shard_{i:05d}.npz, so a rerun skips the
finished shards and reproduces the rest exactly. DIR/settings.json records what
the shards were made with (the rule that turned decoder outputs into bytes
too); a rerun with other settings is refused.

When all shards exist, process 0 packs DIR/samples.npz (`arr_0` uint8 NHWC,
`arr_1` labels; pixels as the official sampler quantises them) and, with
--reference (an ADM reference batch: `arr_0` images and optionally
precomputed `mu`/`sigma`/`mu_s`/`sigma_s`), the Inception network runs over
both files on all devices, then process 0 prints the ADM report (IS, FID, sFID,
precision, recall) and writes DIR/metrics.json. The Inception weights come
from --inception_weights or the run's `config.eval.inception_weights`. With
several processes DIR must be on a file system they share.
"""

import glob
import json
import os
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
from tqdm import tqdm

from vwt_jax import cli
from vwt_jax import families
from vwt_jax import sample as sample_lib
from vwt_jax.core import distributed
from vwt_jax.core import files
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.evaluation import adm_npz
from vwt_jax.evaluation import evaluator
from vwt_jax.evaluation import reconstruction as recon_eval

FLAGS = flags.FLAGS

SETTINGS = "settings.json"
SAMPLES = "samples.npz"
METRICS = "metrics.json"


def define_flags():
  cli.define_config_flag("Generator config (a config file or a run folder); default: "
                         "the --checkpoint run's.")
  cli.define_checkpoint_flags("A generator run folder or released weights (a file or hf://).")
  flags.DEFINE_integer("per_class", 50, "Samples of each class (50 -> 50k for ImageNet).")
  flags.DEFINE_string("output_dir", None, "Shards, samples.npz and metrics.json go here.")
  flags.DEFINE_string("reference", "", "ADM reference batch .npz to score against.")
  flags.DEFINE_string("inception_weights", "",
                      "FID Inception .npz; defaults to config.eval.inception_weights.")
  # --seed: shard i draws from fold_in(key(seed), i).
  sample_lib.define_sampling_flags()
  flags.DEFINE_integer("shard_size", 1024,
                       "Samples per shard file; rounded up to a multiple of the batch.")
  flags.DEFINE_integer("max_shards", 0,
                       "Stop after generating this many new shards (0 = all); for tests "
                       "and time-limited jobs, rerun to continue.")
  flags.mark_flags_as_required(["output_dir"])


def class_labels(num_classes: int, per_class: int) -> np.ndarray:
  """`per_class` copies of each class 0..num_classes-1, in class order."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def shard_path(output_dir: str, index: int) -> str:
  return os.path.join(output_dir, "shards", f"shard_{index:05d}.npz")


def num_shards(num_labels: int, shard_size: int) -> int:
  return -(-num_labels // shard_size)


def check_settings(output_dir: str, settings: dict[str, Any]) -> None:
  """Records `settings` in DIR/settings.json, or refuses a mismatch with them."""
  path = os.path.join(output_dir, SETTINGS)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
    if changed:
      raise ValueError(
          f"{path}: the shards there were made with other settings "
          + ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items())
          + "; use another --output_dir or the same settings")
  elif jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    _write_json(path, settings)


def _write_json(path: str, value: Any) -> None:
  with files.write_file(path) as f:
    json.dump(value, f, indent=2)


def generate_shards(gen, params, output_dir: str, labels: np.ndarray, *, shard_size: int,
                    seed: int = 0, batch_size: int = 64, resize: int = 0,
                    max_shards: int = 0, **overrides) -> int:
  """Writes this process's missing shards; returns how many it generated.

  `shard_size` must be a multiple of the global batch (`sample.global_batch_size`).
  """
  batch = sample_lib.global_batch_size(gen, batch_size)
  if shard_size % batch:
    raise ValueError(f"shard_size={shard_size} is not a multiple of the global batch {batch}")
  os.makedirs(os.path.join(output_dir, "shards"), exist_ok=True)
  total = num_shards(len(labels), shard_size)
  mine = range(jax.process_index(), total, jax.process_count())
  todo = [i for i in mine if not os.path.exists(shard_path(output_dir, i))]
  size = lambda i: len(labels[i * shard_size:(i + 1) * shard_size])
  logging.info("%d of this process's %d shards already done; %d to generate",
               len(mine) - len(todo), len(mine), len(todo))
  if max_shards:
    todo = todo[:max_shards]
  key = jax.random.key(seed)
  done = sum(size(i) for i in mine) - sum(size(i) for i in todo)
  with tqdm(total=sum(size(i) for i in mine), initial=done, desc="sample_eval",
            unit="img") as bar:
    for i in todo:
      chunk = labels[i * shard_size:(i + 1) * shard_size]
      images = sample_lib.sample(gen, params, chunk, key=jax.random.fold_in(key, i),
                                 batch_size=batch, resize=resize, bar=bar, **overrides)
      # A shard exists under its final name only once complete, so a rerun
      # skips exactly the finished ones.
      adm_npz.write_samples(shard_path(output_dir, i), images, chunk.astype(np.int64))
  return len(todo)


def pack_shards(output_dir: str, labels: np.ndarray, shard_size: int) -> str:
  """Packs the shards into DIR/samples.npz (kept if newer than every shard)."""
  total = num_shards(len(labels), shard_size)
  paths = [shard_path(output_dir, i) for i in range(total)]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} of {total} shards missing (e.g. {missing[0]}); "
                            "rerun the same command to generate them")
  out = os.path.join(output_dir, SAMPLES)
  if os.path.exists(out) and os.path.getmtime(out) >= max(map(os.path.getmtime, paths)):
    logging.info("%s is newer than every shard; kept", out)
    return out
  images = None
  # The packed array goes through a file on disk: 50k 256px samples are 9.8 GB.
  buffer = os.path.join(output_dir, f".samples.{os.getpid()}.npy")
  try:
    for i, path in enumerate(tqdm(paths, desc="pack", unit="shard")):
      shard_images, shard_labels = adm_npz.read_samples(path)
      expected = labels[i * shard_size:(i + 1) * shard_size]
      if not np.array_equal(shard_labels, expected):
        raise ValueError(f"{path}: holds labels {shard_labels[:4]}... but shard {i} should "
                         f"hold {expected[:4]}...; delete it and rerun")
      if images is None:
        images = np.lib.format.open_memmap(
            buffer, mode="w+", dtype=np.uint8, shape=(len(labels),) + shard_images.shape[1:])
      images[i * shard_size:i * shard_size + len(shard_images)] = shard_images
    adm_npz.write_samples(out, images, labels.astype(np.int64))
  finally:
    del images
    if os.path.exists(buffer):
      os.remove(buffer)
  return out


def score(samples_path: str, reference: str, inception_weights: str, mesh=None,
          batch_size: int = evaluator.ADM_BATCH_SIZE) -> dict[str, float]:
  """ADM metrics of DIR/samples.npz against the `reference` batch.

  With several processes every one of them calls this (on the global mesh).
  """
  runner = evaluator.InceptionRunner(inception_weights, mesh=mesh, batch_size=batch_size)
  metrics = evaluator.evaluate_npz(reference, samples_path, runner)
  return {k: float(v) for k, v in metrics.items() if v is not None}


def run(config, checkpoint: str, output_dir: str, *, per_class: int, reference: str = "",
        inception_weights: str = "", seed: int = 0, batch_size: int = 64, resize: int = 0,
        shard_size: int = 1024, max_shards: int = 0, mesh=None,
        **overrides) -> Optional[dict[str, Any]]:
  """Generates, packs and (with `reference` and weights) scores; see the module doc.

  Returns the summary printed by process 0 (None elsewhere or when stopped by
  `max_shards` before every shard exists).

  Raises:
    sample.SettingsError: a count or sampler setting the generator cannot
      use, before its weights are read.
  """
  sample_lib.check_flag(per_class >= 1, "--per_class", per_class, ">= 1 samples per class")
  sample_lib.check_flag(shard_size >= 1, "--shard_size", shard_size, ">= 1 samples per shard")
  sample_lib.check_flag(max_shards >= 0, "--max_shards", max_shards, ">= 0 (0 = all)")
  weights = inception_weights or config.eval.get("inception_weights", "")
  # Checked before hours of sampling, not after.
  for what, path in (("reference batch", reference), ("Inception weights", weights)):
    if path and not os.path.isfile(path):
      raise FileNotFoundError(f"{what} {path!r}: no such file")
  if mesh is None and jax.process_count() > 1:
    # Each process samples its own shards: a mesh over its own devices.
    mesh = sharding_lib.create_mesh(config.mesh_shape, jax.local_devices())

  def check(gen):
    if not gen.conditional_on_class:
      raise sample_lib.SettingsError(f"{checkpoint}: sample_eval draws per-class samples; "
                                     "this generator is not class-conditional")
    sample_lib.check_sampling(gen, overrides, batch_size=batch_size, resize=resize,
                              seed=seed)

  gen, params = sample_lib.load(config, checkpoint, mesh, check=check)
  labels = class_labels(gen.num_classes, per_class)
  kind = gen.tokenizer().kind
  batch = sample_lib.global_batch_size(gen, batch_size)
  shard_size = -(-shard_size // batch) * batch
  # The grid-only fields (classes, per_class, seed of samples.png) do not matter here.
  sampling = {k: v for k, v in {**config.sampling.to_dict(), **overrides}.items()
              if k not in ("classes", "per_class", "seed")}
  check_settings(output_dir, json.loads(json.dumps({
      "checkpoint": files.absolute(checkpoint),
      "num_classes": int(gen.num_classes), "per_class": per_class, "seed": seed,
      "batch_size": batch, "shard_size": shard_size, "resize": resize,
      # How decoder outputs become bytes: the tokenizer family's official rule.
      "pixels": f"{kind}: images.{families.get(kind).PICTURE_PIXELS.__name__}",
      "sampling": sampling})))
  generate_shards(gen, params, output_dir, labels, shard_size=shard_size, seed=seed,
                  batch_size=batch, resize=resize, max_shards=max_shards, **overrides)
  _barrier("shards written")
  total = num_shards(len(labels), shard_size)
  present = len(glob.glob(os.path.join(output_dir, "shards", "shard_*.npz")))
  if max_shards and present < total:
    if jax.process_index() == 0:
      print(f"sample_eval: stopped with {present} of {total} shards (--max_shards); "
            "rerun the same command to continue")
    return None
  samples = os.path.join(output_dir, SAMPLES)
  if jax.process_index() == 0:
    pack_shards(output_dir, labels, shard_size)
  _barrier("samples packed")
  summary = {"samples": samples, "num_samples": int(len(labels)), "per_class": per_class}
  if reference and weights:
    # Every process reads both files and feeds its devices (the runner's
    # multi-host mode); only process 0 reports.
    summary["metrics"] = score(samples, reference, weights)
  if jax.process_index() != 0:
    return None
  if not reference:
    print("sample_eval: no --reference batch given: wrote the samples only")
  elif not weights:
    print(f"sample_eval: no FID Inception weights, so no metrics: {recon_eval.INCEPTION_HINT}")
  else:
    print(evaluator.format_report(summary["metrics"]))
    _write_json(os.path.join(output_dir, METRICS), {**summary, "reference": reference})
  print(json.dumps(summary))
  return summary


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"sample_eval: {name}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  config, checkpoint = cli.config_and_checkpoint()
  overrides = sample_lib.sampling_overrides()
  try:
    run(config, checkpoint, FLAGS.output_dir, per_class=FLAGS.per_class,
        reference=FLAGS.reference, inception_weights=FLAGS.inception_weights,
        seed=FLAGS.seed, batch_size=FLAGS.batch_size, resize=FLAGS.resize,
        shard_size=FLAGS.shard_size, max_shards=FLAGS.max_shards, **overrides)
  except sample_lib.SettingsError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  app.run(main)
