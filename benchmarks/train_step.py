r"""Training-step time, throughput and MFU of the real trainers, on synthetic batches.

Builds the trainer of `--config` (the LlamaGen GPT / MaskGIT generator trainer
or the TiTok trainer) exactly as `vwt_jax.main` does, AOT-compiles its jitted
train step and runs it on one in-memory batch of random data of the right
shapes (no dataset is read), then prints ONE JSON object on stdout (logs go to
stderr): the mesh, per-device batch, dtypes, device kind, compile time, the
median and mean step time over `--steps` timed steps (after `--warmup`; each
step waits for the devices), examples/s and tokens/s, and two FLOP counts per
step with the model-FLOPs utilisation each gives:

* `compiled`: XLA's cost analysis of the compiled step (per device, times the
  device count). It counts everything the program does (elementwise ops, the
  optimizer, remat's recomputation) but a while loop's body only once, so it
  undercounts with `scan_layers` or `grad_accum_steps > 1`.
* `analytic`: the matmul FLOPs of the model, forward + backward (see
  `gpt_train_flops` and `titok_train_flops`); the usual MFU numerator.

MFU = FLOPs per step / step time / (devices x peak FLOP/s per device), with the
dense bf16 data-sheet peak of `vwt_jax.core.progress`; null (with the reason)
for a device kind not in that table, e.g. a CPU, unless `--peak_tflops` gives it.

  python benchmarks/train_step.py --config configs/llamagen.py:tiny --steps 10
  python benchmarks/train_step.py --config configs/llamagen.py:B --steps 20 --warmup 5 \
      --config.global_batch_size=256 --config.model.attention=cudnn --config.model.remat=True
  python benchmarks/train_step.py --config configs/titok.py:BL-64-VQ --steps 10 \
      --config.losses.perceptual_weights=/weights/convnext_small-0c510722.pth
  python benchmarks/train_step.py --config configs/llamagen.py:L --profile_dir /tmp/prof_l

A GPT config that leaves the code sizes to its dataset gets LlamaGen's
ImageNet-256 ones (a 16384-code VQGAN, 16x16 grid, 2D RoPE, 1000 classes;
t2i: 120 FLAN-T5-XL tokens of 2048); `--config.model.*` or `--config.data.dir`
(a code dataset) override them. TiTok's stage 1 needs its teacher
(`--config.teacher.checkpoint`), as in training.
"""

import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from vwt_jax.core import distributed
from vwt_jax.core import progress
from vwt_jax.core import sharding
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.models import titok as titok_lib
from vwt_jax.training import generator
from vwt_jax.training import titok

FLAGS = flags.FLAGS

# LlamaGen's ImageNet-256 c2i setting (VQ-16 codes) and its t2i text features.
LLAMAGEN_SIZES = dict(vocab_size=16384, block_size=256, rope_2d=True)
LLAMAGEN_T2I_PREFIX = dict(caption_dim=2048, cls_token_num=120)


def gpt_train_flops(cfg: gpt_lib.GPTConfig, batch: int) -> float:
  """Matmul FLOPs of one GPT train step: 3 x (forward) over `batch` sequences.

  The forward runs S = cls_token_num + block_size - 1 positions (the prefix,
  then every target but the last) through the trunk and the head: 2 FLOPs per
  weight per position, plus q.k and p.v (2 S^2 head_dim per head and layer
  each; the causal half is computed and masked, as XLA does). t2i adds the
  caption projection (fc1, fc2) over the prefix. The backward costs twice the
  forward. Embedding lookups are gathers (no FLOPs); elementwise ops, softmax,
  the loss and the optimizer are not counted.
  """
  seq = cfg.cls_token_num + cfg.block_size - 1
  hd = cfg.head_dim
  per_layer = (cfg.dim * hd * (cfg.n_head + 2 * cfg.kv_heads)   # wqkv
               + cfg.n_head * hd * cfg.dim                      # wo
               + 3 * cfg.dim * cfg.ffn_hidden_dim)              # w1, w3, w2
  weights = cfg.n_layer * per_layer + cfg.dim * cfg.vocab_size
  forward = 2 * seq * weights + cfg.n_layer * cfg.n_head * 4 * seq * seq * hd
  if cfg.model_type == "t2i":
    forward += 2 * cfg.cls_token_num * (cfg.caption_dim * cfg.dim + cfg.dim * cfg.dim)
  return float(3 * batch * forward)


def _vit_forward(batch: int, tokens: int, width: int, depth: int, mlp_ratio: float) -> int:
  """Forward matmul FLOPs of `depth` pre-LN ViT blocks over `tokens` positions."""
  weights = (4 + 2 * mlp_ratio) * width * width  # q, k, v, out; mlp in and out
  return int(depth * batch * (2 * tokens * weights + 4 * tokens * tokens * width))


def titok_train_flops(cfg: titok_lib.TiTokConfig, batch: int) -> float:
  """Matmul/conv FLOPs of one TiTok train step in the TiTok model itself.

  Encoder: patch embedding, the ViT over [class ; patches ; latent tokens],
  the projection to the latent; the VQ distances to the codebook (forward
  only: argmin has no gradient); decoder: the latent projection, the ViT over
  [class ; mask tokens ; latents] and its head (legacy: proxy-code logits and,
  with the pixel decoder, the soft codebook mix; otherwise RGB patches and
  the 3x3 output conv). A trained matmul costs 3x its forward (forward, input
  and weight gradients), 2x where its input needs no gradient (the images;
  the frozen latents of stage 2) and 1x when frozen (stage 2's encoder). Not
  counted: the MaskGIT-VQGAN pixel decoder convolutions, the discriminator,
  the perceptual network and stage 1's teacher (see `benchmark`'s
  `analytic_excludes`), elementwise ops and the optimizer.
  """
  size, n = cfg.image_size, cfg.num_latent_tokens
  enc_grid, dec_grid = size // cfg.enc_patch_size, size // cfg.dec_patch_size
  frozen_encoder = cfg.finetune_decoder
  enc_weights, enc_inputs = (1, 1) if frozen_encoder else (3, 2)

  encoder = _vit_forward(batch, 1 + enc_grid ** 2 + n, cfg.enc_width, cfg.enc_depth,
                         cfg.mlp_ratio)
  encoder += 2 * batch * n * cfg.enc_width * cfg.latent_channels
  patch_embed = 2 * batch * enc_grid ** 2 * cfg.enc_patch_size ** 2 * 3 * cfg.enc_width
  total = enc_weights * encoder + enc_inputs * patch_embed
  if cfg.quantize_mode == "vq":
    total += 2 * batch * n * cfg.codebook_size * cfg.token_size

  decoder = _vit_forward(batch, 1 + dec_grid ** 2 + n, cfg.dec_width, cfg.dec_depth,
                         cfg.mlp_ratio)
  pixels = batch * dec_grid ** 2
  if cfg.is_legacy:
    decoder += 2 * pixels * (cfg.dec_width * 2 * cfg.dec_width
                             + 2 * cfg.dec_width * titok_lib.NUM_PROXY_CODES)
    if cfg.finetune_decoder:
      decoder += 2 * pixels * titok_lib.NUM_PROXY_CODES * cfg.pixel_decoder.z_channels
  else:
    decoder += 2 * pixels * cfg.dec_width * cfg.dec_patch_size ** 2 * 3
    decoder += 2 * batch * size * size * 9 * 3 * 3
  latent_in = 2 * batch * n * cfg.token_size * cfg.dec_width
  total += 3 * decoder + (2 if frozen_encoder else 3) * latent_in
  return float(total)


def _fill_gpt_sizes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Sets LlamaGen's ImageNet sizes where the config leaves them to a dataset."""
  m = config.model
  if config.data.dir or config.family != "gpt":
    return {}
  filled = {k: v for k, v in LLAMAGEN_SIZES.items() if m[k] is None}
  if m.model_type == "t2i":
    filled.update({k: v for k, v in LLAMAGEN_T2I_PREFIX.items() if m[k] is None})
  m.update(filled)
  return filled


@dataclasses.dataclass
class _Setup:
  """A trainer, one host-local synthetic batch and what a step processes."""
  trainer: Any
  batch: dict[str, np.ndarray]
  tokens_per_example: int
  token: str
  analytic: float | None
  analytic_excludes: list[str]
  model: dict[str, Any]
  notes: list[str]


def _local_rows(config) -> int:
  if config.global_batch_size % jax.process_count():
    raise ValueError(f"global_batch_size={config.global_batch_size} must divide over "
                     f"{jax.process_count()} processes")
  return config.global_batch_size // jax.process_count()


def _generator_setup(config: ml_collections.ConfigDict, rng: np.random.Generator) -> _Setup:
  filled = _fill_gpt_sizes(config)
  trainer = generator.GeneratorTrainer(config, workdir="")
  gen, rows = trainer.generator, _local_rows(config)
  batch = {"codes": rng.integers(0, gen.vocab_size, (rows, gen.seq_len)).astype(np.int32)}
  notes = [f"sizes not in the config, set to LlamaGen ImageNet-256's: {filled}"] if filled else []
  if config.family != "gpt":
    model = {"family": config.family, "seq_len": gen.seq_len, "vocab_size": gen.vocab_size}
    batch["labels"] = rng.integers(0, gen.num_classes, rows).astype(np.int32)
    return _Setup(trainer, batch, gen.seq_len, "image code", None,
                  [f"no analytic count for family {config.family!r}"], model, notes)
  cfg = gen.cfg
  if cfg.model_type == "c2i":
    batch["labels"] = rng.integers(0, cfg.num_classes, rows).astype(np.int32)
  else:
    prefix = cfg.cls_token_num
    batch["caption_emb"] = rng.normal(size=(rows, prefix, cfg.caption_dim)).astype(np.float32)
    batch["caption_mask"] = np.ones((rows, prefix), np.int32)
  model = dict(family="gpt", model_type=cfg.model_type, n_layer=cfg.n_layer, n_head=cfg.n_head,
               dim=cfg.dim, vocab_size=cfg.vocab_size, block_size=cfg.block_size,
               cls_token_num=cfg.cls_token_num, params=gpt_lib.count_params(cfg),
               attention=cfg.attention, remat=cfg.remat, scan_layers=cfg.scan_layers)
  return _Setup(trainer, batch, cfg.block_size, "image code",
                gpt_train_flops(cfg, config.global_batch_size), [], model, notes)


def _titok_setup(config: ml_collections.ConfigDict, rng: np.random.Generator) -> _Setup:
  trainer = titok.TiTokTrainer(config, workdir="")
  cfg, rows, size = trainer.cfg, _local_rows(config), config.data.image_size
  batch = {"image": rng.uniform(-1.0, 1.0, (rows, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, 1000, rows).astype(np.int32)}
  excludes = [name for name, on in (
      ("pixel decoder convolutions", cfg.finetune_decoder),
      ("discriminator", trainer.use_gan),
      ("perceptual network", trainer.perceptual is not None),
      ("stage-1 teacher", trainer.teacher is not None)) if on]
  notes = []
  if trainer.recipe != "stage1" and config.losses.perceptual_weight and trainer.perceptual is None:
    notes.append("perceptual loss off (no config.losses.perceptual_weights): the recipe's "
                 "step also runs that network")
  model = dict(recipe=trainer.recipe, image_size=size, enc=(cfg.enc_width, cfg.enc_depth),
               dec=(cfg.dec_width, cfg.dec_depth), patch=cfg.enc_patch_size,
               num_latent_tokens=cfg.num_latent_tokens, quantize_mode=cfg.quantize_mode)
  return _Setup(trainer, batch, cfg.num_latent_tokens, "latent token",
                titok_train_flops(cfg, config.global_batch_size), excludes, model, notes)


SETUPS: dict[str, Callable[[ml_collections.ConfigDict, np.random.Generator], _Setup]] = {
    "gpt": _generator_setup,
    "maskgit": _generator_setup,
    "titok": _titok_setup,
}


def _stats(times: list[float]) -> dict[str, float]:
  return {"median": statistics.median(times), "mean": statistics.fmean(times),
          "min": min(times), "max": max(times)}


def benchmark(config: ml_collections.ConfigDict, *, steps: int, warmup: int,
              profile_dir: str = "", profile_steps: int = 3,
              peak_tflops: float = 0.0) -> dict[str, Any]:
  """Measures `config`'s train step; returns the JSON-able result (see module doc)."""
  if config.family not in SETUPS:
    raise ValueError(f"config.family={config.family!r}: this benchmark measures "
                     f"{sorted(SETUPS)}")
  if steps < 1 or warmup < 0:
    raise ValueError(f"--steps={steps} must be >= 1 and --warmup={warmup} >= 0")
  setup = SETUPS[config.family](config, np.random.default_rng(config.seed))
  trainer = setup.trainer
  batch = sharding.host_batch_to_global(setup.batch, trainer.mesh)
  rng = jax.random.key(config.seed)

  start = time.perf_counter()
  state = jax.block_until_ready(trainer.init_state(rng))
  init_s = time.perf_counter() - start
  start = time.perf_counter()
  step_fn, compiled = trainer.compile_train_step(state, batch, rng)
  compile_s = time.perf_counter() - start

  def run(state, step):
    state, metrics = step_fn(state, batch, jax.random.fold_in(rng, step))
    return jax.block_until_ready((state, metrics))

  for step in range(warmup):
    state, metrics = run(state, step)
  times = []
  for step in range(warmup, warmup + steps):
    start = time.perf_counter()
    state, metrics = run(state, step)
    times.append(time.perf_counter() - start)
  if profile_dir:
    # Every process runs the steps; process 0 traces them (SPMD: the same program).
    traced = profile_steps if jax.process_index() == 0 else 0
    with progress.ProfileWindow(profile_dir, 1, traced) as window:
      for step in range(1, profile_steps + 1):
        window.before_step(step)
        state, metrics = run(state, warmup + steps + step)
        window.after_step(step, state)

  devices = jax.devices()
  step_time = statistics.median(times)
  per_device = progress.compiled_flops(compiled)
  flops = {"compiled": None if per_device is None else per_device * len(devices),
           "analytic": setup.analytic}
  peak = peak_tflops * 1e12 if peak_tflops else progress.peak_flops_per_device(devices[0])
  achieved = {k: None if v is None else v / step_time / len(devices) for k, v in flops.items()}
  notes = list(setup.notes)
  if config.get("model", {}).get("scan_layers") or config.grad_accum_steps > 1:
    notes.append("XLA's cost analysis counts a while loop's body once: with scan_layers or "
                 "grad_accum_steps > 1 the compiled count is too low; use the analytic MFU")
  if config.get("model", {}).get("remat"):
    notes.append("remat recomputes the forward: counted in the compiled FLOPs, not in the "
                 "analytic (model) FLOPs")
  mesh = trainer.mesh
  dp = sharding.data_parallel_size(mesh)
  examples = config.global_batch_size
  tokens_per_step = examples * setup.tokens_per_example
  return {
      "family": config.family,
      "variant": config.variant,
      "model": setup.model,
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "num_processes": jax.process_count(),
      "mesh_shape": dict(mesh.shape),
      "global_batch_size": examples,
      "per_device_batch": examples / dp,
      "grad_accum_steps": config.grad_accum_steps,
      "compute_dtype": config.compute_dtype,
      "param_dtype": config.param_dtype,
      "warmup_steps": warmup,
      "timed_steps": steps,
      "init_s": init_s,
      "compile_s": compile_s,
      "step_time_s": _stats(times),
      "examples_per_sec": examples / step_time,
      "tokens_per_example": setup.tokens_per_example,
      "token": setup.token,
      "tokens_per_step": tokens_per_step,
      "tokens_per_sec": tokens_per_step / step_time,
      "flops_per_step": flops,
      "analytic_excludes": setup.analytic_excludes,
      "tflops_per_sec_per_device": {k: None if v is None else v / 1e12
                                    for k, v in achieved.items()},
      "peak_flops_per_device": peak,
      "mfu": {k: None if v is None or not peak else v / peak for k, v in achieved.items()},
      "mfu_null_reason": None if peak else (
          f"peak FLOP/s of device kind {devices[0].device_kind!r} unknown (not in "
          "vwt_jax/core/progress.py's table); pass --peak_tflops"),
      "final_loss": float(metrics["loss"]),
      "nonfinite_steps": None if "nonfinite" not in metrics else int(metrics["nonfinite"]),
      "profile_dir": profile_dir or None,
      "notes": notes,
      "jax_version": jax.__version__,
  }


def define_flags():
  config_flags.DEFINE_config_file(
      "config", None, "Trainer config, e.g. configs/llamagen.py:B; --config.x overrides.",
      lock_config=True)
  flags.DEFINE_integer("steps", 20, "Timed steps.")
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
  flags.DEFINE_string("profile_dir", "", "If set, process 0 traces --profile_steps more "
                      "steps there (jax.profiler; TensorBoard's profile plugin reads it).")
  flags.DEFINE_integer("profile_steps", 3, "Steps traced into --profile_dir.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for the MFU (default: "
                     "the dense bf16 data-sheet value of a known device kind).")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  result = benchmark(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup,
                     profile_dir=FLAGS.profile_dir, profile_steps=FLAGS.profile_steps,
                     peak_tflops=FLAGS.peak_tflops)
  logging.info("median step %.4f s", result["step_time_s"]["median"])
  if jax.process_index() == 0:
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
