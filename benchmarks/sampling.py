r"""LlamaGen sampling throughput: our jitted KV-cache sampler vs full recompute.

Prints one JSON line per (config, batch, cfg): images/s and tokens/s of
`sampling.autoregressive.generate` and of a baseline that re-runs the whole
(padded, causal) forward for every new token in one jitted `fori_loop`, with
their ratio. Compile time (first call minus a steady run) is reported apart
from run time. Random weights; bfloat16 on accelerators, float32 on CPU.

  python benchmarks/sampling.py --quick
  python benchmarks/sampling.py --configs tiny,B --batches 1,8,64 --grid 16 --cfg both
  python benchmarks/sampling.py --configs B --batches 1 --cfg off --tokens 32 --no-baseline
"""

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import gpt
from vwt_jax.sampling import autoregressive as ar

TINY = dict(n_layer=2, n_head=4, dim=128, vocab_size=1024)


def make_config(name: str, grid: int, dtype) -> gpt.GPTConfig:
  kw = dict(block_size=grid * grid, dtype=dtype, param_dtype=jnp.float32)
  if name == "tiny":
    return gpt.GPTConfig(**TINY, **kw)
  return gpt.GPTConfig.from_variant(name, **kw)


def recompute_sampler(model: gpt.GPT, num_tokens: int, cfg: bool):
  """Samples like `generate` but with a full forward over the sequence per token."""
  prefix = model.config.cls_token_num

  @jax.jit
  def run(params, cond, rng, cfg_scale):
    batch = cond.shape[0]
    force_drop = jnp.arange(2 * batch) >= batch if cfg else None
    cond_rows = jnp.concatenate([cond, cond]) if cfg else cond

    def body(t, tokens):
      idx = tokens[:, :num_tokens - 1]
      idx = jnp.concatenate([idx, idx]) if cfg else idx
      logits, _ = model.apply({"params": params}, cond_rows, idx, force_drop=force_drop)
      logits = jax.lax.dynamic_index_in_dim(logits, prefix - 1 + t, axis=1, keepdims=False)
      if cfg:
        logits = logits[batch:] + (logits[:batch] - logits[batch:]) * cfg_scale
      token = jax.random.categorical(jax.random.fold_in(rng, t), logits).astype(jnp.int32)
      return tokens.at[:, t].set(token)

    return jax.lax.fori_loop(0, num_tokens, body, jnp.zeros((batch, num_tokens), jnp.int32))
  return run


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first call seconds, best steady-state seconds)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - start)
  return first, min(runs)


def measure(name, config, batch, cfg, num_tokens, repeats, baseline, cfg_scale):
  model = gpt.GPT(config)
  params = nn.meta.unbox(jax.jit(model.init)(
      jax.random.key(0), gpt.dummy_condition(config), jnp.zeros((1, 1), jnp.int32))["params"])
  labels = jnp.asarray(np.arange(batch) % config.num_classes, jnp.int32)
  scale = cfg_scale if cfg else 1.0
  rng = jax.random.key(1)
  methods = {"kv_cache": lambda: ar.generate(model, params, labels, num_tokens=num_tokens,
                                             rng=rng, cfg_scale=scale)}
  if baseline:
    recompute = recompute_sampler(model, num_tokens, cfg)
    methods["recompute"] = lambda: recompute(params, labels, rng, jnp.float32(scale))
  row = dict(config=name, batch=batch, cfg=cfg, num_tokens=num_tokens,
             full_image=num_tokens == config.block_size, dtype=jnp.dtype(config.dtype).name,
             device=jax.devices()[0].device_kind)
  for method, fn in methods.items():
    first, run = timed(fn, repeats)
    row[method] = dict(compile_s=round(max(first - run, 0.0), 3), run_s=round(run, 4),
                       images_per_s=round(batch / run, 3),
                       tokens_per_s=round(batch * num_tokens / run, 1))
  if baseline:
    row["speedup"] = round(row["recompute"]["run_s"] / row["kv_cache"]["run_s"], 2)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny,B", help="tiny and/or GPT variants (B,L,XL,...)")
  parser.add_argument("--batches", default="1,8,64")
  parser.add_argument("--grid", type=int, default=16, help="16 = 256px (VQ-16), 24 = 384px")
  parser.add_argument("--tokens", type=int, default=0,
                      help="generate only this many tokens (default: grid^2)")
  parser.add_argument("--cfg", choices=("on", "off", "both"), default="both")
  parser.add_argument("--cfg-scale", type=float, default=4.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-baseline", action="store_true", help="skip the recompute baseline")
  parser.add_argument("--quick", action="store_true",
                      help="tiny config, batches 1 and 8, grid 8, one repeat")
  args = parser.parse_args()
  if args.quick:
    args.configs, args.batches, args.grid, args.repeats = "tiny", "1,8", 8, 1
  dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  cfgs = {"on": (True,), "off": (False,), "both": (False, True)}[args.cfg]
  for name in args.configs.split(","):
    config = make_config(name, args.grid, dtype)
    num_tokens = args.tokens or config.block_size
    for batch in (int(b) for b in args.batches.split(",")):
      for cfg in cfgs:
        print(json.dumps(measure(name, config, batch, cfg, num_tokens, args.repeats,
                                 not args.no_baseline, args.cfg_scale)), flush=True)


if __name__ == "__main__":
  main()
