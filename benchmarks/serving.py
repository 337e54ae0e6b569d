r"""Serving throughput and latency: a stream of requests with mixed settings through a Sampler.

Prints one JSON line: images/s over the stream (compile excluded), request
latency percentiles (submit to result, seconds), the compile time apart (the
first padded batch minus a steady one), batch size and device. Requests cycle
through classes, seeds, cfg_scale, cfg_interval, temperature and top_p, so
every batch mixes settings in the one compiled program. Random weights (the
configs of benchmarks/sampling.py) unless --pretrained names released ones,
whose images are then decoded too.

With --clients N the stream comes from N front-end threads instead, each
submitting one request and waiting for its result before the next (a web
server's workers); the Sampler's --max_wait_s lets a partial batch wait that
long for the other clients' requests.

  python benchmarks/serving.py --config tiny --grid 8 --requests 64 --batch_size 8
  python benchmarks/serving.py --config tiny --grid 8 --requests 64 --batch_size 8 --use_top_p
  python benchmarks/serving.py --config B --grid 16 --requests 512 --batch_size 64
  python benchmarks/serving.py --pretrained llamagen-c2i-b-256 --requests 256 --batch_size 32
  python benchmarks/serving.py --config tiny --grid 8 --requests 64 --batch_size 8 \
      --clients 8 --max_wait_s 0.05
"""

import argparse
import itertools
import json
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import gpt
from vwt_jax.serving import Request, Sampler

import sampling  # benchmarks/sampling.py: run as a script, this folder is on sys.path


def random_sampler(name: str, grid: int, batch_size: int, top_k: int,
                   use_top_p: bool, max_wait_s) -> Sampler:
  dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  config = sampling.make_config(name, grid, dtype)
  params = nn.meta.unbox(jax.jit(gpt.GPT(config).init)(
      jax.random.key(0), gpt.dummy_condition(config), jnp.zeros((1, 1), jnp.int32))["params"])
  return Sampler(config, params, batch_size=batch_size, top_k=top_k, use_top_p=use_top_p,
                 max_wait_s=max_wait_s)


def mixed_requests(num: int, num_classes: int, top_p: bool) -> list[Request]:
  settings = itertools.cycle(itertools.product(
      (1.0, 1.5, 4.0), (-1, 8), (1.0, 0.8, 1.2), (1.0, 0.9) if top_p else (1.0,)))
  return [Request(i % num_classes, seed=i, cfg_scale=s, cfg_interval=k, temperature=t, top_p=p)
          for i, (s, k, t, p) in zip(range(num), settings)]


def from_clients(sampler: Sampler, requests: list[Request], clients: int) -> list[float]:
  """Latencies of `requests` submitted by `clients` threads, each waiting for its result
  before submitting its next."""
  latencies = []

  def client(mine):
    for request in mine:
      latencies.append(sampler.submit(request).result().latency_s)

  threads = [threading.Thread(target=client, args=(requests[i::clients],))
             for i in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return latencies


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
  parser.add_argument("--clients", type=int, default=0, help="front-end threads submitting "
                      "one request at a time (0: one caller submits the whole stream)")
  parser.add_argument("--max_wait_s", type=float, default=None, help="the Sampler's wait "
                      "for a partial batch to fill (needed with --clients)")
  args = parser.parse_args()
  if args.clients and args.max_wait_s is None:
    parser.error("--clients needs --max_wait_s: without it each client runs its own batch")
  if args.pretrained:
    sampler = Sampler.from_pretrained(args.pretrained, batch_size=args.batch_size,
                                      use_top_p=args.use_top_p, max_wait_s=args.max_wait_s)
    name = args.pretrained
  else:
    sampler = random_sampler(args.config, args.grid, args.batch_size, args.top_k,
                             args.use_top_p, args.max_wait_s)
    name = args.config
  if sampler.config.model_type != "c2i":
    raise SystemExit(f"{name} is a t2i GPT: this benchmark streams class requests")
  requests = mixed_requests(args.requests, sampler.config.num_classes, args.use_top_p)
  warmup = sampler.warmup()
  before = sampler.batches_run
  start = time.perf_counter()
  if args.clients:
    latencies = from_clients(sampler, requests, args.clients)
  else:
    latencies = [r.latency_s for r in sampler.run(requests)]
  wall = time.perf_counter() - start
  batches = sampler.batches_run - before
  print(json.dumps(dict(
      model=name, num_tokens=sampler.num_tokens, batch_size=args.batch_size,
      requests=len(requests), batches=batches, clients=args.clients,
      max_wait_s=args.max_wait_s, top_k=sampler.top_k, use_top_p=sampler.use_top_p,
      decoded=args.pretrained != "", images_per_s=round(len(requests) / wall, 3),
      latency_p50_s=round(float(np.percentile(latencies, 50)), 4),
      latency_p90_s=round(float(np.percentile(latencies, 90)), 4),
      latency_max_s=round(max(latencies), 4),
      mean_batch_fill=round(len(requests) / batches / args.batch_size, 3),
      compile_s=round(max(warmup - wall / batches, 0.0), 3),
      dtype=jnp.dtype(sampler.config.dtype).name, device=jax.devices()[0].device_kind,
      num_devices=jax.device_count())))


if __name__ == "__main__":
  main()
