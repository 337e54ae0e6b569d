r"""The same LlamaGen GPT trained on TiTok's 1D codes and on a VQGAN's 2D grid.

For each code dataset (extracted from the same images by different
tokenizers) this trains one generator config for the same number of steps
and prints one JSON line: tokens per image, held-out loss per token and per
image (nats), next-token accuracy, train steps/s, and KV-cache sampling
throughput (images/s, with guidance, tokenizer decoding excluded). The loss
per image is the comparable quality number across tokenizations (a code
sequence's negative log-likelihood); for FID see vwt_jax.sample_eval.

  python benchmarks/titok_vs_grid_ar.py --codes demo_workdir/codes,/tmp/vq_codes \
      --steps 600 --workdir /tmp/ar_compare
"""

import argparse
import importlib.util
import json
import os
import time

import jax
import numpy as np

from vwt_jax.families import generator as generator_lib
from vwt_jax.training import generator

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "llamagen.py")


def _config(codes_dir: str, steps: int, batch: int):
  spec = importlib.util.spec_from_file_location("llamagen_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.data.dir = codes_dir
  config.update(dict(total_steps=steps, global_batch_size=batch, eval_every=steps,
                     checkpoint_every=steps, log_every=max(steps // 4, 1)))
  return config


def sampling_rate(gen, params, batch: int, repeats: int = 3) -> float:
  labels = np.arange(batch, dtype=np.int32) % gen.num_classes
  gen.sample_codes(params, labels, jax.random.key(0))  # Compiles.
  start = time.perf_counter()
  for i in range(repeats):
    gen.sample_codes(params, labels, jax.random.key(i + 1))
  return batch * repeats / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--codes", required=True, help="comma-separated code dataset dirs")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--sample_batch", type=int, default=64)
  parser.add_argument("--workdir", default="/tmp/titok_vs_grid_ar")
  args = parser.parse_args()
  for codes_dir in args.codes.split(","):
    config = _config(codes_dir, args.steps, args.batch)
    workdir = os.path.join(args.workdir, os.path.basename(os.path.normpath(codes_dir)))
    start = time.perf_counter()
    result = generator.train(config, workdir)
    seconds = time.perf_counter() - start
    gen = generator_lib.Generator(config)
    params = gen.load_params(workdir)
    meta = gen.metadata
    print(json.dumps({
        "codes": codes_dir, "tokenizer": meta.tokenizer, "code_shape": list(meta.code_shape),
        "vocab_size": meta.vocab_size, "tokens_per_image": meta.seq_len,
        "rope": "2d" if gen.cfg.rope_2d else "1d", "steps": args.steps,
        "batch": args.batch, "train_seconds": round(seconds, 1),
        "train_steps_per_s": round(result["train"]["perf/steps_per_sec"], 2),
        "eval_nats_per_token": round(result["eval"]["eval_loss"], 4),
        "eval_nats_per_image": round(result["eval"]["eval_loss"] * meta.seq_len, 2),
        "eval_accuracy": round(result["eval"]["eval_accuracy"], 4),
        "sampling_images_per_s": round(sampling_rate(gen, params, args.sample_batch), 2),
        "sample_batch": args.sample_batch, "cfg_scale": config.sampling.cfg_scale,
        "device": jax.devices()[0].device_kind,
    }), flush=True)


if __name__ == "__main__":
  main()
