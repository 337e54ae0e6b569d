"""LlamaGen VQGAN tokenizer trainer (`vq_train.py` / `vq_loss.py` recipe).

Generator: MSE + perceptual + 0.5 * hinge adversarial (from
`discriminator_start`) + codebook + commitment (+ entropy, off by default),
the pixel terms through `tokenizer_common.generator_loss` on [-1, 1] images
as the reference computes them. Discriminator: PatchGAN with BatchNorm, hinge
loss, same gate; its BatchNorm statistics live in (and are checkpointed with)
the train state. Both optimizers are Adam (AdamW with weight decay 0).
"""

import functools
import time
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vwt_jax.conversion import torch_state
from vwt_jax.conversion import vqgan as vqgan_conversion
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import pipeline
from vwt_jax.losses import perceptual as perceptual_lib
from vwt_jax.losses import quantizer as quantizer_losses
from vwt_jax.models import discriminator as discriminator_lib
from vwt_jax.models import vqgan as vqgan_lib
from vwt_jax.training import loop
from vwt_jax.training import optimizer as optimizer_lib
from vwt_jax.training import tokenizer_common
from vwt_jax.training import train_state


def model_config(config: ml_collections.ConfigDict) -> vqgan_lib.VQGANConfig:
  """`config.model` (+ the run's dtypes) -> VQGANConfig."""
  m = config.model
  return vqgan_lib.VQGANConfig(
      ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
      z_channels=m.z_channels, codebook_size=m.codebook_size,
      codebook_embed_dim=m.codebook_embed_dim, codebook_l2_norm=m.codebook_l2_norm,
      commit_loss_beta=m.commit_loss_beta, entropy_loss_ratio=m.entropy_loss_ratio,
      entropy_temperature=m.entropy_temperature, dropout_p=m.dropout_p,
      dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.dtype(config.param_dtype))


def load_pretrained(path: str, config: ml_collections.ConfigDict) -> Any:
  """Parameters from our run (a workdir or step folder) or an official state dict
  (`vq_ds16_c2i.pt`: {'model': sd, ...}, or any raw state dict file)."""
  if epath.Path(path).is_dir():
    key = "ema_params" if config.ema_decay else "params"
    try:
      return checkpoint_lib.load_state_subtree(path, key)
    except KeyError:
      return checkpoint_lib.load_state_subtree(path, "params")
  return vqgan_conversion.convert_vqgan(torch_state.load_state_dict(path), model_config(config))


class VQGANTrainer:
  """Builds the state, the jitted train step and the evaluation of the VQGAN."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    self.config = config
    self.workdir = workdir
    self.mesh = mesh or sharding_lib.create_mesh(config.mesh_shape)
    self.rules = sharding_lib.normalize_rules(config.logical_axis_rules)
    self.cfg = model_config(config)
    self.model = vqgan_lib.VQModel(self.cfg)
    if config.global_batch_size % sharding_lib.data_parallel_size(self.mesh):
      raise ValueError(
          f"global_batch_size={config.global_batch_size} must divide evenly over the "
          f"{sharding_lib.data_parallel_size(self.mesh)} data-parallel devices")
    size = config.data.image_size
    if size % self.cfg.downsample_factor:
      raise ValueError(f"data.image_size={size} is not a multiple of the tokenizer's "
                       f"downsampling factor {self.cfg.downsample_factor}")
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)

    self.abstract_params, self.param_shardings, self._init_params = (
        train_state.init_params(self.model, jax.random.key(0), dummy, mesh=self.mesh,
                                rules=self.rules))
    abstract = nn.meta.unbox(self.abstract_params)
    self.tx, self.schedule = optimizer_lib.make_optimizer(
        config.optimizer, abstract, config.total_steps)
    repl = sharding_lib.replicated(self.mesh)
    self.state_shardings = {
        "step": repl, "params": self.param_shardings,
        "opt_state": train_state.opt_state_shardings(
            self.tx, abstract, self.param_shardings, self.mesh)}
    if config.ema_decay:
      self.state_shardings["ema_params"] = self.param_shardings

    self.use_gan = config.losses.discriminator_weight > 0
    if self.use_gan:
      d = config.discriminator
      self.adversary = tokenizer_common.Adversary(
          discriminator_lib.PatchGANDiscriminator(
              ndf=d.ndf, n_layers=d.n_layers, dtype=self.cfg.dtype,
              param_dtype=self.cfg.param_dtype),
          config, dummy, mesh=self.mesh, rules=self.rules, use_lecam=False,
          batch_stats=True, apply_kwargs={"train": True})
      self.state_shardings.update(self.adversary.shardings)

    perceptual = None
    if config.losses.perceptual_weight > 0:
      perceptual = perceptual_lib.make_perceptual_loss(
          config.losses.perceptual, config.losses.perceptual_weights)
    # The frozen network enters the compiled step as an argument, not as constants.
    self.frozen = {"perceptual": perceptual}
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self._train_step = jax.jit(
        self._train_step_fn,
        in_shardings=(self.state_shardings, self.batch_sharding, repl, repl),
        out_shardings=(self.state_shardings, repl),
        donate_argnums=(0,))
    self._reconstruct = jax.jit(
        self._reconstruct_fn, in_shardings=(self.param_shardings, self.batch_sharding),
        out_shardings=self.batch_sharding)

  # -- state ------------------------------------------------------------------

  def _init_state(self, rng):
    params_rng, disc_rng = jax.random.split(rng)
    params = self._init_params(params_rng)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": self.tx.init(params)}
    if self.config.ema_decay:
      state["ema_params"] = params
    if self.use_gan:
      state.update(self.adversary.init(disc_rng))
    return state

  def abstract_state(self):
    return train_state.abstract_state(self._init_state, self.state_shardings)

  def init_state(self, rng):
    with nn.logical_axis_rules(self.rules):
      state = jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)
    if self.config.init_from:
      # Fine-tuning (the reference's --finetune): weights only, fresh optimizers.
      state = train_state.restart_from(
          state, load_pretrained(self.config.init_from, self.config), self.tx,
          self.state_shardings)
    return state

  def train_iterator(self):
    ds = pipeline.create_image_dataset(
        self.config.data, split=self.config.data.train_split,
        global_batch_size=self.config.global_batch_size, seed=self.config.seed, train=True)
    return iter(ds)

  # -- the jitted step ----------------------------------------------------------

  def train_step(self, state, batch, rng):
    return self._train_step(state, batch, rng, self.frozen)

  def compile_train_step(self, state, batch, rng):
    """AOT-compiles the step; returns (step function, compiled for cost analysis)."""
    compiled = self._train_step.lower(state, batch, rng, self.frozen).compile()
    return (lambda s, b, r: compiled(s, b, r, self.frozen)), compiled

  def _generator_loss(self, params, batch, rng, step, disc_state, frozen):
    images = batch["image"]
    recon, aux = self.model.apply({"params": params}, images, train=True,
                                  rngs={"dropout": rng})
    loss, metrics = tokenizer_common.generator_loss(
        self.config.losses, images, recon, step, perceptual=frozen["perceptual"],
        fake_logits=self.adversary.fake_logits(disc_state) if self.use_gan else None,
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

  def _train_step_fn(self, state, batch, rng, frozen):
    config = self.config
    step = state["step"]
    disc_state = {k: state[k] for k in ("disc_params", "disc_batch_stats") if k in state}

    def loss_and_grad(params, micro_batch, r):
      fn = functools.partial(self._generator_loss, step=step, disc_state=disc_state,
                             frozen=frozen)
      return jax.value_and_grad(fn, has_aux=True)(params, micro_batch, r)

    with nn.logical_axis_rules(self.rules):
      (loss, (metrics, extras)), grads = train_state.accumulate_gradients(
          loss_and_grad, state["params"], batch, rng, config.grad_accum_steps)
      updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
      params = jax.tree.map(jnp.add, state["params"], updates)
      new = dict(state, step=step + 1, params=params, opt_state=opt_state)
      if config.ema_decay:
        decay = optimizer_lib.ema_decay(step, config.ema_decay)
        new["ema_params"] = optimizer_lib.update_ema(state["ema_params"], params, decay)
      ok = jnp.isfinite(loss) & train_state.all_finite(grads)
      if self.use_gan:
        recon = extras["recon"]
        if config.grad_accum_steps > 1:
          # `extras` hold the last micro-batch only: reconstruct the whole batch.
          recon, _ = self.model.apply({"params": state["params"]}, batch["image"])
        d_metrics, d_ok = self.adversary.update(state, new, batch["image"],
                                                jax.lax.stop_gradient(recon))
        metrics.update(d_metrics)
        ok &= d_ok

    new = train_state.keep_if(ok, new, dict(state, step=step + 1))
    metrics.update(grad_norm=optax.tree.norm(grads), lr=self.schedule(step),
                   nonfinite=jnp.logical_not(ok).astype(jnp.int32))
    return new, metrics

  # -- evaluation ---------------------------------------------------------------

  def _reconstruct_fn(self, params, images):
    with nn.logical_axis_rules(self.rules):
      recon, aux = self.model.apply({"params": params}, images)
    return jnp.clip(recon, -1.0, 1.0), aux["indices"].astype(jnp.int32)

  def reconstruct_images(self, params, images):
    """(reconstructions in [-1, 1], codes (B, h*w))."""
    return self._reconstruct(params, images)

  def eval_params(self, state):
    return state["ema_params"] if self.config.ema_decay else state["params"]

  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    return tokenizer_common.evaluate(self, state, step, writer)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the VQGAN tokenizer and writes `summary.txt` next to the checkpoints."""
  start = time.time()
  result = loop.train_and_evaluate(VQGANTrainer(config, workdir), workdir)
  tokenizer_common.write_summary(f"LlamaGen VQGAN {config.variant}", result, workdir, start)
  return result
