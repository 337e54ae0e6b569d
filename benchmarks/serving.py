r"""Serving throughput and latency: a stream of requests with mixed settings through a Sampler.

Prints one JSON line: images/s over the stream (compile excluded), request
latency percentiles (submit to result, seconds), the compile time apart (the
first padded batch minus a steady one), batch size and device. Requests cycle
through classes, seeds, cfg_scale, cfg_interval, temperature and top_p, so
every batch mixes settings in the one compiled program. Random weights (the
configs of benchmarks/sampling.py) unless --pretrained names released ones,
whose images are then decoded too.

  python benchmarks/serving.py --config tiny --grid 8 --requests 64 --batch_size 8
  python benchmarks/serving.py --config tiny --grid 8 --requests 64 --batch_size 8 --use_top_p
  python benchmarks/serving.py --config B --grid 16 --requests 512 --batch_size 64
  python benchmarks/serving.py --pretrained llamagen-c2i-b-256 --requests 256 --batch_size 32
"""

import argparse
import itertools
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import gpt
from vwt_jax.serving import Request, Sampler

import sampling  # benchmarks/sampling.py: run as a script, this folder is on sys.path


def random_sampler(name: str, grid: int, batch_size: int, top_k: int,
                   use_top_p: bool) -> Sampler:
  dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  config = sampling.make_config(name, grid, dtype)
  params = nn.meta.unbox(jax.jit(gpt.GPT(config).init)(
      jax.random.key(0), gpt.dummy_condition(config), jnp.zeros((1, 1), jnp.int32))["params"])
  return Sampler(config, params, batch_size=batch_size, top_k=top_k, use_top_p=use_top_p)


def mixed_requests(num: int, num_classes: int, top_p: bool) -> list[Request]:
  settings = itertools.cycle(itertools.product(
      (1.0, 1.5, 4.0), (-1, 8), (1.0, 0.8, 1.2), (1.0, 0.9) if top_p else (1.0,)))
  return [Request(i % num_classes, seed=i, cfg_scale=s, cfg_interval=k, temperature=t, top_p=p)
          for i, (s, k, t, p) in zip(range(num), settings)]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="tiny", help="tiny or a GPT variant (B, L, XL, ...)")
  parser.add_argument("--grid", type=int, default=16, help="16 = 256px (VQ-16), 24 = 384px")
  parser.add_argument("--pretrained", default="", help="released c2i weights instead "
                      "(docs/pretrained.md); decodes the images too")
  parser.add_argument("--requests", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--top_k", type=int, default=0, help="compiled in (random weights)")
  parser.add_argument("--use_top_p", action="store_true", help="compile the nucleus filter "
                      "in (a sort of the vocabulary per row and token) and mix top_p 0.9 in")
  args = parser.parse_args()
  if args.pretrained:
    sampler = Sampler.from_pretrained(args.pretrained, batch_size=args.batch_size,
                                      use_top_p=args.use_top_p)
    name = args.pretrained
  else:
    sampler = random_sampler(args.config, args.grid, args.batch_size, args.top_k,
                             args.use_top_p)
    name = args.config
  if sampler.config.model_type != "c2i":
    raise SystemExit(f"{name} is a t2i GPT: this benchmark streams class requests")
  requests = mixed_requests(args.requests, sampler.config.num_classes, args.use_top_p)
  warmup = sampler.warmup()
  start = time.perf_counter()
  latencies = [r.latency_s for r in sampler.run(requests)]
  wall = time.perf_counter() - start
  batches = -(-len(requests) // args.batch_size)
  print(json.dumps(dict(
      model=name, num_tokens=sampler.num_tokens, batch_size=args.batch_size,
      requests=len(requests), batches=batches, top_k=sampler.top_k, use_top_p=sampler.use_top_p,
      decoded=args.pretrained != "", images_per_s=round(len(requests) / wall, 3),
      latency_p50_s=round(float(np.percentile(latencies, 50)), 4),
      latency_p90_s=round(float(np.percentile(latencies, 90)), 4),
      latency_max_s=round(max(latencies), 4),
      compile_s=round(max(warmup - wall / batches, 0.0), 3),
      dtype=jnp.dtype(sampler.config.dtype).name, device=jax.devices()[0].device_kind,
      num_devices=jax.device_count())))


if __name__ == "__main__":
  main()
