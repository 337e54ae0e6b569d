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

import functools
import time
from typing import Any

from absl import logging
from etils import epath
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vwt_jax.conversion import titok as titok_conversion
from vwt_jax.conversion import torch_state
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import pipeline
from vwt_jax.losses import classification
from vwt_jax.losses import perceptual as perceptual_lib
from vwt_jax.losses import quantizer as quantizer_losses
from vwt_jax.models import discriminator as discriminator_lib
from vwt_jax.models import maskgit_vqgan
from vwt_jax.models import quantizers
from vwt_jax.models import titok as titok_lib
from vwt_jax.training import loop
from vwt_jax.training import optimizer as optimizer_lib
from vwt_jax.training import tokenizer_common
from vwt_jax.training import train_state

# Parameters stage 2 keeps frozen, as the official `finetune_decoder` path does.
STAGE2_FROZEN = (r"^encoder/", r"^quantize/", r"^latent_tokens$")


def pixel_decoder_config(c: ml_collections.ConfigDict) -> maskgit_vqgan.MaskGitVQGANConfig:
  return maskgit_vqgan.MaskGitVQGANConfig(
      hidden_channels=c.hidden_channels, channel_mult=tuple(c.channel_mult),
      num_res_blocks=c.num_res_blocks, z_channels=c.z_channels,
      codebook_size=c.codebook_size)


def model_config(config: ml_collections.ConfigDict) -> titok_lib.TiTokConfig:
  m = config.model
  return titok_lib.TiTokConfig(
      image_size=config.data.image_size,
      enc_width=m.enc_width, enc_depth=m.enc_depth, enc_heads=m.enc_heads,
      dec_width=m.dec_width, dec_depth=m.dec_depth, dec_heads=m.dec_heads,
      enc_patch_size=m.enc_patch_size, dec_patch_size=m.dec_patch_size,
      num_latent_tokens=m.num_latent_tokens, codebook_size=m.codebook_size,
      token_size=m.token_size, use_l2_norm=m.use_l2_norm,
      commitment_cost=m.commitment_cost, quantize_mode=m.quantize_mode,
      is_legacy=m.is_legacy,
      # Only a legacy model past stage 1 renders pixels through the VQGAN decoder.
      finetune_decoder=m.is_legacy and config.recipe != "stage1",
      pixel_decoder=pixel_decoder_config(m.pixel_decoder),
      dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.dtype(config.param_dtype))


def merge_params(base: Any, loaded: Any, source: str) -> Any:
  """Overrides `base` leaves with `loaded` ones; loaded keys must all exist."""
  flat_base = traverse_util.flatten_dict(base, sep="/")
  flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
  unexpected = sorted(set(flat_loaded) - set(flat_base))
  mismatched = sorted(k for k in set(flat_loaded) & set(flat_base)
                      if tuple(flat_loaded[k].shape) != tuple(flat_base[k].shape))
  if unexpected or mismatched:
    raise ValueError(
        f"init_from {source}: parameters do not fit this model. unexpected: "
        f"{unexpected[:10]}{'...' if len(unexpected) > 10 else ''}; shape mismatches: "
        + ", ".join(f"{k} {flat_loaded[k].shape} vs {flat_base[k].shape}"
                    for k in mismatched[:10]))
  kept = sorted(set(flat_base) - set(flat_loaded))
  if kept:
    logging.info("init_from %s: %d parameter arrays keep their initialisation "
                 "(e.g. %s)", source, len(kept), kept[:5])
  flat_base.update(flat_loaded)
  return traverse_util.unflatten_dict(flat_base, sep="/")


def scale_kernels(params: Any, scale: float) -> Any:
  """Multiplies every weight matrix / conv kernel by `scale`.

  The official init (normal, std 0.02) is sized for the released widths
  (512-1024); tiny models need larger weights for the latent tokens to see the
  image at all at initialisation.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict(
      {k: v * scale if k.endswith("kernel") else v for k, v in flat.items()}, sep="/")


def load_pretrained(path: str, config: ml_collections.ConfigDict) -> Any:
  """Parameters from our checkpoint (a run dir) or an official state dict file."""
  if epath.Path(path).is_dir():
    key = "ema_params" if config.ema_decay else "params"
    try:
      return checkpoint_lib.load_state_subtree(path, key)
    except KeyError:
      return checkpoint_lib.load_state_subtree(path, "params")
  cfg = model_config(config)
  state_dict = torch_state.load_state_dict(path)
  return titok_conversion.convert_titok(state_dict, cfg)


def load_maskgit_vqgan(path: str, config: ml_collections.ConfigDict, image_size: int):
  """The MaskGIT-VQGAN of `config.teacher` from an official or npz state dict."""
  cfg = pixel_decoder_config(config)
  state_dict = torch_state.load_state_dict(path)
  return cfg, titok_conversion.convert_maskgit_vqgan(state_dict, cfg, image_size)


class TiTokTrainer:
  """Builds the state, the jitted train step and the evaluation of TiTok."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    self.config = config
    self.workdir = workdir
    self.mesh = mesh or sharding_lib.create_mesh(config.mesh_shape)
    self.rules = sharding_lib.normalize_rules(config.logical_axis_rules)
    self.recipe = config.recipe
    self.cfg = model_config(config)
    self.model = titok_lib.TiTok(self.cfg)
    if config.global_batch_size % sharding_lib.data_parallel_size(self.mesh):
      raise ValueError(
          f"global_batch_size={config.global_batch_size} must divide evenly over the "
          f"{sharding_lib.data_parallel_size(self.mesh)} data-parallel devices")
    size = config.data.image_size
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    rng = jax.random.key(0)

    self.abstract_params, self.param_shardings, self._init_params = (
        train_state.init_params(self.model, rng, dummy, mesh=self.mesh, rules=self.rules))
    abstract = nn.meta.unbox(self.abstract_params)
    frozen = STAGE2_FROZEN if self.recipe == "stage2" else ()
    self.tx, self.schedule = optimizer_lib.make_optimizer(
        config.optimizer, abstract, config.total_steps, frozen)
    opt_shardings = train_state.opt_state_shardings(
        self.tx, abstract, self.param_shardings, self.mesh)
    repl = sharding_lib.replicated(self.mesh)
    self.state_shardings = {"step": repl, "params": self.param_shardings,
                            "opt_state": opt_shardings}
    if config.ema_decay:
      self.state_shardings["ema_params"] = self.param_shardings
    self.restart_codes = (self.cfg.quantize_mode == "vq" and self.recipe != "stage2"
                          and config.model.dead_code_threshold > 0)
    if self.restart_codes:
      self.state_shardings["code_usage"] = repl

    self.use_gan = self.recipe != "stage1" and config.losses.discriminator_weight > 0
    if self.use_gan:
      d = config.discriminator
      self.adversary = tokenizer_common.Adversary(
          discriminator_lib.NLayerDiscriminator(
              hidden_channels=d.hidden_channels, channel_mults=tuple(d.channel_mults),
              norm_groups=d.norm_groups, pool_size=d.pool_size,
              dtype=self.cfg.dtype, param_dtype=self.cfg.param_dtype),
          config, dummy, mesh=self.mesh, rules=self.rules, use_lecam=True)
      self.state_shardings.update(self.adversary.shardings)

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
      teacher_cfg, teacher_params = load_maskgit_vqgan(
          config.teacher.checkpoint, config.teacher, size)
      grid = size // self.cfg.dec_patch_size
      factor = 2 ** (teacher_cfg.num_resolutions - 1)
      if size // factor != grid:
        raise ValueError(
            f"config.teacher: its {factor}x downsampling gives a {size // factor}^2 code "
            f"grid but the TiTok decoder predicts {grid}^2 proxy codes")
      self.teacher = (maskgit_vqgan.MaskGitVQGAN(teacher_cfg),
                      jax.device_put(teacher_params, repl))

    # Frozen networks enter the compiled step as arguments, not as constants
    # baked into the program (ConvNeXt-S alone is 200 MB).
    self.frozen = {"teacher": self.teacher[1] if self.teacher else None,
                   "perceptual": self.perceptual}
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self._train_step = jax.jit(
        self._train_step_fn,
        in_shardings=(self.state_shardings, self.batch_sharding, repl, repl),
        out_shardings=(self.state_shardings, repl),
        donate_argnums=(0,))
    self._reconstruct = jax.jit(
        self._reconstruct_fn,
        in_shardings=(self.param_shardings, self.batch_sharding, repl),
        out_shardings=self.batch_sharding)

  # -- state ------------------------------------------------------------------

  def _init_state(self, rng):
    params_rng, disc_rng = jax.random.split(rng)
    params = self._init_params(params_rng)
    if self.config.model.init_kernel_scale != 1.0:
      params = scale_kernels(params, self.config.model.init_kernel_scale)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": self.tx.init(params)}
    if self.config.ema_decay:
      state["ema_params"] = params
    if self.restart_codes:
      # Typed explicitly: a weak-typed leaf would differ from its restored
      # (strong) self and make every resumed run compile the step again.
      state["code_usage"] = jnp.full((self.cfg.codebook_size,), 1.0 / self.cfg.codebook_size,
                                     jnp.float32)
    if self.use_gan:
      state.update(self.adversary.init(disc_rng))
    return state

  def abstract_state(self):
    return train_state.abstract_state(self._init_state, self.state_shardings)

  def init_state(self, rng):
    with nn.logical_axis_rules(self.rules):
      state = jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)
    if self.config.init_from:
      loaded = load_pretrained(self.config.init_from, self.config)
      params = merge_params(jax.device_get(state["params"]), loaded, self.config.init_from)
      if self.recipe == "stage2" and self.config.teacher.checkpoint:
        # Stage 2 starts its pixel decoder from the released MaskGIT-VQGAN.
        _, vqgan = load_maskgit_vqgan(self.config.teacher.checkpoint, self.config.teacher,
                                      self.config.data.image_size)
        params = merge_params(params, {"pixel_decoder": vqgan["decoder"],
                                       "pixel_quantize": vqgan["quantize"]},
                              self.config.teacher.checkpoint)
      state = train_state.restart_from(state, params, self.tx, self.state_shardings)
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

  def reconstruct_images(self, params, images):
    """(reconstructions in [-1, 1], the TiTok codes (B, N) or None for a VAE)."""
    return self._reconstruct(params, images, self.frozen)

  def _generator_loss(self, params, batch, rng, step, disc_state, frozen):
    losses = self.config.losses
    images = batch["image"]
    metrics = {}
    if self.recipe == "stage1":
      teacher = self.teacher[0]
      codes, _ = teacher.apply({"params": frozen["teacher"]}, images, method=teacher.encode)
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
          losses, images, recon, step, perceptual=frozen["perceptual"],
          fake_logits=self.adversary.fake_logits(disc_state) if self.use_gan else None,
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
      if self.restart_codes:
        codebook, new["code_usage"], restarted = quantizers.restart_dead_codes(
            params["quantize"]["embedding"], state["code_usage"], extras["z"], extras["code_counts"],
            jax.random.fold_in(rng, 1), decay=config.model.dead_code_decay,
            threshold=config.model.dead_code_threshold)
        new["params"] = dict(params, quantize=dict(params["quantize"], embedding=codebook))
        metrics["codes_restarted"] = restarted
      if config.ema_decay:
        decay = optimizer_lib.ema_decay(step, config.ema_decay)
        new["ema_params"] = optimizer_lib.update_ema(state["ema_params"], params, decay)
      ok = jnp.isfinite(loss) & train_state.all_finite(grads)

      if self.use_gan:
        recon = extras["recon"]
        if config.grad_accum_steps > 1:
          # `extras` hold the last micro-batch only: reconstruct the whole batch.
          recon, _ = self.model.apply({"params": state["params"]}, batch["image"], rng=rng)
        d_metrics, d_ok = self.adversary.update(state, new, batch["image"],
                                                jax.lax.stop_gradient(recon))
        metrics.update(d_metrics)
        ok &= d_ok

    new = train_state.keep_if(ok, new, dict(state, step=step + 1))
    metrics.update(grad_norm=optax.tree.norm(grads), lr=self.schedule(step),
                   nonfinite=jnp.logical_not(ok).astype(jnp.int32))
    return new, metrics

  # -- evaluation ---------------------------------------------------------------

  def _reconstruct_fn(self, params, images, frozen):
    with nn.logical_axis_rules(self.rules):
      if self.recipe == "stage1":
        # No pixels yet: show the teacher's rendering of the predicted proxy codes.
        _, aux = self.model.apply({"params": params}, images)
        teacher = self.teacher[0]
        proxy = jnp.argmax(aux["proxy_logits"], axis=-1)
        recon = teacher.apply({"params": frozen["teacher"]}, proxy, method=teacher.decode_codes)
      else:
        recon, aux = self.model.apply({"params": params}, images)
    # A VAE has no codes to count.
    codes = aux["indices"].astype(jnp.int32) if "indices" in aux else None
    return jnp.clip(recon, -1.0, 1.0), codes

  def eval_params(self, state):
    return state["ema_params"] if self.config.ema_decay else state["params"]

  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    return tokenizer_common.evaluate(self, state, step, writer)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains TiTok and writes `summary.txt` next to the checkpoints."""
  start = time.time()
  result = loop.train_and_evaluate(TiTokTrainer(config, workdir), workdir)
  tokenizer_common.write_summary(f"TiTok {config.variant} ({config.recipe})", result, workdir,
                                 start)
  return result
