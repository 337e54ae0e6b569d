"""LlamaGen VQGAN tokenizer trainer (`vq_train.py` / `vq_loss.py` recipe).

Generator: MSE + perceptual + 0.5 * hinge adversarial (from
`discriminator_start`) + codebook + commitment (+ entropy, off by default),
the pixel terms through `tokenizer_common.generator_loss` on [-1, 1] images
as the reference computes them. Discriminator: PatchGAN with BatchNorm, hinge
loss, same gate; its BatchNorm statistics live in (and are checkpointed with)
the train state. Both optimizers are Adam (AdamW with weight decay 0).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vwt_jax.families import vqgan as vqgan_family
from vwt_jax.losses import perceptual as perceptual_lib
from vwt_jax.losses import quantizer as quantizer_losses
from vwt_jax.models import discriminator as discriminator_lib
from vwt_jax.training import loop
from vwt_jax.training import tokenizer_common


class VQGANTrainer(tokenizer_common.TokenizerTrainer):
  """The VQGAN's losses and discriminator on the generic trainer."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    super().__init__(config, workdir, mesh)
    self.cfg = vqgan_family.model_config(config)
    self.model = vqgan_family.build(self.cfg)
    size = config.data.image_size
    if size % self.cfg.downsample_factor:
      raise ValueError(f"data.image_size={size} is not a multiple of the tokenizer's "
                       f"downsampling factor {self.cfg.downsample_factor}")
    self._dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    self.use_gan = config.losses.discriminator_weight > 0
    if self.use_gan:
      d = config.discriminator
      self.adversary = tokenizer_common.Adversary(
          discriminator_lib.PatchGANDiscriminator(
              ndf=d.ndf, n_layers=d.n_layers, dtype=self.cfg.dtype,
              param_dtype=self.cfg.param_dtype),
          config, self._dummy, use_lecam=False, batch_stats=True,
          apply_kwargs={"train": True})
    perceptual = None
    if config.losses.perceptual_weight > 0:
      perceptual = perceptual_lib.make_perceptual_loss(
          config.losses.perceptual, config.losses.perceptual_weights)
    self.frozen = {"perceptual": perceptual}
    self.setup_state()
    self._reconstruct = jax.jit(
        lambda params, images: vqgan_family.reconstruct(self.model, params, images),
        in_shardings=(self.param_shardings, self.batch_sharding),
        out_shardings=self.batch_sharding)

  # -- state ------------------------------------------------------------------

  def init_params(self, rng):
    params_rng, _ = jax.random.split(rng)
    return self.model.init(params_rng, self._dummy)["params"]

  def init_extra(self, rng):
    return self.adversary.init(jax.random.split(rng)[1]) if self.use_gan else {}

  def pretrained_params(self):
    # Fine-tuning (the reference's --finetune): weights only, fresh optimizers.
    if not self.config.init_from:
      return None
    return vqgan_family.load_params(self.config.init_from, self.config)

  # -- the loss and the discriminator -------------------------------------------

  def loss(self, params, batch, rng, context, frozen):
    images = batch["image"]
    recon, aux = self.model.apply({"params": params}, images, train=True,
                                  rngs={"dropout": rng})
    loss, metrics = tokenizer_common.generator_loss(
        self.config.losses, images, recon, context["step"], perceptual=frozen["perceptual"],
        fake_logits=self.fake_logits(context),
        unit_interval=False)
    # The reference adds these unweighted (its `codebook_weight` is unused).
    vq = quantizer_losses.vq_losses(aux["z"], aux["z_q_raw"], self.cfg.commit_loss_beta)
    loss += vq["quantizer_loss"]
    metrics.update(vq_loss=vq["codebook"], commit_loss=vq["commitment"],
                   codebook_usage=aux["codebook_usage"],
                   codebook_perplexity=aux["codebook_perplexity"])
    if self.cfg.entropy_loss_ratio:
      entropy = quantizer_losses.entropy_loss(aux["distances"], self.cfg.entropy_temperature)
      loss += self.cfg.entropy_loss_ratio * entropy
      metrics["entropy_loss"] = entropy
    metrics["loss"] = loss
    return loss, (metrics, {"recon": recon})

  def update_extra(self, state, new, batch, rng, extras, frozen):
    if not self.use_gan:
      return {}, jnp.array(True)
    return self.discriminator_step(state, new, batch, rng, extras["recon"])

  # -- evaluation ---------------------------------------------------------------

  def title(self):
    return f"LlamaGen VQGAN {self.config.variant}"

  def reconstruct_images(self, params, images):
    """(reconstructions in [-1, 1], codes (B, h*w))."""
    return self._reconstruct(params, images)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the VQGAN tokenizer and writes `summary.txt` next to the checkpoints."""
  return loop.run(VQGANTrainer(config, workdir))
