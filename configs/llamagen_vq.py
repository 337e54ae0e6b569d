r"""LlamaGen VQGAN image tokenizer training (arXiv 2406.06525, `vq_train.py`).

Launch (any variant; every field can be overridden):

  python -m vwt_jax.main --config configs/llamagen_vq.py:tiny --workdir /tmp/vq_tiny
  python -m vwt_jax.main --config configs/llamagen_vq.py:vq16 --workdir gs://bucket/vq16 \
      --config.data.data_dir gs://bucket/tfds
  # fine-tune the released tokenizer (the reference's --finetune --disc-start 0)
  python -m vwt_jax.main --config configs/llamagen_vq.py:vq16 --workdir /tmp/vq16_ft \
      --config.init_from vq_ds16_c2i.pt --config.losses.discriminator_start 0

The argument is `VARIANT[,image_size=N]`. Variants:
  tiny   a small VQGAN on the embedded 32x32 synthetic shapes (`make demo`, CPU)
  vq16   VQ-16 (ch_mult 1,1,2,2,4; 16x downsampling), the paper recipe
  vq8    VQ-8 (ch_mult 1,2,2,4; 8x downsampling), the paper recipe

Paper recipe: ImageNet 256px, global batch 128, 40 epochs, Adam (no weight
decay) lr 1e-4, betas (0.9, 0.95), gradient clip 1.0 for both networks;
MSE + perceptual + 0.5 * hinge GAN from step 20k + VQ/commitment losses.

Every `eval_every` steps the first `eval.num_images` images of the eval split
are reconstructed: PSNR, SSIM and codebook usage always; LPIPS and rFID (with
sFID, precision/recall, IS) once `--config.eval.lpips_weights` /
`--config.eval.inception_weights` name converted weight files (.npz from
`vwt_jax.conversion.lpips` / `vwt_jax.conversion.inception`).

The perceptual term is LPIPS-VGG v0.1 as in the reference (`losses.perceptual
= 'lpips'`): `losses.perceptual_weights` names the .npz written by
`python -m vwt_jax.conversion.lpips --net vgg ...`; without it the term is off
(a warning says so).
"""

import ml_collections

from vwt_jax import config_common
from vwt_jax.models.vqgan import VQGANConfig

# Config variant: the released tokenizer (`models/vqgan.VARIANTS`).
VARIANTS = {"vq16": "VQ-16", "vq8": "VQ-8"}
IMAGENET_TRAIN_IMAGES = 1_281_167


def _adam(**overrides) -> ml_collections.ConfigDict:
  """Adam (AdamW with weight decay 0) at a constant learning rate, clip 1.0."""
  return config_common.optimizer(**{
      "lr": 1e-4, "end_lr": 1e-4, "schedule": "constant", "warmup_steps": 0,
      "b1": 0.9, "b2": 0.95, "weight_decay": 0.0, "grad_clip_norm": 1.0, **overrides})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, options = config_common.parse_arg(arg, "configs/llamagen_vq.py", ("image_size",))
  config_common.check_variant(variant, ("tiny", *VARIANTS), "configs/llamagen_vq.py")
  # 40 epochs of ImageNet-1k train at batch 128 (the sampler drops the last
  # batch); the reference's EMA is optional and off by default.
  c = config_common.base_config("vqgan", variant, total_steps=40 * (IMAGENET_TRAIN_IMAGES // 128),
                       global_batch_size=128, ema_decay=0.0)

  c.data = config_common.image_data()
  c.data.name = "imagenet2012"
  c.data.image_size = 256

  c.model = config_common.model_section(VQGANConfig.named(VARIANTS.get(variant, "VQ-16")))

  c.optimizer = _adam()
  c.discriminator_optimizer = _adam()

  c.losses = ml_collections.ConfigDict(dict(
      reconstruction="l2", reconstruction_weight=1.0,
      perceptual="lpips", perceptual_weight=1.0, perceptual_weights="",
      discriminator_weight=0.5, discriminator_start=20_000, discriminator_loss="hinge",
  ))
  c.discriminator = ml_collections.ConfigDict(dict(ndf=64, n_layers=3))

  c.eval.update(dict(num_images=1024, batch_size=64, grid_images=8))

  if variant == "tiny":
    c.model.update(dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32,
                        codebook_size=512))
    c.data.name = "synthetic_shapes"
    c.data.data_dir = "./data"
    c.data.image_size = 32
    c.data.synthetic.resolution = 32
    # The `make demo` dataset: upright shapes of random colour, size and
    # position, so that a class shows only by its outline.
    c.data.synthetic.upright = True
    # Batch 16 for 700 steps: under 3 minutes on 2 CPU cores. Held-out PSNR
    # levels off near 21 dB from here; outlines keep sharpening with more
    # steps (at 1200, 87.5 % of the held-out reconstructions keep their class
    # for the demo's classifier, which gets 100 % of the originals right).
    c.total_steps = 700
    c.global_batch_size = 16
    c.compute_dtype = "float32"
    c.log_every = 100
    c.eval_every = 700
    c.checkpoint_every = 700
    c.optimizer.lr = c.optimizer.end_lr = 3e-4
    c.discriminator.update(dict(ndf=16, n_layers=3))
    # Within a CPU demo's minutes the adversarial term only costs PSNR; it is
    # on in the paper variants and in the tests.
    c.losses.update(dict(discriminator_weight=0.0, discriminator_start=1500))
    c.eval.update(dict(num_images=256, batch_size=64, grid_images=8))
  if "image_size" in options:
    # E.g. 384 for the 24x24 codes of the released 384-px generators.
    c.data.image_size = int(options["image_size"])
  return c
