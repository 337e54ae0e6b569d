r"""Speed against the official PyTorch code: same weights, same machine, one run.

The official repositories are yours to clone (nothing of theirs is in this
one); install their requirements next to vwt_jax (torch, and for TiTok
omegaconf, einops, torchvision), then:

  git clone https://github.com/FoundationVision/LlamaGen /src/LlamaGen
  git clone https://github.com/bytedance/1d-tokenizer /src/1d-tokenizer
  python benchmarks/vs_official.py --llamagen /src/LlamaGen --titok /src/1d-tokenizer \
      --cases gpt-B:2,gpt-B:8,titok-L-32:4,vq-16:8,train-gpt-B:8,train-titok-S-128:4

A case is MODEL:BATCH:
  gpt-B, gpt-L, gpt-XL, gpt-XXL, gpt-3B  LlamaGen c2i GPT sampling 256 image tokens
      (gpt-B@24: a 24 x 24 grid, the 384-px models' 576), CFG 4, top-k 2000,
      temperature 1 (--cfg, --top_k): the official `generate` against
      `sampling.autoregressive.generate`, decoding excluded;
  titok-L-32, titok-B-64, titok-S-128  TiTok encode + decode of 256-px images
      (the released two-stage models, pixel decoder included);
  vq-16  LlamaGen's VQ-16 decoding 16 x 16 codes into 256-px images;
  train-gpt-B (... -3B)  one c2i GPT training step on 16 x 16 codes, as
      `autoregressive/train/train_c2i.py` runs it (teacher-forced loss,
      backward, gradients clipped at 1.0, its AdamW: lr 1e-4, betas (0.9,
      0.95), weight decay 5e-2 on >= 2-D weights, fused where torch has it)
      against the compiled step of this library's trainer (configs/llamagen.py,
      built as benchmarks/train_step.py builds it); dropout and class dropout
      off on both sides, so both steps are deterministic;
  train-titok-L-32, train-titok-B-64, train-titok-S-128  one stage-1 step of
      the two-stage recipe: the frozen MaskGIT-VQGAN teacher encodes the batch
      into proxy codes, TiTok's legacy decoder predicts them (cross-entropy +
      quantizer loss), backward, clip 1.0, AdamW (lr 1e-4, betas (0.9, 0.99),
      weight decay 1e-4 outside the official exclusions), EMA 0.999; against
      our TiTok trainer's stage-1 step (configs/titok.py, recipe=stage1). The
      teacher runs on both sides, as in both trainers: the released
      architecture with redrawn weights, saved to a file that the official
      `PretrainedTokenizer` and our converter both load. The recipe's
      warm-up is skipped on both sides (constant lr 1e-4).

Each case builds the official model with the official initialisation and
then redraws every weight from a seeded generator at unit scale (the official
heads start at zero, which would make every logit equal); this library loads
the same state dict through its converter. Before timing, the two must agree:
the GPT's first 32 greedy tokens with CFG, equal; the tokenizers' token ids,
equal, and their images within 1e-3; a train case's loss on one batch of
random codes / images, within a relative 1e-4, at the first step and again
after one update (`check_train_losses`). Then each side runs `--repeats` times
after one warm-up call: the official code eagerly (under `torch.no_grad` but
for training) with `--threads` torch threads, ours compiled by XLA (its
compile time, the first call minus a steady one, or for a train step the
ahead-of-time compilation, is reported apart). One JSON line per case: the
best times, images/s of both and `ratio` = official time / ours (above 1:
this library is faster). The official code runs on `--torch_device` (cuda
where torch sees a GPU). float32 on CPU; on an accelerator both sides run GPT
sampling in bfloat16 (`--dtype`: weights, activations and KV cache, after the
agreement check in float32; the train cases are float32 only).

GPT cases carry the decode steps' roofline: `memory_read_gb`, the bytes a
generation must read at least (every weight once a step, the filled KV cache
of every row), `memory_bound_s`, their time at the device's data-sheet
bandwidth (`--bandwidth` elsewhere), and `memory_bound_fraction` = that time
over ours.

`--official_compile` adds the official scripts' `torch.compile` path for the
GPT cases: `sample_c2i.py --compile` (mode "reduce-overhead", fullgraph) for
sampling, `train_c2i.py`'s default `torch.compile(model)` for training. Its
times come as `official_compiled_s` (best), `official_compiled_first_s`
(compilation included, shorter on a rerun that finds inductor's on-disk
cache) and `ratio_compiled`, with
`official_compiled_greedy_equal` for sampling (reported, not required:
inductor's kernels sum in their own order); where compiling fails (inductor
on CPU needs a C++ compiler) `official_compiled_error` gives the reason
instead. The tokenizer cases have no such baseline: 1d-tokenizer's scripts
never call `torch.compile`, and LlamaGen compiles its VQ model only for
training (`vq_train.py`), not for the decoding timed here.
"""

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion import llamagen as llamagen_conversion
from vwt_jax.conversion import titok as titok_conversion
from vwt_jax.conversion import vqgan as vqgan_conversion
from vwt_jax.core import progress
from vwt_jax.core import sharding
from vwt_jax.families import common
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.models import maskgit_vqgan
from vwt_jax.models import titok as titok_lib
from vwt_jax.models import vqgan as vqgan_lib
from vwt_jax.sampling import autoregressive as ar
from vwt_jax.training import train_state

import train_step  # benchmarks/train_step.py: run as a script, this folder is on sys.path

GPT_SIZES = ("B", "L", "XL", "XXL", "3B")
# The released two-stage TiTok tokenizers' official config fields.
TITOK = {"L-32": ("large", 32), "B-64": ("base", 64), "S-128": ("small", 128)}
CHECK_TOKENS = 32
# The flag naming each official checkout, by the prefix of the cases it serves.
CHECKOUTS = {"llamagen": ("gpt-", "vq-", "train-gpt-"), "titok": ("titok-", "train-titok-")}
# Relative difference allowed between the two sides' train losses (see
# `check_train_losses`).
TRAIN_LOSS_RTOL = 1e-4
# Parameter names the official TiTok `create_optimizer` keeps out of weight
# decay (besides every parameter of fewer than 2 dimensions).
TITOK_NO_DECAY = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma",
                  "embed")
HERE = os.path.dirname(os.path.abspath(__file__))


def our_config(filename: str, arg: str):
  """`configs/<filename>:arg`, loaded the way `--config` loads it."""
  return common.load_config(f"{os.path.join(HERE, '..', 'configs', filename)}:{arg}")


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


def compiled_times(fn, repeats: int) -> dict:
  """`best_time` of a call into `torch.compile`d code, as extra JSON fields; the
  reason instead where compiling fails (inductor on CPU needs a C++ compiler)."""
  try:
    first, best = best_time(fn, repeats)
  except Exception as error:  # pylint: disable=broad-except
    # Dynamo and inductor raise many unrelated types; the run goes on without them.
    lines = str(error).strip().splitlines()
    return dict(official_compiled_error=f"{type(error).__name__}: {lines[0] if lines else ''}")
  return dict(official_compiled_s=best, official_compiled_first_s=first)


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
  return {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items()}


def memory_bound(args, config: gpt_lib.GPTConfig, params, rows: int, tokens: int,
                 seconds: float) -> dict:
  """The bytes a generation must read at least, and the time they take at the
  device's peak memory bandwidth (the decode steps' roofline).

  Every step reads every weight once (of the embedding tables one row each)
  and the filled KV cache of every row: step s (0 = the prefill) reads
  `prefix + s` positions. `memory_bound_fraction` = that time / ours.
  """
  itemsize = jnp.dtype(config.param_dtype).itemsize
  tables = config.vocab_size * config.dim + (config.num_classes + 1) * config.dim
  weights = (sum(x.size for x in jax.tree.leaves(params)) - tables) * itemsize
  per_position = (2 * config.n_layer * (config.n_kv_head or config.n_head)
                  * (config.dim // config.n_head) * jnp.dtype(config.dtype).itemsize)
  positions = sum(config.cls_token_num + s for s in range(tokens))
  read = tokens * weights + rows * positions * per_position
  bandwidth = args.bandwidth * 1e9 or progress.peak_bandwidth_per_device()
  if not bandwidth:
    return dict(memory_read_gb=read / 1e9, memory_bound_s=None,
                memory_bound_reason="peak bandwidth of this device unknown: pass --bandwidth")
  return dict(memory_read_gb=read / 1e9, memory_bound_s=read / bandwidth,
              memory_bound_fraction=read / bandwidth / seconds, bandwidth_gbs=bandwidth / 1e9)


def gpt_case(args, size: str, grid: int, batch: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from autoregressive.models.generate import generate  # pylint: disable=g-import-not-at-top
  from autoregressive.models.gpt import GPT_models  # pylint: disable=g-import-not-at-top
  official = GPT_models[f"GPT-{size}"](block_size=grid * grid, cls_token_num=1,
                                       model_type="c2i", vocab_size=16384, num_classes=1000)
  redraw(official, args.seed)
  official.to(args.torch_device).eval()
  config = gpt_lib.GPTConfig.from_official(dataclasses.asdict(official.config))
  converted = llamagen_conversion.convert_gpt(state_dict_numpy(official), config)
  params = jax.device_put(converted)
  model = gpt_lib.GPT(config)
  labels = np.arange(batch) * 97 % 1000

  def ours(num_tokens, **settings):
    return np.asarray(jax.block_until_ready(ar.generate(
        model, params, jnp.asarray(labels, jnp.int32), num_tokens=num_tokens,
        rng=jax.random.key(args.seed), cfg_scale=args.cfg, **settings)))

  def theirs(num_tokens, model=official, **settings):
    with torch.no_grad():
      return generate(model, torch.as_tensor(labels, device=args.torch_device), num_tokens,
                      cfg_scale=args.cfg, cfg_interval=-1, **settings).cpu().numpy()

  # Checked in float32, where only the summation order differs.
  greedy_ours = ours(CHECK_TOKENS, greedy=True)
  greedy_theirs = theirs(CHECK_TOKENS, sample_logits=False)
  if not np.array_equal(greedy_ours, greedy_theirs):
    raise SystemExit(f"gpt-{size}: greedy tokens differ from the official ones "
                     f"({np.mean(greedy_ours != greedy_theirs):.1%} of them)")
  if args.dtype != "float32":
    # Timed with bfloat16 weights, activations and KV cache on both sides.
    official.to({"bfloat16": torch.bfloat16}[args.dtype])
    config = dataclasses.replace(config, dtype=jnp.dtype(args.dtype),
                                 param_dtype=jnp.dtype(args.dtype))
    params = jax.device_put(jax.tree.map(lambda x: x.astype(config.param_dtype), converted))
    model = gpt_lib.GPT(config)
    greedy_theirs = theirs(CHECK_TOKENS, sample_logits=False)
  sampling = dict(temperature=1.0, top_k=args.top_k)
  tokens = grid * grid
  ours_first, ours_best = best_time(lambda: ours(tokens, **sampling), args.repeats)
  theirs_first, theirs_best = best_time(
      lambda: theirs(tokens, top_p=1.0, sample_logits=True, **sampling), args.repeats)
  result = dict(case=f"gpt-{size}", tokens=tokens, batch=batch, cfg=args.cfg, top_k=args.top_k,
                greedy_tokens_equal=CHECK_TOKENS, official_s=theirs_best, ours_s=ours_best,
                ours_compile_s=max(ours_first - ours_best, 0.0),
                official_first_s=theirs_first,
                **memory_bound(args, config, params, 2 * batch if args.cfg > 1 else batch, tokens,
                               ours_best))
  if args.official_compile:
    # `sample_c2i.py --compile`; `generate` reaches `setup_caches` through the
    # compiled wrapper, as there.
    compiled = torch.compile(official, mode="reduce-overhead", fullgraph=True)
    timing = compiled_times(lambda: theirs(tokens, top_p=1.0, sample_logits=True, model=compiled,
                                           **sampling), args.repeats)
    if "official_compiled_error" not in timing:
      # Reported, not required: inductor's fused kernels sum in their own order.
      result["official_compiled_greedy_equal"] = bool(np.array_equal(
          theirs(CHECK_TOKENS, sample_logits=False, model=compiled), greedy_theirs))
    result.update(timing)
  return result


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
  official.to(args.torch_device).eval()
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
      x = torch.as_tensor(images, device=args.torch_device).permute(0, 3, 1, 2)
      codes = official.encode(x)[1]["min_encoding_indices"].reshape(batch, -1)
      decoded = official.decode_tokens(codes)
      return codes.cpu().numpy(), decoded.permute(0, 2, 3, 1).cpu().numpy()

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
  official.to(args.torch_device).eval()
  config = vqgan_lib.VQGANConfig.from_official(dataclasses.asdict(official.config))
  params = jax.device_put(vqgan_conversion.convert_vqgan(state_dict_numpy(official), config))
  model = vqgan_lib.VQModel(config)
  codes = np.random.default_rng(args.seed).integers(0, 16384, (batch, 256))
  run = jax.jit(lambda p, c: model.apply({"params": p}, c, method=vqgan_lib.VQModel.decode_code))

  def ours():
    return np.asarray(jax.block_until_ready(run(params, jnp.asarray(codes, jnp.int32))))

  def theirs():
    with torch.no_grad():
      return official.decode_code(torch.as_tensor(codes, device=args.torch_device),
                                  [batch, 8, 16, 16]).permute(0, 2, 3, 1).cpu().numpy()

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


def our_train_step(setup, params, seed: int):
  """The trainer's compiled step from `params` (the official weights, fresh
  AdamW moments, as `init_from` starts a run); (step, AOT compile seconds).
  The step feeds `setup.batch` on every call and returns its loss."""
  trainer = setup.trainer
  batch = sharding.host_batch_to_global(setup.batch, trainer.mesh)
  rng = jax.random.key(seed)
  state = trainer.init_state(rng)
  state = train_state.restart_from(
      state, train_state.merge_params(state["params"], params, trainer.param_shardings,
                                      "the official weights"),
      trainer.tx, trainer.state_shardings)
  start = time.perf_counter()
  step_fn, _ = trainer.compile_train_step(state, batch, rng)
  compile_s = time.perf_counter() - start
  # The state is donated to the step: each call must hand in the last one.
  current = {"state": state}

  def step() -> float:
    current["state"], metrics = step_fn(current["state"], batch, rng)
    return float(metrics["loss"])

  return step, compile_s


def check_train_losses(case: str, ours, theirs) -> dict:
  """Two steps on each side from the same weights: the losses of both (before
  and after one update) must agree within TRAIN_LOSS_RTOL.

  The first loss differs only by float32 summation order: a few ulps (one ulp
  is 1.2e-7 relative at worst), the positions' errors averaging out in the
  mean. AdamW's first update is about lr x sign(g), so a gradient
  entry near zero whose sign differs between the two moves its weight by up to
  2 lr the other way; such entries barely move the loss. Measured on CPU
  (float32, batch 2): GPT-B 0 and 0 (equal floats), TiTok-S-128 1.3e-7 and
  4.9e-7; TRAIN_LOSS_RTOL leaves a 200-fold margin, against a first update
  that takes the loss from 10.2 to 7.9 (GPT-B) or 7.1 to 4.8 (TiTok-S-128).
  What the second loss checks is the gradient (its signs) and the learning
  rate: a first AdamW step does not depend on the betas or on clipping, and
  weight decay shrinks the weights by lr x 5e-2 = 5e-6 at most, too little to
  show; those settings are equal by construction, not by this check.
  """
  losses = []
  for step in range(2):
    mine, official = ours(), theirs()
    error = abs(mine - official) / abs(official)
    if not error <= TRAIN_LOSS_RTOL:
      raise SystemExit(f"{case}: train loss of step {step + 1} is {mine:.7g}, the official "
                       f"{official:.7g} (relative difference {error:.1e} > {TRAIN_LOSS_RTOL})")
    losses.append((official, error))
  return dict(official_losses=[l for l, _ in losses], loss_rel_errors=[e for _, e in losses])


def train_times(args, ours, theirs, compile_s: float) -> dict:
  ours_best = best_time(ours, args.repeats)[1]
  theirs_first, theirs_best = best_time(theirs, args.repeats)
  return dict(official_s=theirs_best, ours_s=ours_best, ours_compile_s=compile_s,
              official_first_s=theirs_first)


def train_gpt_case(args, size: str, batch: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from autoregressive.models.gpt import GPT_models  # pylint: disable=g-import-not-at-top
  from autoregressive.train.train_c2i import creat_optimizer  # pylint: disable=g-import-not-at-top
  # No dropout, no class dropout: both steps deterministic, so their losses
  # can be compared (and no label embedding row for the null class).
  no_dropout = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
                    class_dropout_prob=0.0)
  official = GPT_models[f"GPT-{size}"](block_size=256, cls_token_num=1, model_type="c2i",
                                       vocab_size=16384, num_classes=1000, **no_dropout)
  redraw(official, args.seed)
  official.to(args.torch_device).train()
  # `train_c2i.py`'s defaults: lr 1e-4, weight decay 5e-2, betas (0.9, 0.95).
  optimizer = creat_optimizer(official, 5e-2, 1e-4, (0.9, 0.95), logging.getLogger("official"))

  config = our_config("llamagen.py", size)
  config.update(dict(global_batch_size=batch, compute_dtype="float32", param_dtype="float32"))
  # train_c2i.py recomputes nothing in the backward; our XXL and 3B recipes would.
  config.model.update(dict(no_dropout, remat=False))
  setup = train_step._generator_setup(config, np.random.default_rng(args.seed))
  params = llamagen_conversion.convert_gpt(state_dict_numpy(official), setup.trainer.cfg)
  ours, compile_s = our_train_step(setup, params, args.seed)
  codes = torch.as_tensor(setup.batch["codes"], device=args.torch_device).long()
  labels = torch.as_tensor(setup.batch["labels"], device=args.torch_device).long()

  def step(model):
    # `train_c2i.py`'s loop; its GradScaler is a no-op but for float16.
    _, loss = model(cond_idx=labels, idx=codes[:, :-1], targets=codes)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(official.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()

  result = dict(case=f"train-gpt-{size}", tokens=256, batch=batch,
                **check_train_losses(f"train-gpt-{size}", ours, lambda: step(official)),
                **train_times(args, ours, lambda: step(official), compile_s))
  if args.official_compile:
    # `train_c2i.py` compiles unless --no-compile (its DDP wrapper aside).
    compiled = torch.compile(official)
    result.update(compiled_times(lambda: step(compiled), args.repeats))
  return result


def train_titok_case(args, variant: str, batch: int) -> dict:
  """Stage 1 of the released two-stage recipe, teacher included on both sides:
  the official loop encodes every batch with the frozen MaskGIT-VQGAN, as our
  step does. The teacher is the released architecture with redrawn weights,
  written to a file that both load (`PretrainedTokenizer`, our converter)."""
  import torch  # pylint: disable=g-import-not-at-top
  from omegaconf import OmegaConf  # pylint: disable=g-import-not-at-top
  from modeling import titok as official_titok  # pylint: disable=g-import-not-at-top
  from modeling.modules.ema_model import EMAModel  # pylint: disable=g-import-not-at-top
  from modeling.modules.losses import ReconstructionLoss_Stage1  # pylint: disable=g-import-not-at-top
  size, tokens = TITOK[variant]
  official_config = OmegaConf.create({
      "model": {"vq_model": {
          "codebook_size": 4096, "token_size": 12, "use_l2_norm": True,
          "commitment_cost": 0.25, "vit_enc_model_size": size, "vit_dec_model_size": size,
          "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": tokens,
          "finetune_decoder": False}},
      "losses": {"quantizer_weight": 1.0},
      "dataset": {"preprocessing": {"crop_size": 256}}})
  official = official_titok.TiTok(official_config)
  redraw(official, args.seed)
  official.to(args.torch_device).train()
  loss_module = ReconstructionLoss_Stage1(official_config)
  # The stage-1 recipe: AdamW lr 1e-4, betas (0.9, 0.99), weight decay 1e-4
  # but for the official exclusions; EMA 0.999; gradients clipped at 1.0.
  # Its 10k-step warm-up is skipped on both sides: from lr 0 the first update
  # would move nothing and the second-step check would be vacuous.
  named = list(official.named_parameters())
  no_decay = lambda n, p: p.ndim < 2 or any(s in n for s in TITOK_NO_DECAY)
  optimizer = torch.optim.AdamW(
      [{"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
       {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": 1e-4}],
      lr=1e-4, betas=(0.9, 0.99))
  ema = EMAModel(official.parameters(), decay=0.999)

  vq = maskgit_vqgan.MaskGitVQGANConfig()
  teacher_arch = OmegaConf.create({
      "channel_mult": list(vq.channel_mult), "num_resolutions": vq.num_resolutions,
      "dropout": 0.0, "hidden_channels": vq.hidden_channels, "num_channels": vq.num_channels,
      "num_res_blocks": vq.num_res_blocks, "resolution": 256, "z_channels": vq.z_channels})
  parts = torch.nn.Module()
  parts.encoder = official_titok.Pixel_Eecoder(teacher_arch)
  parts.decoder = official_titok.Pixel_Decoder(teacher_arch)
  parts.quantize = official_titok.Pixel_Quantizer(vq.codebook_size, vq.z_channels,
                                                  vq.commitment_cost)
  redraw(parts, args.seed + 1)
  with tempfile.TemporaryDirectory() as folder:
    teacher_file = os.path.join(folder, "maskgit-vqgan.bin")
    torch.save(parts.state_dict(), teacher_file)
    # Loads strictly: the file fits the official teacher's architecture.
    teacher = official_titok.PretrainedTokenizer(teacher_file).to(args.torch_device)
    config = our_config("titok.py", f"{variant},recipe=stage1")
    config.update(dict(global_batch_size=batch, compute_dtype="float32",
                       param_dtype="float32"))
    config.optimizer.update(dict(schedule="constant", warmup_steps=0, end_lr=config.optimizer.lr))
    config.teacher.checkpoint = teacher_file
    setup = train_step._titok_setup(config, np.random.default_rng(args.seed))
  params = titok_conversion.convert_titok(state_dict_numpy(official), setup.trainer.cfg)
  ours, compile_s = our_train_step(setup, params, args.seed)
  # Our images are in [-1, 1], the official loader's in [0, 1].
  images = torch.as_tensor((setup.batch["image"] + 1.0) / 2.0, device=args.torch_device).permute(
      0, 3, 1, 2).contiguous()

  def theirs():
    proxy_codes = teacher.encode(images)
    logits, quantizer = official(images)
    loss, _ = loss_module(proxy_codes, logits, quantizer)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(official.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(official.parameters())
    return loss.item()

  case = f"train-titok-{variant}"
  return dict(case=case, tokens=tokens, batch=batch, **check_train_losses(case, ours, theirs),
              **train_times(args, ours, theirs, compile_s))


def run_case(args, case: str) -> dict:
  name, _, batch = case.rpartition(":")
  if not name or not batch.isdigit() or int(batch) < 1:
    raise SystemExit(f"--cases: {case!r} is not MODEL:BATCH (e.g. gpt-B:8)")
  batch = int(batch)
  if name.startswith("train-gpt-"):
    if name[10:] not in GPT_SIZES:
      raise SystemExit(f"{case}: GPT sizes are {GPT_SIZES}")
    use_checkout(args.llamagen)
    return train_gpt_case(args, name[10:], batch)
  if name.startswith("train-titok-") and name[12:] in TITOK:
    use_checkout(args.titok)
    return train_titok_case(args, name[12:], batch)
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
                   f"titok-{'|'.join(TITOK)}, vq-16, train-gpt-B|L|XL|XXL|3B, "
                   f"train-titok-{'|'.join(TITOK)})")


def rounded(value):
  """4 significant digits, in lists too."""
  if isinstance(value, list):
    return [rounded(v) for v in value]
  return float(f"{value:.4g}") if isinstance(value, float) else value


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
                      help="The GPT's compute dtype on both sides (sampling cases).")
  parser.add_argument("--torch_device", default=None,
                      help="Where the official code runs (default: cuda when torch sees it).")
  parser.add_argument("--bandwidth", type=float, default=0.0,
                      help="Memory bandwidth in GB/s for the GPT cases' roofline (default: "
                           "the data-sheet peak of a known accelerator; none on CPU).")
  parser.add_argument("--official_compile", action="store_true",
                      help="Also time the official GPT under torch.compile, as its scripts' "
                           "compile paths do.")
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  if args.torch_device is None:
    args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  cases = args.cases.split(",")
  for flag, prefix in CHECKOUTS.items():
    needed = [c for c in cases if c.startswith(prefix)]
    checkout = getattr(args, flag)
    if needed and not (checkout and os.path.isdir(checkout)):
      raise SystemExit(f"--{flag}: a checkout of the official repository is needed for "
                       f"{needed}")
  trained = [c for c in cases if c.startswith("train-")]
  if trained and args.dtype != "float32":
    raise SystemExit(f"--dtype={args.dtype}: the train cases {trained} run float32 only")
  device = jax.devices()[0]
  machine = dict(device=f"{device.platform}: {device.device_kind}", cpu=platform.processor()
                 or platform.machine(), cores=os.cpu_count(), torch_threads=args.threads,
                 torch=torch.__version__, torch_device=args.torch_device, jax=jax.__version__,
                 dtype=args.dtype)
  for case in cases:
    result = run_case(args, case)
    result.update(official_images_per_s=result["batch"] / result["official_s"],
                  ours_images_per_s=result["batch"] / result["ours_s"],
                  ratio=result["official_s"] / result["ours_s"], **machine)
    if "official_compiled_s" in result:
      result["ratio_compiled"] = result["official_compiled_s"] / result["ours_s"]
    print(json.dumps({k: rounded(v) for k, v in result.items()}), flush=True)


if __name__ == "__main__":
  main()
