"""Generator trainer over tokenizer codes: LlamaGen GPT and TiTok's MaskGIT.

Both train on a code dataset written by `vwt_jax.tools.extract_codes` (2D
VQGAN grids or TiTok's 1D sequences) and differ only in what `config.model.arch`
selects here:

* `gpt`: teacher-forced next-token prediction. The condition (class label or
  caption features) takes the first `cls_token_num` positions and the logits
  from position `cls_token_num - 1` on predict the L codes; samples come from
  the compiled KV-cache sampler.
* `maskgit`: masked-token prediction (arccos-scheduled masking, label
  smoothing, 0.1 weight on unmasked tokens, class dropout for guidance);
  samples come from the compiled confidence-based unmasking loop.

Evaluation reports the held-out loss and writes `samples.png` (one row per
class) decoded by the tokenizer the codes came from.
"""

import os
import time
import types
from typing import Any, Callable

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vwt_jax.conversion import llamagen as llamagen_conversion
from vwt_jax.conversion import torch_state
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import codes as codes_lib
from vwt_jax.evaluation import reconstruction as recon_eval
from vwt_jax.losses import classification
from vwt_jax.conversion import maskgit_generator as maskgit_conversion
from vwt_jax.losses import masked_tokens
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.models import maskgit_generator
from vwt_jax.sampling import autoregressive
from vwt_jax.sampling import maskgit as maskgit_sampling
from vwt_jax.training import loop
from vwt_jax.training import optimizer as optimizer_lib
from vwt_jax.training import tokenizers
from vwt_jax.training import train_state


def model_config(config: ml_collections.ConfigDict, metadata=None) -> gpt_lib.GPTConfig:
  """GPTConfig from `config.model`, filling dataset-given sizes from `metadata`.

  A size set in the config must agree with the code dataset, so a generator is
  never silently trained on codes of another tokenizer (or captions of another
  text encoder: t2i takes caption_dim and cls_token_num, the caption length,
  from a captioned dataset). Without a class count (a tokenizer alone, or
  captions) c2i keeps the reference's 1000 classes.
  """
  m = config.model
  derived = {}
  if metadata is not None:
    code_shape = tuple(metadata.code_shape)
    derived = dict(vocab_size=int(metadata.vocab_size),
                   block_size=int(np.prod(code_shape)),
                   rope_2d=len(code_shape) == 2)
    if metadata.num_classes and m.model_type == "c2i":
      derived["num_classes"] = int(metadata.num_classes)
    if getattr(metadata, "caption_dim", 0) and m.model_type == "t2i":
      # The caption prefix is as long as the dataset's captions.
      derived.update(caption_dim=int(metadata.caption_dim),
                     cls_token_num=int(metadata.caption_length))
  fields = dict(vocab_size=m.vocab_size, block_size=m.block_size, num_classes=m.num_classes,
                rope_2d={"auto": None, "2d": True, "1d": False}[m.rope])
  prefix = dict(caption_dim=m.caption_dim, cls_token_num=m.cls_token_num)
  if m.model_type == "t2i":
    fields.update(prefix)
  unset = lambda name: fields[name] is None or (name != "rope_2d" and fields[name] == 0)
  for name, value in derived.items():
    if unset(name):
      fields[name] = value
    elif fields[name] != value:
      raise ValueError(
          f"config.model.{name}={fields[name]} but the code dataset {config.data.dir} "
          f"has {value}; leave it at 0/'auto' to take the dataset's value")
  missing = [k for k in fields if unset(k) and k != "num_classes"]
  if missing:
    raise ValueError(f"config.model: {missing} unknown; set them or config.data.dir "
                     "to a code dataset whose metadata.json gives them")
  dtype = jnp.dtype(config.compute_dtype)
  return gpt_lib.GPTConfig(
      dim=m.dim, n_layer=m.n_layer, n_head=m.n_head, n_kv_head=m.n_kv_head or None,
      multiple_of=m.multiple_of, ffn_dim_multiplier=m.ffn_dim_multiplier or None,
      rope_base=m.rope_base, norm_eps=m.norm_eps, vocab_size=fields["vocab_size"],
      block_size=fields["block_size"], num_classes=fields["num_classes"] or 1000,
      class_dropout_prob=m.class_dropout_prob, model_type=m.model_type,
      **{name: fields.get(name, value) for name, value in prefix.items()},
      token_dropout_p=m.token_dropout_p, attn_dropout_p=m.attn_dropout_p,
      resid_dropout_p=m.resid_dropout_p, ffn_dropout_p=m.ffn_dropout_p,
      drop_path_rate=m.drop_path_rate, rope_2d=bool(fields["rope_2d"]),
      scan_layers=m.scan_layers, remat=m.remat,
      # Runs saved before the key existed have none.
      attention=m.get("attention", "xla"),
      dtype=dtype, param_dtype=jnp.dtype(config.param_dtype))


class Autoregressive:
  """LlamaGen GPT: next-token cross-entropy, KV-cache sampling with CFG."""

  def __init__(self, config: ml_collections.ConfigDict, metadata):
    self.config = config
    self.cfg = model_config(config, metadata)
    self.model = gpt_lib.GPT(self.cfg)
    self.frozen = gpt_lib.FROZEN_PARAMS
    self.seq_len, self.vocab_size = self.cfg.block_size, self.cfg.vocab_size
    self.conditional_on_class = self.cfg.model_type == "c2i"
    self.num_classes = self.cfg.num_classes
    self.description = (f"LlamaGen GPT {config.variant} ({self.cfg.model_type}, "
                        f"{'2D' if self.cfg.rope_2d else '1D'} RoPE)")

  def sampling_rules(self) -> dict[str, tuple[Callable[[Any], bool], str]]:
    """Each setting the KV-cache sampler reads: (test of a valid value, what is valid)."""
    if self.cfg.has_null_condition:
      cfg = (lambda v: v >= 1, "a guidance scale >= 1 (1 = no guidance)")
    else:
      cfg = (lambda v: v == 1, "1 (no guidance): this GPT was trained without class "
             "dropout, so it has no null class to guide with")
    vocab = self.vocab_size
    return {
        "cfg_scale": cfg,
        "cfg_interval": (lambda v: v >= -1, "-1 (guide every token) or k >= 0 (guide "
                         "image tokens 0..k+1)"),
        "temperature": (lambda v: v > 0, "a temperature > 0"),
        "top_k": (lambda v: 0 <= v <= vocab, f"0 (keep all) to {vocab} (the vocabulary)"),
        "top_p": (lambda v: 0 < v <= 1, "0 < top_p <= 1 (1 = off)"),
    }

  def init_args(self, batch: int):
    idx = jnp.zeros((batch, self.cfg.block_size - 1), jnp.int32)
    return (gpt_lib.dummy_condition(self.cfg, batch), idx), {"train": False}

  def loss(self, params, batch, rng, train: bool):
    cfg = self.cfg
    targets = batch["codes"]
    if cfg.model_type == "t2i":
      # Padded caption slots are seen only by themselves (`dataset/t2i.py`).
      cond = batch["caption_emb"]
      kwargs = {"attn_mask": gpt_lib.t2i_attention_mask(
          batch["caption_mask"], cfg.cls_token_num + targets.shape[1] - 1)}
    else:
      cond, kwargs = batch["labels"], {}
    logits, _ = self.model.apply(
        {"params": params}, cond, targets[:, :-1], train=train,
        rngs={"dropout": rng} if train else None, **kwargs)
    logits = logits[:, cfg.cls_token_num - 1:]
    loss = classification.token_cross_entropy(logits, targets, batch.get("valid"))
    accuracy = jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32))
    return loss, {"loss": loss, "accuracy": accuracy}

  def sample(self, params, cond, rng, settings: dict, mesh, rules, emb_mask=None):
    """Codes for labels (c2i) or left-padded captions + `emb_mask` (t2i)."""
    return autoregressive.generate(
        self.model, params, cond, num_tokens=self.cfg.block_size, rng=rng,
        cfg_scale=settings["cfg_scale"], cfg_interval=settings["cfg_interval"],
        temperature=settings["temperature"], top_k=settings["top_k"],
        top_p=settings["top_p"], emb_mask=emb_mask, mesh=mesh, rules=rules)

  def load_pretrained(self, path: str):
    if epath.Path(path).is_dir():
      return checkpoint_lib.load_state_subtree(path, "params")
    return llamagen_conversion.convert_gpt(torch_state.load_state_dict(path), self.cfg)


class Masked:
  """TiTok's MaskGIT generators (ImageBert / UViTBert): masked-token modelling."""

  def __init__(self, config: ml_collections.ConfigDict, metadata):
    self.config = config
    m = config.model
    sizes = dict(image_seq_len=m.image_seq_len, codebook_size=m.codebook_size,
                 condition_num_classes=m.num_classes)
    if metadata is not None:
      given = dict(image_seq_len=int(np.prod(metadata.code_shape)),
                   codebook_size=int(metadata.vocab_size),
                   condition_num_classes=int(metadata.num_classes))
      for name, value in given.items():
        if sizes[name] and sizes[name] != value:
          raise ValueError(f"config.model: {name}={sizes[name]} but the code dataset "
                           f"{config.data.dir} has {value}")
        sizes[name] = sizes[name] or value
    if not all(sizes.values()):
      raise ValueError(f"config.model: sizes {sizes} unknown; set them or config.data.dir")
    self.cfg = maskgit_generator.MaskGitGeneratorConfig(
        model_type=m.model_type, hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size, dropout=m.dropout, attn_drop=m.attn_drop,
        dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.dtype(config.param_dtype),
        **sizes)
    self.model = maskgit_generator.build_generator(self.cfg)
    self.frozen = ()
    self.seq_len, self.vocab_size = self.cfg.image_seq_len, self.cfg.codebook_size
    self.conditional_on_class = True
    self.num_classes = self.cfg.condition_num_classes
    self.description = f"MaskGIT {m.model_type} generator {config.variant}"

  def sampling_rules(self) -> dict[str, tuple[Callable[[Any], bool], str]]:
    """Each setting the unmasking loop reads: (test of a valid value, what is valid)."""
    decays = maskgit_sampling.GUIDANCE_DECAYS
    return {
        "num_steps": (lambda v: v >= 1, ">= 1 unmasking steps"),
        "cfg_scale": (lambda v: v >= 0, "a guidance scale >= 0"),
        "guidance_decay": (lambda v: v in decays, f"one of {decays}"),
        "guidance_scale_pow": (lambda v: v > 0, "an exponent > 0"),
        "randomize_temperature": (lambda v: v >= 0, "a noise scale >= 0"),
        "softmax_temperature_annealing": (lambda v: isinstance(v, bool), "True or False"),
    }

  def init_args(self, batch: int):
    return ((jnp.zeros((batch, self.cfg.image_seq_len), jnp.int32),
             jnp.zeros((batch,), jnp.int32)), {"train": False})

  def loss(self, params, batch, rng, train: bool):
    losses = self.config.losses
    tokens, labels = batch["codes"], batch["labels"]
    if rng is None:  # Evaluation: a fixed masking so the numbers are comparable.
      rng = jax.random.key(0)
    mask_rng, drop_rng, dropout_rng = jax.random.split(rng, 3)
    masked, mask = masked_tokens.mask_tokens(mask_rng, tokens, self.cfg.mask_token_id)
    drop = (masked_tokens.label_drop_mask(drop_rng, tokens.shape[0], losses.class_dropout)
            if train else None)
    logits, _ = self.model.apply(
        {"params": params}, masked, labels, train=train, drop_labels=drop,
        rngs={"dropout": dropout_rng} if train else None)
    loss, metrics = masked_tokens.masked_token_loss(
        logits, tokens, mask, label_smoothing=losses.label_smoothing,
        unmasked_weight=losses.unmasked_weight)
    return loss, metrics

  def sample(self, params, labels, rng, settings: dict, mesh, rules):
    del mesh, rules  # The unmasking loop runs on whatever sharding `labels` has.
    return maskgit_sampling.generate(
        self.model, params, labels, rng=rng, num_steps=settings["num_steps"],
        guidance_scale=settings["cfg_scale"], guidance_decay=settings["guidance_decay"],
        guidance_scale_pow=settings["guidance_scale_pow"],
        randomize_temperature=settings["randomize_temperature"],
        softmax_temperature_annealing=settings["softmax_temperature_annealing"])

  def load_pretrained(self, path: str):
    if epath.Path(path).is_dir():
      return checkpoint_lib.load_state_subtree(path, "params")
    return maskgit_conversion.convert_generator(torch_state.load_state_dict(path), self.cfg)


ARCHS = {"gpt": Autoregressive, "maskgit": Masked}


class GeneratorTrainer:
  """Builds the state, the jitted train step and the evaluation of a generator."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    self.config = config
    self.workdir = workdir
    self.mesh = mesh or sharding_lib.create_mesh(config.mesh_shape)
    self.rules = sharding_lib.normalize_rules(config.logical_axis_rules)
    self._tokenizer = None
    self.metadata = self._metadata()
    if config.model.arch not in ARCHS:
      raise ValueError(f"config.model.arch={config.model.arch!r}: expected one of {sorted(ARCHS)}")
    self.arch = ARCHS[config.model.arch](config, self.metadata)
    dp = sharding_lib.data_parallel_size(self.mesh)
    if config.global_batch_size % dp:
      raise ValueError(f"global_batch_size={config.global_batch_size} must divide evenly "
                       f"over the {dp} data-parallel devices")
    args, kwargs = self.arch.init_args(dp)
    self.abstract_params, self.param_shardings, self._init_params = train_state.init_params(
        self.arch.model, jax.random.key(0), *args, mesh=self.mesh, rules=self.rules, **kwargs)
    abstract = nn.meta.unbox(self.abstract_params)
    self.tx, self.schedule = optimizer_lib.make_optimizer(
        config.optimizer, abstract, config.total_steps, self.arch.frozen)
    repl = sharding_lib.replicated(self.mesh)
    self.state_shardings = {
        "step": repl, "params": self.param_shardings,
        "opt_state": train_state.opt_state_shardings(
            self.tx, abstract, self.param_shardings, self.mesh)}
    if config.ema_decay:
      self.state_shardings["ema_params"] = self.param_shardings
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self._train_step = jax.jit(
        self._train_step_fn,
        in_shardings=(self.state_shardings, self.batch_sharding, repl),
        out_shardings=(self.state_shardings, repl),
        donate_argnums=(0,))
    self._eval_step = jax.jit(
        self._eval_step_fn, in_shardings=(self.param_shardings, self.batch_sharding),
        out_shardings=repl)

  def _metadata(self):
    """Sizes from the code dataset, or else from the tokenizer (sampling elsewhere)."""
    path = self.config.data.dir
    if path and epath.Path(codes_lib.metadata_path(path)).exists():
      return codes_lib.read_metadata(path)
    if self.config.tokenizer.checkpoint:
      tok = self.tokenizer()
      return types.SimpleNamespace(code_shape=tok.code_shape, vocab_size=tok.vocab_size,
                                   num_classes=0)
    if path:
      return codes_lib.read_metadata(path)  # Raises, naming the missing file.
    return None

  # -- state ------------------------------------------------------------------

  def _init_state(self, rng):
    params = self._init_params(rng)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": self.tx.init(params)}
    if self.config.ema_decay:
      state["ema_params"] = params
    return state

  def abstract_state(self):
    return train_state.abstract_state(self._init_state, self.state_shardings)

  def init_state(self, rng):
    with nn.logical_axis_rules(self.rules):
      state = jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)
    if self.config.init_from:
      loaded = self.arch.load_pretrained(self.config.init_from)
      params = jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), loaded,
                            jax.device_get(state["params"]))
      state = train_state.restart_from(state, params, self.tx, self.state_shardings)
    return state

  def train_iterator(self):
    return iter(codes_lib.create_code_dataset(
        self.config.data, split=self.config.data.train_split,
        global_batch_size=self.config.global_batch_size, seed=self.config.seed, train=True))

  # -- the jitted step ----------------------------------------------------------

  def _loss(self, params, batch, rng, train: bool):
    loss, metrics = self.arch.loss(params, batch, rng, train)
    return loss, (metrics, {})

  def _train_step_fn(self, state, batch, rng):
    step = state["step"]

    def loss_and_grad(params, micro_batch, r):
      return jax.value_and_grad(self._loss, has_aux=True)(params, micro_batch, r, True)

    with nn.logical_axis_rules(self.rules):
      (loss, (metrics, _)), grads = train_state.accumulate_gradients(
          loss_and_grad, state["params"], batch, rng, self.config.grad_accum_steps)
      updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
      params = jax.tree.map(jnp.add, state["params"], updates)
      new = dict(state, step=step + 1, params=params, opt_state=opt_state)
      if self.config.ema_decay:
        new["ema_params"] = optimizer_lib.update_ema(
            state["ema_params"], params, optimizer_lib.ema_decay(step, self.config.ema_decay))
    ok = jnp.isfinite(loss) & train_state.all_finite(grads)
    new = train_state.keep_if(ok, new, dict(state, step=step + 1))
    metrics.update(grad_norm=optax.tree.norm(grads), lr=self.schedule(step),
                   nonfinite=jnp.logical_not(ok).astype(jnp.int32))
    return new, metrics

  def compile_train_step(self, state, batch, rng):
    compiled = self._train_step.lower(state, batch, rng).compile()
    return compiled, compiled

  def _eval_step_fn(self, params, batch):
    with nn.logical_axis_rules(self.rules):
      _, (metrics, _) = self._loss(params, batch, None, False)
    return metrics

  # -- evaluation ---------------------------------------------------------------

  def eval_params(self, state):
    return state["ema_params"] if self.config.ema_decay else state["params"]

  def tokenizer(self) -> tokenizers.Tokenizer:
    """The tokenizer that decodes samples (from the config, else the code metadata)."""
    if self._tokenizer is None:
      t = self.config.tokenizer
      checkpoint, config = t.checkpoint, t.config
      if not checkpoint:
        source = getattr(self.metadata, "source", None) or {}
        if "checkpoint" not in source:
          raise ValueError("no tokenizer to decode samples: set config.tokenizer.checkpoint")
        checkpoint = source["checkpoint"]
        config = config or ml_collections.ConfigDict(source["config"])
      self._tokenizer = tokenizers.load_tokenizer(checkpoint, config, self.mesh)
    arch = getattr(self, "arch", None)
    if arch is not None and self._tokenizer.vocab_size != arch.vocab_size:
      raise ValueError(f"tokenizer has {self._tokenizer.vocab_size} codes, the generator "
                       f"{arch.vocab_size}: set config.tokenizer to the one its codes came from")
    return self._tokenizer

  def sample_codes(self, params, cond: np.ndarray, rng, *, emb_mask=None,
                   **overrides) -> np.ndarray:
    """Codes (B, L); settings from `config.sampling` unless overridden.

    `cond`: class labels (B,), or for a t2i GPT left-padded caption features
    (B, cls_token_num, caption_dim) with their mask `emb_mask`
    (`gpt.left_pad_captions`).
    """
    settings = dict(self.config.sampling)
    settings.update(overrides)
    kwargs = {}
    if not self.arch.conditional_on_class:
      cond = jnp.asarray(cond, jnp.float32)
      if emb_mask is None:
        raise ValueError("a t2i generator needs the caption mask (emb_mask)")
      kwargs["emb_mask"] = jax.device_put(jnp.asarray(emb_mask, bool), self.batch_sharding)
    else:
      cond = jnp.asarray(cond, jnp.int32)
    with nn.logical_axis_rules(self.rules):
      cond = jax.device_put(cond, self.batch_sharding)
      return np.asarray(jax.device_get(self.arch.sample(
          params, cond, rng, settings, self.mesh, self.rules, **kwargs)))

  def write_samples(self, params, path: str) -> np.ndarray:
    """`samples.png`: row r holds `per_class` samples of `sampling.classes[r]`."""
    s = self.config.sampling
    classes = np.asarray(s.classes, np.int32)
    labels = np.repeat(classes, s.per_class)
    dp = sharding_lib.data_parallel_size(self.mesh)
    padded = -(-len(labels) // dp) * dp
    labels_in = np.concatenate([labels, np.repeat(labels[-1:], padded - len(labels))])
    codes = self.sample_codes(params, labels_in, jax.random.key(s.seed))
    images = []
    tok = self.tokenizer()
    for start in range(0, padded, 64 * dp):
      chunk = codes[start:start + 64 * dp]
      images.append(np.asarray(jax.device_get(tok.decode(jnp.asarray(chunk)))))
    images = recon_eval.to_uint8(np.concatenate(images)[:len(labels)])
    rows = images.reshape(len(classes), s.per_class, *images.shape[1:])
    grid = recon_eval.image_grid(list(rows))
    recon_eval.save_grid(grid, path)
    return grid

  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    ev = self.config.eval
    params = self.eval_params(state)
    ds = codes_lib.create_code_dataset(
        self.config.data, split=self.config.data.eval_split, global_batch_size=ev.batch_size,
        seed=self.config.seed, train=False)
    totals, batches = {}, 0
    for batch in ds:
      batch = sharding_lib.host_batch_to_global(
          {k: v for k, v in batch.items() if k != "mask"}, self.mesh)
      for k, v in jax.device_get(self._eval_step(params, batch)).items():
        totals[k] = totals.get(k, 0.0) + float(v)
      batches += 1
      if batches >= ev.num_batches:
        break
    result = {f"eval_{k}": v / max(batches, 1) for k, v in totals.items()}
    if self.arch.conditional_on_class:
      grid = self.write_samples(params, os.path.join(self.workdir, "samples.png"))
      writer.write_images(step, {"samples": grid[None]})
    logging.info("eval at step %d: %s", step, result)
    return result


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains a generator and writes `summary.txt` next to the checkpoints."""
  start = time.time()
  trainer = GeneratorTrainer(config, workdir)
  result = loop.train_and_evaluate(trainer, workdir)
  arch = trainer.arch
  notes = ["samples.png: one row per class of config.sampling.classes"
           ] if arch.conditional_on_class else []
  loop.write_summary(f"{arch.description} on {arch.seq_len} tokens of {arch.vocab_size} codes",
                     result, workdir, start, notes)
  return result
