r"""TiTok 1D image tokenizer training (arXiv 2406.07550).

Launch (any variant; every field can be overridden):

  python -m vwt_jax.main --config configs/titok.py:tiny --workdir /tmp/titok_tiny
  python -m vwt_jax.main --config configs/titok.py:B-64,recipe=stage1 \
      --workdir gs://bucket/titok_b64_s1 --config.data.data_dir gs://bucket/tfds \
      --config.teacher.checkpoint /path/to/maskgit-vqgan-imagenet-f16-256.bin
  python -m vwt_jax.main --config configs/titok.py:B-64,recipe=stage2 \
      --workdir gs://bucket/titok_b64_s2 --config.init_from gs://bucket/titok_b64_s1

The argument is `VARIANT[,recipe=stage1|stage2|single_stage]`. Variants:
  tiny                      the demo model on the embedded synthetic shapes (CPU)
  L-32, B-64, S-128         released two-stage models (legacy decoder + pixel decoder)
  BL-64-VQ, BL-128-VQ, SL-256-VQ        single-stage VQ models (RGB decoder)
  LL-32-VAE, BL-64-VAE, BL-128-VAE      single-stage VAE models

Every `eval_every` steps the first `eval.num_images` images of the eval split
are reconstructed: PSNR, SSIM and codebook usage always; LPIPS and rFID (with
sFID, precision/recall, IS) once `--config.eval.lpips_weights` /
`--config.eval.inception_weights` name converted weight files (.npz from
`vwt_jax.conversion.lpips` / `vwt_jax.conversion.inception`).
"""

import ml_collections

from vwt_jax.data import pipeline
from vwt_jax.training import loop
from vwt_jax.training import optimizer

# (width, depth, heads) of the official size names.
SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}

# name: (encoder size, decoder size, latent tokens, codebook, token size, family)
RELEASED = {
    "L-32": ("large", "large", 32, 4096, 12, "two_stage"),
    "B-64": ("base", "base", 64, 4096, 12, "two_stage"),
    "S-128": ("small", "small", 128, 4096, 12, "two_stage"),
    "BL-64-VQ": ("base", "large", 64, 8192, 64, "vq"),
    "BL-128-VQ": ("base", "large", 128, 8192, 64, "vq"),
    "SL-256-VQ": ("small", "large", 256, 8192, 64, "vq"),
    "LL-32-VAE": ("large", "large", 32, 0, 16, "vae"),
    "BL-64-VAE": ("base", "large", 64, 0, 16, "vae"),
    "BL-128-VAE": ("base", "large", 128, 0, 16, "vae"),
}


def _model(enc, dec, tokens, codebook, token_size, family, patch=16):
  enc_w, enc_d, enc_h = SIZES[enc] if isinstance(enc, str) else enc
  dec_w, dec_d, dec_h = SIZES[dec] if isinstance(dec, str) else dec
  return ml_collections.ConfigDict(dict(
      enc_width=enc_w, enc_depth=enc_d, enc_heads=enc_h,
      dec_width=dec_w, dec_depth=dec_d, dec_heads=dec_h,
      enc_patch_size=patch, dec_patch_size=patch,
      num_latent_tokens=tokens,
      codebook_size=codebook or 1,
      token_size=token_size,
      use_l2_norm=family == "two_stage",
      commitment_cost=0.25,
      quantize_mode="vae" if family == "vae" else "vq",
      is_legacy=family == "two_stage",
      # Multiplies the official N(0, 0.02) kernel init (sized for widths ~1000).
      init_kernel_scale=1.0,
      # Codebook restart: codes whose usage EMA falls below threshold/K are reset
      # to batch latents (0 disables; the official recipes do not use it).
      dead_code_threshold=0.0, dead_code_decay=0.99,
      # MaskGIT-VQGAN pixel decoder of the released models (fine-tuned in stage 2).
      pixel_decoder=dict(hidden_channels=128, channel_mult=(1, 1, 2, 2, 4),
                         num_res_blocks=2, z_channels=256, codebook_size=1024),
  ))


def _parse(arg: str | None) -> tuple[str, dict[str, str]]:
  parts = [p for p in (arg or "tiny").split(",") if p]
  options = dict(p.split("=", 1) for p in parts[1:])
  unknown = set(options) - {"recipe"}
  if unknown:
    raise ValueError(f"configs/titok.py: unknown option(s) {sorted(unknown)}; "
                     "expected VARIANT[,recipe=stage1|stage2|single_stage]")
  return parts[0], options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, options = _parse(arg)
  if variant != "tiny" and variant not in RELEASED:
    raise ValueError(f"configs/titok.py: unknown variant {variant!r}; expected "
                     f"'tiny' or one of {sorted(RELEASED)}")
  c = loop.base_config("titok", variant, total_steps=1_000_000, global_batch_size=256,
                       ema_decay=0.999)

  c.data = pipeline.default_data_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 256

  c.optimizer = optimizer.default_optimizer_config()

  # Pixel objective (stage 2 and single stage).
  c.losses = ml_collections.ConfigDict(dict(
      reconstruction="l2", reconstruction_weight=1.0,
      perceptual="convnext_s", perceptual_weight=0.1, perceptual_weights="",
      quantizer_weight=1.0, kl_weight=1e-6,
      discriminator_weight=0.01, discriminator_start=20_000,
      discriminator_loss="hinge", lecam_weight=0.001, lecam_decay=0.999,
  ))
  c.discriminator = ml_collections.ConfigDict(dict(
      hidden_channels=128, channel_mults=(1, 1, 2, 4), norm_groups=32, pool_size=16))
  c.discriminator_optimizer = optimizer.default_optimizer_config(
      b2=0.999, warmup_steps=5_000)

  # Stage 1: proxy codes from a frozen MaskGIT-VQGAN teacher.
  c.teacher = ml_collections.ConfigDict(dict(
      checkpoint="", hidden_channels=128, channel_mult=(1, 1, 2, 2, 4),
      num_res_blocks=2, z_channels=256, codebook_size=1024))

  c.eval.update(dict(num_images=1024, batch_size=64, grid_images=8))

  if variant == "tiny":
    c.model = _model((128, 2, 4), (128, 2, 4), 32, 1024, 12, "vq", patch=4)
    c.model.use_l2_norm = True
    c.model.update(dict(init_kernel_scale=4.0, dead_code_threshold=0.1, dead_code_decay=0.9))
    c.model.pixel_decoder = dict(hidden_channels=32, channel_mult=(1, 2, 2),
                                 num_res_blocks=1, z_channels=16, codebook_size=1024)
    c.recipe = "single_stage"
    c.teacher.update(dict(hidden_channels=32, channel_mult=(1, 2, 2),
                          num_res_blocks=1, z_channels=16, codebook_size=1024))
    c.data.name = "synthetic_shapes"
    c.data.data_dir = "./data"
    c.data.image_size = 32
    c.data.synthetic.resolution = 32
    # One colour per class: the samples of the generator trained on this
    # tokenizer's codes (`make demo`) then show their class even where the
    # CPU-sized tokenizer blurs the outlines.
    c.data.synthetic.class_colours = True
    # Small batches, many updates: a ViT autoencoder learns per step, and on
    # 2 CPU cores 3000 steps of batch 8 take about 6 minutes.
    c.total_steps = 3000
    c.global_batch_size = 8
    c.compute_dtype = "float32"
    c.log_every = 100
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.optimizer.update(dict(lr=1e-3, end_lr=1e-4, warmup_steps=100, weight_decay=1e-4))
    c.discriminator.update(dict(
        hidden_channels=16, channel_mults=(1, 2, 4), norm_groups=8, pool_size=4))
    # Within a CPU demo's few thousand steps the adversarial term only costs
    # PSNR; it is on in every other variant and in the tests.
    c.losses.discriminator_weight = 0.0
    c.losses.discriminator_start = 2000
    c.discriminator_optimizer.update(dict(lr=1e-4, end_lr=1e-5, warmup_steps=50))
    c.eval.update(dict(num_images=256, batch_size=64, grid_images=8))
  else:
    enc, dec, tokens, codebook, token_size, family = RELEASED[variant]
    c.model = _model(enc, dec, tokens, codebook, token_size, family)
    c.recipe = "stage1" if family == "two_stage" else "single_stage"

  c.recipe = options.get("recipe", c.recipe)
  if c.recipe not in ("stage1", "stage2", "single_stage"):
    raise ValueError(f"recipe={c.recipe!r}: expected stage1, stage2 or single_stage")
  if c.recipe in ("stage1", "stage2"):
    c.model.is_legacy = True
    c.model.use_l2_norm = True
  if c.recipe == "stage1" and variant != "tiny":
    c.optimizer.update(dict(b2=0.99, warmup_steps=10_000))
  if c.recipe == "stage2":
    # The released stage-2 recipe: encoder frozen, commitment off, 500k steps.
    c.model.commitment_cost = 0.0
    c.losses.quantizer_weight = 0.0
    if variant != "tiny":
      c.total_steps = 500_000
      c.optimizer.update(dict(b2=0.999, warmup_steps=5_000))
  return c
