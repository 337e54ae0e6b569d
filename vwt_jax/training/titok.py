"""TiTok trainer: stage-1 proxy codes, stage-2 decoder fine-tuning, single stage.

* `stage1`: the legacy decoder predicts the proxy codes of a frozen MaskGIT-VQGAN
  teacher (cross-entropy) plus the quantizer loss.
* `stage2`: encoder, quantizer and latent tokens frozen; the TiTok decoder and
  the MaskGIT-VQGAN pixel decoder learn the pixel objective.
* `single_stage`: the whole VQ or VAE tokenizer learns the pixel objective.

The pixel objective (reconstruction + perceptual + adversarial with LeCam) is
computed with the shared modules in `vwt_jax.losses`, on images in [0, 1] as
the official losses are, so the recipe's loss weights carry over.
"""

from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vwt_jax.families import titok as titok_family
from vwt_jax.losses import classification
from vwt_jax.losses import perceptual as perceptual_lib
from vwt_jax.losses import quantizer as quantizer_losses
from vwt_jax.models import discriminator as discriminator_lib
from vwt_jax.models import maskgit_vqgan
from vwt_jax.models import quantizers
from vwt_jax.training import loop
from vwt_jax.training import tokenizer_common

# Parameters stage 2 keeps frozen, as the official `finetune_decoder` path does.
STAGE2_FROZEN = (r"^encoder/", r"^quantize/", r"^latent_tokens$")


def scale_kernels(params: Any, scale: float) -> Any:
  """Multiplies every weight matrix / conv kernel (boxed or not) by `scale`.

  The official init (normal, std 0.02) is sized for the released widths
  (512-1024); tiny models need larger weights for the latent tokens to see the
  image at all at initialisation.
  """
  def scaled(value):
    if isinstance(value, nn.meta.AxisMetadata):
      return value.replace_boxed(value.unbox(apply_constraint=False) * scale)
    return value * scale
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict(
      {k: scaled(v) if k.endswith("kernel") else v for k, v in flat.items()}, sep="/")


class TiTokTrainer(tokenizer_common.TokenizerTrainer):
  """TiTok's losses, recipes, code restart and discriminator on the generic trainer."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    super().__init__(config, workdir, mesh)
    self.recipe = config.recipe
    self.cfg = titok_family.model_config(config)
    self.model = titok_family.build(self.cfg)
    size = self.cfg.image_size
    self._dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    self.restart_codes = (self.cfg.quantize_mode == "vq" and self.recipe != "stage2"
                          and config.train.dead_code_threshold > 0)
    self.use_gan = self.recipe != "stage1" and config.losses.discriminator_weight > 0
    if self.use_gan:
      d = config.discriminator
      self.adversary = tokenizer_common.Adversary(
          discriminator_lib.NLayerDiscriminator(
              hidden_channels=d.hidden_channels, channel_mults=tuple(d.channel_mults),
              norm_groups=d.norm_groups, pool_size=d.pool_size,
              dtype=self.cfg.dtype, param_dtype=self.cfg.param_dtype),
          config, self._dummy, use_lecam=True)

    self.perceptual = None
    if self.recipe != "stage1" and config.losses.perceptual_weight > 0:
      self.perceptual = perceptual_lib.make_perceptual_loss(
          config.losses.perceptual, config.losses.perceptual_weights)

    self.teacher = None
    if self.recipe == "stage1":
      if not config.teacher.checkpoint:
        raise ValueError(
            "recipe=stage1 needs proxy codes from a MaskGIT-VQGAN teacher: set "
            "config.teacher.checkpoint to maskgit-vqgan-imagenet-f16-256.bin (or any "
            "state dict in its layout) and config.teacher.* to its architecture")
      teacher_cfg, teacher_params = titok_family.load_vqgan(config.teacher, size)
      grid = size // self.cfg.dec_patch_size
      factor = 2 ** (teacher_cfg.num_resolutions - 1)
      if size // factor != grid:
        raise ValueError(
            f"config.teacher: its {factor}x downsampling gives a {size // factor}^2 code "
            f"grid but the TiTok decoder predicts {grid}^2 proxy codes")
      self.teacher = maskgit_vqgan.MaskGitVQGAN(teacher_cfg)
      teacher_params = jax.device_put(teacher_params, self.replicated)
    self.frozen = {"teacher": teacher_params if self.teacher else None,
                   "perceptual": self.perceptual}
    self.setup_state(STAGE2_FROZEN if self.recipe == "stage2" else ())
    self._reconstruct = jax.jit(
        self._reconstruct_fn,
        in_shardings=(self.param_shardings, self.batch_sharding, self.replicated),
        out_shardings=self.batch_sharding)

  # -- state ------------------------------------------------------------------

  def init_params(self, rng):
    params_rng, _ = jax.random.split(rng)
    params = self.model.init(params_rng, self._dummy)["params"]
    if self.config.train.init_kernel_scale != 1.0:
      params = scale_kernels(params, self.config.train.init_kernel_scale)
    return params

  def init_extra(self, rng):
    extra = {}
    if self.restart_codes:
      # Typed explicitly: a weak-typed leaf would differ from its restored
      # (strong) self and make every resumed run compile the step again.
      extra["code_usage"] = jnp.full((self.cfg.codebook_size,), 1.0 / self.cfg.codebook_size,
                                     jnp.float32)
    if self.use_gan:
      extra.update(self.adversary.init(jax.random.split(rng)[1]))
    return extra

  def pretrained_params(self):
    if not self.config.init_from:
      return None
    params = titok_family.load_params(self.config.init_from, self.config)
    if self.recipe == "stage2" and self.config.teacher.checkpoint:
      # Stage 2 starts its pixel decoder from the released MaskGIT-VQGAN.
      _, vqgan = titok_family.load_vqgan(self.config.teacher, self.cfg.image_size)
      params = dict(params, pixel_decoder=vqgan["decoder"], pixel_quantize=vqgan["quantize"])
    return params

  # -- the loss and the extra state ---------------------------------------------

  def loss(self, params, batch, rng, context, frozen):
    losses = self.config.losses
    images = batch["image"]
    metrics = {}
    if self.recipe == "stage1":
      codes, _ = self.teacher.apply({"params": frozen["teacher"]}, images,
                                    method=self.teacher.encode)
      _, aux = self.model.apply({"params": params}, images, train=True)
      ce = classification.proxy_code_cross_entropy(aux["proxy_logits"], codes)
      vq = quantizer_losses.vq_losses(aux["z"], aux["z_q_raw"], self.cfg.commitment_cost)
      loss = ce + losses.quantizer_weight * vq["quantizer_loss"]
      metrics.update(proxy_ce=ce, quantizer_loss=vq["quantizer_loss"],
                     proxy_accuracy=jnp.mean(
                         (jnp.argmax(aux["proxy_logits"], -1) == codes).astype(jnp.float32)))
      recon = None
    else:
      recon, aux = self.model.apply({"params": params}, images, train=True, rng=rng)
      loss, pixel_metrics = tokenizer_common.generator_loss(
          losses, images, recon, context["step"], perceptual=frozen["perceptual"],
          fake_logits=self.fake_logits(context),
          unit_interval=True)
      metrics.update(pixel_metrics)
      if self.cfg.quantize_mode == "vq":
        vq = quantizer_losses.vq_losses(aux["z"], aux["z_q_raw"], self.cfg.commitment_cost)
        loss += losses.quantizer_weight * vq["quantizer_loss"]
        metrics["quantizer_loss"] = vq["quantizer_loss"]
      else:
        kl = jnp.sum(quantizer_losses.kl_divergence(
            aux["posterior_mean"], aux["posterior_logvar"])) / images.shape[0]
        loss += losses.kl_weight * kl
        metrics["kl"] = kl
    if self.cfg.quantize_mode == "vq":
      metrics.update(codebook_usage=aux["codebook_usage"],
                     codebook_perplexity=aux["codebook_perplexity"])
    metrics["loss"] = loss
    extras = {"recon": recon, **{k: aux[k] for k in ("z", "code_counts") if k in aux}}
    return loss, (metrics, extras)

  def update_extra(self, state, new, batch, rng, extras, frozen):
    metrics, ok = {}, jnp.array(True)
    if self.restart_codes:
      params = new["params"]
      codebook, new["code_usage"], restarted = quantizers.restart_dead_codes(
          params["quantize"]["embedding"], state["code_usage"], extras["z"],
          extras["code_counts"], jax.random.fold_in(rng, 1),
          decay=self.config.train.dead_code_decay,
          threshold=self.config.train.dead_code_threshold)
      new["params"] = dict(params, quantize=dict(params["quantize"], embedding=codebook))
      metrics["codes_restarted"] = restarted
    if self.use_gan:
      d_metrics, ok = self.discriminator_step(state, new, batch, rng, extras["recon"])
      metrics.update(d_metrics)
    return metrics, ok

  def title(self):
    return f"TiTok {self.config.variant} ({self.recipe})"

  def reconstruct_batch(self, params, images, rng):
    return self.model.apply({"params": params}, images, rng=rng)[0]

  # -- evaluation ---------------------------------------------------------------

  def _reconstruct_fn(self, params, images, frozen):
    if self.recipe == "stage1":
      # No pixels yet: show the teacher's rendering of the predicted proxy codes.
      _, aux = self.model.apply({"params": params}, images)
      proxy = jnp.argmax(aux["proxy_logits"], axis=-1)
      recon = self.teacher.apply({"params": frozen["teacher"]}, proxy,
                                 method=self.teacher.decode_codes)
      return jnp.clip(recon, -1.0, 1.0), aux["indices"].astype(jnp.int32)
    return titok_family.reconstruct(self.model, params, images)

  def reconstruct_images(self, params, images):
    """(reconstructions in [-1, 1], the TiTok codes (B, N) or None for a VAE)."""
    return self._reconstruct(params, images, self.frozen)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains TiTok and writes `summary.txt` next to the checkpoints."""
  return loop.run(TiTokTrainer(config, workdir))
