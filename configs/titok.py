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

from vwt_jax import config_common
from vwt_jax.models.maskgit_vqgan import MaskGitVQGANConfig
from vwt_jax.models.titok import TiTokConfig

# name: (encoder size, decoder size, latent tokens, codebook, token size, family);
# sizes are `models/titok.VIT_SIZES`.
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
RECIPES = ("stage1", "stage2", "single_stage")
# The demo model's MaskGIT-VQGAN (pixel decoder, stage-1 teacher) at 32 px.
TINY_VQGAN = MaskGitVQGANConfig(hidden_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                                z_channels=16, codebook_size=1024)


def _model(variant: str, recipe: str) -> TiTokConfig:
  if variant == "tiny":
    return TiTokConfig(
        image_size=32, enc_width=128, enc_depth=2, enc_heads=4, dec_width=128, dec_depth=2,
        dec_heads=4, enc_patch_size=4, dec_patch_size=4, num_latent_tokens=32,
        codebook_size=1024, token_size=12, use_l2_norm=True, quantize_mode="vq",
        is_legacy=recipe != "single_stage", finetune_decoder=recipe == "stage2",
        pixel_decoder=TINY_VQGAN)
  enc, dec, tokens, codebook, token_size, family = RELEASED[variant]
  two_stage = family == "two_stage" or recipe != "single_stage"
  return TiTokConfig.from_sizes(
      enc, dec, image_size=256, num_latent_tokens=tokens, codebook_size=codebook or 1,
      token_size=token_size, use_l2_norm=two_stage,
      quantize_mode="vae" if family == "vae" else "vq",
      is_legacy=two_stage, finetune_decoder=two_stage and recipe != "stage1",
      pixel_decoder=MaskGitVQGANConfig())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, options = config_common.parse_arg(arg, "configs/titok.py", ("recipe",))
  config_common.check_variant(variant, ("tiny", *RELEASED), "configs/titok.py")
  two_stage = variant != "tiny" and RELEASED[variant][5] == "two_stage"
  default = "stage1" if two_stage else "single_stage"
  recipe = options.get("recipe", default)
  if recipe not in RECIPES:
    raise ValueError(f"recipe={recipe!r}: expected one of {RECIPES}")
  c = config_common.base_config("titok", variant, total_steps=1_000_000, global_batch_size=256,
                                ema_decay=0.999)
  c.recipe = recipe

  c.data = config_common.image_data()
  c.data.name = "imagenet2012"
  model = _model(variant, recipe)
  c.model = config_common.model_section(model)
  # One value: the pipeline's crops are the model's input.
  c.data.image_size = c.model.get_ref("image_size")

  # Training knobs of the tokenizer that are not part of the model.
  c.train = ml_collections.ConfigDict(dict(
      # Multiplies the official N(0, 0.02) kernel init (sized for widths ~1000).
      init_kernel_scale=1.0,
      # Codebook restart: codes whose usage EMA falls below threshold/K are reset
      # to batch latents (0 disables; the official recipes do not use it).
      dead_code_threshold=0.0, dead_code_decay=0.99))

  c.optimizer = config_common.optimizer()

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
  c.discriminator_optimizer = config_common.optimizer(b2=0.999, warmup_steps=5_000)

  # Stage 1: proxy codes from a frozen MaskGIT-VQGAN teacher (its file and
  # `MaskGitVQGANConfig` fields); stage 2 starts its pixel decoder from it.
  c.teacher = config_common.model_section(model.pixel_decoder, checkpoint="")

  c.eval.update(dict(num_images=1024, batch_size=64, grid_images=8))

  if variant == "tiny":
    c.train.update(dict(init_kernel_scale=4.0, dead_code_threshold=0.1, dead_code_decay=0.9))
    c.data.name = "synthetic_shapes"
    c.data.data_dir = "./data"
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

  if recipe == "stage1" and variant != "tiny":
    c.optimizer.update(dict(b2=0.99, warmup_steps=10_000))
  if recipe == "stage2":
    # The released stage-2 recipe: encoder frozen, commitment off, 500k steps.
    c.model.commitment_cost = 0.0
    c.losses.quantizer_weight = 0.0
    if variant != "tiny":
      c.total_steps = 500_000
      c.optimizer.update(dict(b2=0.999, warmup_steps=5_000))
  return c
