"""What the tokenizer trainers (TiTok, VQGAN) share.

The pixel objective. Generator side: reconstruction + perceptual + gated adversarial term, from the
losses in `vwt_jax.losses`. Discriminator side: an `Adversary` owns the
discriminator's state entries (params, optimizer, optional BatchNorm
statistics and LeCam EMAs), their shardings, and the gated update.
Bottleneck terms (VQ, KL, entropy) stay with each trainer.

Also the reconstruction evaluation and the run summary.
"""

import functools
import os
from typing import Any, Callable, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vwt_jax.core import images as images_lib
from vwt_jax.data import pipeline
from vwt_jax.evaluation import reconstruction as recon_eval
from vwt_jax.losses import adversarial
from vwt_jax.losses import reconstruction
from vwt_jax.training import optimizer as optimizer_lib
from vwt_jax.training import train_state
from vwt_jax.training import trainer as trainer_lib


def generator_loss(losses: ml_collections.ConfigDict, images: jax.Array, recon: jax.Array,
                   step: jax.Array, *, perceptual: Optional[Callable],
                   fake_logits: Optional[Callable[[jax.Array], jax.Array]],
                   unit_interval: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted reconstruction + perceptual + adversarial loss on NHWC [-1, 1] images.

  Args:
    losses: `config.losses` (reconstruction, *_weight, discriminator_start/loss).
    images: targets.
    recon: reconstructions.
    step: the (traced) train step, for the discriminator warm-up gate.
    perceptual: `fn(images, recon)` or None (term off).
    fake_logits: discriminator logits of `recon`, or None (no GAN).
    unit_interval: compute the reconstruction loss on [0, 1] images (TiTok's
      official losses do; LlamaGen's MSE sees [-1, 1]), so recipe weights carry over.
  """
  target, prediction = ((images + 1) / 2, (recon + 1) / 2) if unit_interval else (images, recon)
  rec = reconstruction.reconstruction_loss(losses.reconstruction, target, prediction)
  loss = losses.reconstruction_weight * rec
  metrics = {"reconstruction_loss": rec}
  if perceptual is not None:
    p = perceptual(images, recon)
    loss += losses.perceptual_weight * p
    metrics["perceptual_loss"] = p
  if fake_logits is not None:
    g = adversarial.generator_loss(losses.discriminator_loss, fake_logits(recon))
    loss += losses.discriminator_weight * adversarial.adopt_weight(
        step, losses.discriminator_start) * g
    metrics["generator_adv_loss"] = g
  return loss, metrics


class Adversary:
  """A discriminator, its optimizer and its half of the GAN game.

  The module is applied as `module.apply(variables, x, **apply_kwargs)` and
  returns (logits, aux); with `batch_stats`, its BatchNorm statistics live in
  the train state (`disc_batch_stats`) and are checkpointed with it.
  """

  def __init__(self, module: nn.Module, config: ml_collections.ConfigDict, dummy: jax.Array,
               *, use_lecam: bool, batch_stats: bool = False,
               apply_kwargs: Optional[dict] = None):
    self.module, self.losses = module, config.losses
    self.use_lecam, self.batch_stats = use_lecam, batch_stats
    self.apply_kwargs = apply_kwargs or {}
    self._dummy = dummy
    abstract = nn.meta.unbox(jax.eval_shape(self._init_params, jax.random.key(0)))
    self.tx, _ = optimizer_lib.make_optimizer(
        config.discriminator_optimizer, abstract, config.total_steps)

  def _init_params(self, rng):
    return self.module.init(rng, self._dummy)["params"]

  def init(self, rng) -> dict[str, Any]:
    """The discriminator's state entries (parameters boxed with their logical names)."""
    params = self._init_params(rng)
    state = {"disc_params": params, "disc_opt_state": self.tx.init(params)}
    if self.batch_stats:
      # Per-channel statistics are tiny: unnamed, hence replicated.
      state["disc_batch_stats"] = self.module.init(
          jax.random.key(0), self._dummy, **self.apply_kwargs)["batch_stats"]
    if self.use_lecam:
      state["lecam"] = adversarial.lecam_init()
    return state

  def apply(self, params, batch_stats, x) -> tuple[jax.Array, Any]:
    """(logits, updated batch statistics or None)."""
    if not self.batch_stats:
      return self.module.apply({"params": params}, x, **self.apply_kwargs)[0], None
    (logits, _), updated = self.module.apply(
        {"params": params, "batch_stats": batch_stats}, x, mutable=["batch_stats"],
        **self.apply_kwargs)
    return logits, updated["batch_stats"]

  def fake_logits(self, state: dict[str, Any]) -> Callable[[jax.Array], jax.Array]:
    """Logits for the generator loss; statistics updates are dropped there (the
    discriminator step updates them on real and fake batches)."""
    return lambda x: self.apply(state["disc_params"], state.get("disc_batch_stats"), x)[0]

  def update(self, state: dict[str, Any], new: dict[str, Any], images: jax.Array,
             recon: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    """One discriminator step on (images, stop-gradient recon); writes into `new`.

    Real and fake batches go through the discriminator separately, as in the
    references (it matters for BatchNorm). Returns (metrics, all finite).
    """
    losses = self.losses
    gate = adversarial.adopt_weight(state["step"], losses.discriminator_start)

    def d_loss_fn(disc_params):
      real, stats = self.apply(disc_params, state.get("disc_batch_stats"), images)
      fake, stats = self.apply(disc_params, stats, recon)
      d = adversarial.discriminator_loss(losses.discriminator_loss, real, fake)
      total = d
      lecam = None
      if self.use_lecam:
        lecam = adversarial.lecam_loss(real, fake, state["lecam"])
        total = d + losses.lecam_weight * lecam
      return gate * total, (d, lecam, real, fake, stats)

    (d_total, (d, lecam, real, fake, stats)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(state["disc_params"])
    updates, disc_opt = self.tx.update(d_grads, state["disc_opt_state"], state["disc_params"])
    updated = {"disc_params": jax.tree.map(jnp.add, state["disc_params"], updates),
               "disc_opt_state": disc_opt}
    if self.batch_stats:
      updated["disc_batch_stats"] = stats
    if self.use_lecam:
      updated["lecam"] = adversarial.lecam_update(state["lecam"], real, fake,
                                                  losses.lecam_decay)
    # Like the references, the discriminator (optimizer, weight decay, EMAs,
    # statistics) does not move at all before `discriminator_start`.
    current = {k: state[k] for k in updated}
    new.update(train_state.keep_if(gate > 0, updated, current))
    metrics = {"discriminator_loss": d, "logits_real": jnp.mean(real),
               "logits_fake": jnp.mean(fake)}
    if self.use_lecam:
      metrics["lecam_loss"] = lecam
    return metrics, jnp.isfinite(d_total) & train_state.all_finite(d_grads)


class TokenizerTrainer(trainer_lib.Trainer):
  """What the TiTok and VQGAN trainers share: image batches, the discriminator's
  half of the step, reconstruction evaluation. Subclasses set `use_gan` and,
  when it is on, `adversary`."""

  use_gan = False

  def train_iterator(self):
    ds = pipeline.create_image_dataset(
        self.config.data, split=self.config.data.train_split,
        global_batch_size=self.config.global_batch_size, seed=self.config.seed, train=True)
    return iter(ds)

  def context(self, state, batch):
    del batch
    return {"step": state["step"],
            "disc": {k: state[k] for k in ("disc_params", "disc_batch_stats") if k in state}}

  def fake_logits(self, context):
    """The discriminator for the generator's adversarial term, or None (no GAN)."""
    return self.adversary.fake_logits(context["disc"]) if self.use_gan else None

  def discriminator_step(self, state, new, batch, rng, recon):
    """`Adversary.update` on the batch and its reconstructions (metrics, finite)."""
    if self.config.grad_accum_steps > 1:
      # `recon` holds the last micro-batch only: reconstruct the whole batch.
      recon = self.reconstruct_batch(state["params"], batch["image"], rng)
    return self.adversary.update(state, new, batch["image"], jax.lax.stop_gradient(recon))

  def summary_notes(self, result):
    if "psnr" not in result["eval"]:
      return []
    return [f"held-out PSNR: {result['eval']['psnr']:.2f} dB over "
            f"{int(result['eval']['num_images'])} images (reconstructions.png)"]

  def reconstruct_batch(self, params, images, rng):
    del rng
    return self.model.apply({"params": params}, images)[0]

  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    return evaluate(self, state, step, writer)


@functools.lru_cache(maxsize=1)
def _eval_networks(mesh, inception_weights: str, lpips_weights: str, lpips_net: str,
                   batch_size: int) -> recon_eval.Networks:
  """Loaded once per process: the evaluation runs every `eval_every` steps."""
  return recon_eval.load_networks(mesh, inception_weights=inception_weights,
                                  lpips_weights=lpips_weights, lpips_net=lpips_net,
                                  batch_size=batch_size)


def evaluate(trainer, state, step: int, writer) -> dict[str, float]:
  """Reconstruction metrics on the eval split and `reconstructions.png` in the workdir.

  PSNR, SSIM and codebook usage always; LPIPS and rFID (sFID, IS, precision,
  recall) when `config.eval.lpips_weights` / `config.eval.inception_weights`
  are set, over the first `config.eval.num_images` images. `trainer` has
  `config`, `mesh`, `workdir`, `cfg.codebook_size`, `eval_params(state)` and
  `reconstruct_images(params, images)` -> (reconstructions, codes or None).
  """
  config = trainer.config
  ev = config.eval
  ds = pipeline.create_image_dataset(
      config.data, split=config.data.eval_split, global_batch_size=ev.batch_size,
      seed=config.seed, train=False)
  params = trainer.eval_params(state)
  # Runs written before these keys existed have none.
  networks = _eval_networks(trainer.mesh, ev.get("inception_weights", ""),
                            ev.get("lpips_weights", ""), ev.get("lpips_net", "vgg"),
                            ev.batch_size)
  for note in networks.missing():
    logging.info("eval: %s", note)
  result = recon_eval.evaluate_reconstruction(
      lambda images: trainer.reconstruct_images(params, images), ds, trainer.mesh,
      num_images=ev.num_images, grid_images=ev.grid_images,
      codebook_size=trainer.cfg.codebook_size, networks=networks)
  grid = result.pop("grid")
  images_lib.save_grid(grid, os.path.join(trainer.workdir, "reconstructions.png"))
  writer.write_images(step, {"reconstructions": grid[None]})
  logging.info("eval at step %d: %s", step, result)
  return result



