r"""Speed against the official PyTorch code: same weights, same machine, one run.

The official repositories are yours to clone (nothing of theirs is in this
one); install their requirements next to vwt_jax (torch, and for TiTok
omegaconf, einops, torchvision), then:

  git clone https://github.com/FoundationVision/LlamaGen /src/LlamaGen
  git clone https://github.com/bytedance/1d-tokenizer /src/1d-tokenizer
  python benchmarks/vs_official.py --llamagen /src/LlamaGen --titok /src/1d-tokenizer \
      --cases gpt-B:2,gpt-B:8,titok-L-32:4,vq-16:8

A case is MODEL:BATCH:
  gpt-B, gpt-L, gpt-XL, gpt-XXL, gpt-3B  LlamaGen c2i GPT sampling 256 image tokens
      (gpt-B@24: a 24 x 24 grid, the 384-px models' 576), CFG 4, top-k 2000,
      temperature 1 (--cfg, --top_k): the official `generate` against
      `sampling.autoregressive.generate`, decoding excluded;
  titok-L-32, titok-B-64, titok-S-128  TiTok encode + decode of 256-px images
      (the released two-stage models, pixel decoder included);
  vq-16  LlamaGen's VQ-16 decoding 16 x 16 codes into 256-px images.

Each case builds the official model with the official initialisation and
then redraws every weight from a seeded generator at unit scale (the official
heads start at zero, which would make every logit equal); this library loads
the same state dict through its converter. Before timing, the two must agree:
the GPT's first 32 greedy tokens with CFG, equal; the tokenizers' token ids,
equal, and their images within 1e-3. Then each side runs `--repeats` times
after one warm-up call: the official code eagerly under `torch.no_grad` with
`--threads` torch threads, ours compiled by XLA (its compile time, the first
call minus a steady one, is reported apart). One JSON line per case: the best
times, images/s of both and `ratio` = official time / ours (above 1: this
library is faster). float32 on CPU; on an accelerator both sides run bfloat16
for the GPT (`--dtype`).
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import llamagen as llamagen_conversion
from vwt_jax.conversion import titok as titok_conversion
from vwt_jax.conversion import vqgan as vqgan_conversion
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.models import titok as titok_lib
from vwt_jax.models import vqgan as vqgan_lib
from vwt_jax.sampling import autoregressive as ar

GPT_SIZES = ("B", "L", "XL", "XXL", "3B")
# The released two-stage TiTok tokenizers' official config fields.
TITOK = {"L-32": ("large", 32), "B-64": ("base", 64), "S-128": ("small", 128)}
CHECK_TOKENS = 32
# The flag naming each official checkout, by the prefix of the cases it serves.
CHECKOUTS = {"llamagen": ("gpt-", "vq-"), "titok": ("titok-",)}


def use_checkout(checkout: str) -> None:
  """Imports from `checkout` first. Both official repositories have a top-level
  `utils`: modules of a top-level name the checkout holds, loaded from
  elsewhere, are forgotten."""
  checkout = os.path.abspath(checkout)
  sys.path[:] = [checkout] + [p for p in sys.path if p != checkout]
  for name, module in list(sys.modules.items()):
    source = getattr(module, "__file__", None) or ""
    if (os.path.exists(os.path.join(checkout, name.split(".")[0])) and source
        and not source.startswith(checkout)):
      del sys.modules[name]


def best_time(fn, repeats: int) -> tuple[float, float]:
  """(first call seconds, best of `repeats` further calls)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, min(times)


def redraw(module, seed: int) -> None:
  """Every parameter of a torch module from N(0, 1/fan_in) (matrices, kernels,
  embeddings) or around 1 / 0 (norm scales / biases), seeded."""
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(module.named_parameters()):
      if p.ndim >= 2:
        fan_in = int(np.prod(p.shape[1:])) if "embed" not in name else 1
        p.copy_(torch.randn(p.shape, generator=generator) * fan_in ** -0.5)
      elif name.endswith("bias"):
        p.copy_(0.02 * torch.randn(p.shape, generator=generator))
      else:
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))


def state_dict_numpy(module) -> dict:
  return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def gpt_case(args, size: str, grid: int, batch: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from autoregressive.models.generate import generate  # pylint: disable=g-import-not-at-top
  from autoregressive.models.gpt import GPT_models  # pylint: disable=g-import-not-at-top
  official = GPT_models[f"GPT-{size}"](block_size=grid * grid, cls_token_num=1,
                                       model_type="c2i", vocab_size=16384, num_classes=1000)
  redraw(official, args.seed)
  official.eval()
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  official.to(dtype)
  config = gpt_lib.GPTConfig.from_official(dataclasses.asdict(official.config),
                                           dtype=jnp.dtype(args.dtype))
  params = jax.device_put(llamagen_conversion.convert_gpt(state_dict_numpy(official), config))
  model = gpt_lib.GPT(config)
  labels = np.arange(batch) * 97 % 1000

  def ours(num_tokens, **settings):
    return np.asarray(jax.block_until_ready(ar.generate(
        model, params, jnp.asarray(labels, jnp.int32), num_tokens=num_tokens,
        rng=jax.random.key(args.seed), cfg_scale=args.cfg, **settings)))

  def theirs(num_tokens, **settings):
    with torch.no_grad():
      return generate(official, torch.as_tensor(labels), num_tokens, cfg_scale=args.cfg,
                      cfg_interval=-1, **settings).numpy()

  greedy_ours = ours(CHECK_TOKENS, greedy=True)
  greedy_theirs = theirs(CHECK_TOKENS, sample_logits=False)
  if not np.array_equal(greedy_ours, greedy_theirs):
    raise SystemExit(f"gpt-{size}: greedy tokens differ from the official ones "
                     f"({np.mean(greedy_ours != greedy_theirs):.1%} of them)")
  sampling = dict(temperature=1.0, top_k=args.top_k)
  tokens = grid * grid
  ours_first, ours_best = best_time(lambda: ours(tokens, **sampling), args.repeats)
  theirs_first, theirs_best = best_time(
      lambda: theirs(tokens, top_p=1.0, sample_logits=True, **sampling), args.repeats)
  return dict(case=f"gpt-{size}", tokens=tokens, batch=batch, cfg=args.cfg, top_k=args.top_k,
              greedy_tokens_equal=CHECK_TOKENS, official_s=theirs_best, ours_s=ours_best,
              ours_compile_s=max(ours_first - ours_best, 0.0),
              official_first_s=theirs_first)


def titok_case(args, variant: str, batch: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from omegaconf import OmegaConf  # pylint: disable=g-import-not-at-top
  from modeling.titok import TiTok  # pylint: disable=g-import-not-at-top
  size, tokens = TITOK[variant]
  official_config = {
      "model": {"vq_model": {
          "codebook_size": 4096, "token_size": 12, "use_l2_norm": True,
          "commitment_cost": 0.25, "vit_enc_model_size": size, "vit_dec_model_size": size,
          "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": tokens,
          "finetune_decoder": True}},
      "dataset": {"preprocessing": {"crop_size": 256}}}
  official = TiTok(OmegaConf.create(official_config))
  redraw(official, args.seed)
  official.eval()
  config = titok_lib.TiTokConfig.from_official(official_config)
  params = jax.device_put(titok_conversion.convert_titok(state_dict_numpy(official), config))
  model = titok_lib.TiTok(config)
  images = np.random.default_rng(args.seed).random((batch, 256, 256, 3), np.float32)

  @jax.jit
  def run(params, x):
    _, aux = model.apply({"params": params}, x, method=titok_lib.TiTok.encode)
    codes = aux["indices"].astype(jnp.int32)
    decoded, _ = model.apply({"params": params}, codes, method=titok_lib.TiTok.decode_tokens)
    return codes, decoded

  def ours():
    codes, decoded = jax.block_until_ready(run(params, jnp.asarray(images) * 2.0 - 1.0))
    return np.asarray(codes), (np.asarray(decoded) + 1.0) / 2.0

  def theirs():
    with torch.no_grad():
      x = torch.as_tensor(images).permute(0, 3, 1, 2)
      codes = official.encode(x)[1]["min_encoding_indices"].reshape(batch, -1)
      decoded = official.decode_tokens(codes)
      return codes.numpy(), decoded.permute(0, 2, 3, 1).numpy()

  start = time.perf_counter()
  codes_ours, images_ours = ours()
  ours_first = time.perf_counter() - start
  codes_theirs, images_theirs = theirs()
  if not np.array_equal(codes_ours, codes_theirs):
    raise SystemExit(f"titok-{variant}: token ids differ from the official ones "
                     f"({np.mean(codes_ours != codes_theirs):.1%} of them)")
  error = float(np.max(np.abs(images_ours - images_theirs)))
  if error > 1e-3:
    raise SystemExit(f"titok-{variant}: images differ from the official ones by {error:.2e}")
  ours_best = best_time(ours, args.repeats)[1]
  theirs_first, theirs_best = best_time(theirs, args.repeats)
  return dict(case=f"titok-{variant}", tokens=tokens, batch=batch, max_image_error=error,
              official_s=theirs_best, ours_s=ours_best,
              ours_compile_s=max(ours_first - ours_best, 0.0), official_first_s=theirs_first)


def vq_case(args, batch: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from tokenizer.tokenizer_image.vq_model import VQ_models  # pylint: disable=g-import-not-at-top
  official = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8)
  redraw(official, args.seed)
  official.eval()
  config = vqgan_lib.VQGANConfig.from_official(dataclasses.asdict(official.config))
  params = jax.device_put(vqgan_conversion.convert_vqgan(state_dict_numpy(official), config))
  model = vqgan_lib.VQModel(config)
  codes = np.random.default_rng(args.seed).integers(0, 16384, (batch, 256))
  run = jax.jit(lambda p, c: model.apply({"params": p}, c, method=vqgan_lib.VQModel.decode_code))

  def ours():
    return np.asarray(jax.block_until_ready(run(params, jnp.asarray(codes, jnp.int32))))

  def theirs():
    with torch.no_grad():
      return official.decode_code(torch.as_tensor(codes), [batch, 8, 16, 16]).permute(
          0, 2, 3, 1).numpy()

  start = time.perf_counter()
  images_ours = ours()
  ours_first = time.perf_counter() - start
  error = float(np.max(np.abs(images_ours - theirs())))
  if error > 1e-3:
    raise SystemExit(f"vq-16: images differ from the official ones by {error:.2e}")
  ours_best = best_time(ours, args.repeats)[1]
  theirs_first, theirs_best = best_time(theirs, args.repeats)
  return dict(case="vq-16", tokens=256, batch=batch, max_image_error=error,
              official_s=theirs_best, ours_s=ours_best,
              ours_compile_s=max(ours_first - ours_best, 0.0), official_first_s=theirs_first)


def run_case(args, case: str) -> dict:
  name, _, batch = case.rpartition(":")
  if not name or not batch.isdigit() or int(batch) < 1:
    raise SystemExit(f"--cases: {case!r} is not MODEL:BATCH (e.g. gpt-B:8)")
  batch = int(batch)
  if name.startswith("gpt-"):
    size, _, grid = name[4:].partition("@")
    if size not in GPT_SIZES:
      raise SystemExit(f"{case}: GPT sizes are {GPT_SIZES}")
    use_checkout(args.llamagen)
    return gpt_case(args, size, int(grid or 16), batch)
  if name.startswith("titok-") and name[6:] in TITOK:
    use_checkout(args.titok)
    return titok_case(args, name[6:], batch)
  if name == "vq-16":
    use_checkout(args.llamagen)
    return vq_case(args, batch)
  raise SystemExit(f"{case}: unknown model (gpt-B|L|XL|XXL|3B[@GRID], "
                   f"titok-{'|'.join(TITOK)}, vq-16)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--llamagen", help="A checkout of FoundationVision/LlamaGen.")
  parser.add_argument("--titok", help="A checkout of bytedance/1d-tokenizer.")
  parser.add_argument("--cases", default="gpt-B:2,gpt-B:8,titok-L-32:4,vq-16:8")
  parser.add_argument("--cfg", type=float, default=4.0)
  parser.add_argument("--top_k", type=int, default=2000)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="The GPT's compute dtype on both sides.")
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  cases = args.cases.split(",")
  for flag, prefix in CHECKOUTS.items():
    needed = [c for c in cases if c.startswith(prefix)]
    checkout = getattr(args, flag)
    if needed and not (checkout and os.path.isdir(checkout)):
      raise SystemExit(f"--{flag}: a checkout of the official repository is needed for "
                       f"{needed}")
  device = jax.devices()[0]
  machine = dict(device=f"{device.platform}: {device.device_kind}", cpu=platform.processor()
                 or platform.machine(), cores=os.cpu_count(), torch_threads=args.threads,
                 torch=torch.__version__, jax=jax.__version__, dtype=args.dtype)
  for case in cases:
    result = run_case(args, case)
    result.update(official_images_per_s=result["batch"] / result["official_s"],
                  ours_images_per_s=result["batch"] / result["ours_s"],
                  ratio=result["official_s"] / result["ours_s"], **machine)
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                      for k, v in result.items()}), flush=True)


if __name__ == "__main__":
  main()
