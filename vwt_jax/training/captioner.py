"""Trainer of the Vriptor-style video captioner (`models/captioner.py`) on Vript.

Data: the 'formats' view of `data/vript/pipeline.create_vript_dataset` (the
four Vriptor training formats, frames CLIP-normalised), its text laid out
right after each host batch is drawn by `captioner_text.encode_batch` (ids,
visual slots, shifted targets, answer-token mask). The encoding is a pure
function of the batch, so the checkpointed grain iterator state alone makes a
resumed run see the same token batches.

Tokenizer, chosen once per run and saved as `{workdir}/tokenizer.json`, which
sampling reads and a resumed run reuses: `config.tokenizer.path` (a
tokenizer.json or a model directory), else the one saved next to the
`init_from` run, else that of `config.init.llm_dir` (a Vicuna/LLaMA
directory), else a LLaMA-style BPE of `config.tokenizer.vocab_size` trained on
the dataset's prompts and targets (`text_tokenizer.train_tokenizer`).

Model: `model_config` builds the `CaptionerConfig` from `config.model`, taking
the decoder's and the vision tower's sizes from `config.init.llm_dir` /
`config.init.vision_dir` when set (their config.json). Parameters start
random; then `init_from` (a captioner run, e.g. stage 2 from stage 1) and the
Hugging Face weights of those directories replace what they hold. The
resolved config is written to `{workdir}/captioner_config.json`.

Freezing: `config.train.freeze` names parts ('vision', 'projector', 'lm')
that keep their initial values. They get zero optimizer updates
(`optimizer.make_optimizer` frozen patterns, no Adam moments) and enter the
loss through `stop_gradient`, so no backward pass runs through them (for a
frozen vision tower, none through any frame at all). Vriptor's stages, like
ST-LLM's, keep the ViT frozen.

Loss: next-token cross entropy on the answer tokens only (the question,
visual slots and padding carry none), divided by the answer-token count of
the global batch, also under gradient accumulation. ST-LLM instead averages
per-GPU means (HF `CrossEntropyLoss` over each micro-batch of one example),
weighting a short answer's tokens more. Metrics: loss, token accuracy,
answer tokens per batch. Evaluation: the same, teacher-forced, over one pass
of the samples in record order (Vript has no held-out split).
"""

import math
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from etils import epath
import flax.linen as nn
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tokenizers

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import files
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import captioner_text
from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import pipeline as vript_pipeline
from vwt_jax.data.vript import synthetic
from vwt_jax.losses import classification
from vwt_jax.models import captioner as captioner_lib
from vwt_jax.models.clip_vision import CLIPVisionConfig
from vwt_jax.models.llama_lm import LlamaLMConfig
from vwt_jax.training import loop
from vwt_jax.training import optimizer as optimizer_lib
from vwt_jax.training import train_state

TOKENIZER_FILE = text_tokenizer.TOKENIZER_FILE
MODEL_CONFIG_FILE = "captioner_config.json"
PARTS = ("vision", "projector", "lm")
# What a device batch holds; 'attention' is left out because right-padded
# rows need no mask beyond the causal one (see `Captioner.__call__`).
BATCH_KEYS = ("frames", "ids", "visual", "targets", "loss_mask")


def _sizes(config) -> dict[str, Any]:
  return {k: v for k, v in vars(config).items() if k not in ("dtype", "param_dtype")}


def model_config(config: ml_collections.ConfigDict) -> captioner_lib.CaptionerConfig:
  """The `CaptionerConfig` of `config.model` (+ the init directories' config.json).

  A vision or LLM variant named in the config must agree with the checkpoint
  directory given for that part; leave it '' to take the checkpoint's.
  """
  m, init = config.model, config.init
  kw = dict(dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.dtype(config.param_dtype))

  named_vision = CLIPVisionConfig.from_variant(m.vision.variant, **kw) if m.vision.variant else None
  if init.vision_dir:
    vision = CLIPVisionConfig.from_hf_config(
        hf_checkpoint.read_config(init.vision_dir),
        source=os.path.join(init.vision_dir, "config.json"), **kw)
    if named_vision is not None and named_vision != vision:
      raise ValueError(f"config.model.vision.variant={m.vision.variant!r} is not the tower in "
                       f"config.init.vision_dir={init.vision_dir}: {_sizes(vision)}")
  elif named_vision is None:
    raise ValueError("config.model.vision.variant is empty and config.init.vision_dir unset")
  else:
    vision = named_vision

  lm_kw = dict(kw, scan_layers=m.lm.scan_layers, remat=m.lm.remat)
  for name in ("vocab_size", "max_positions", "rope_linear_factor"):
    if m.lm[name]:
      lm_kw[name] = m.lm[name]
  if init.llm_dir:
    lm = LlamaLMConfig.from_hf_config(hf_checkpoint.read_config(init.llm_dir),
                                      os.path.join(init.llm_dir, "config.json"), **lm_kw)
    if m.lm.variant:
      named = LlamaLMConfig.from_variant(m.lm.variant, **lm_kw)
      if _sizes(named) != _sizes(lm):
        raise ValueError(f"config.model.lm.variant={m.lm.variant!r} is not the model in "
                         f"config.init.llm_dir={init.llm_dir}: {_sizes(lm)}")
  elif not m.lm.variant:
    raise ValueError("config.model.lm.variant is empty and config.init.llm_dir unset")
  else:
    lm = LlamaLMConfig.from_variant(m.lm.variant, **lm_kw)

  p = m.projector
  return captioner_lib.CaptionerConfig(
      vision=vision, lm=lm, feature_layer=m.vision.feature_layer, drop_cls=m.vision.drop_cls,
      projector=p.kind, num_queries=p.num_queries, projector_layers=p.num_layers,
      projector_heads=p.num_heads, temporal_embedding=p.temporal_embedding,
      max_frames=p.max_frames, num_frames=config.data.num_frames)


def prepare_synthetic_data(config: ml_collections.ConfigDict) -> None:
  """Writes the embedded synthetic Vript under `config.data.root` when
  `config.data.synthetic` holds `synthetic.generate` settings (idempotent)."""
  settings = config.data.get("synthetic")
  if not settings:
    return
  if jax.process_index() == 0:
    summary = synthetic.generate(config.data.root, **settings.to_dict())
    logging.info("synthetic Vript under %s: %d videos, %d clips", config.data.root,
                 summary["num_videos"], summary["num_clips"])
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("synthetic vript")


def training_samples(data_config: ml_collections.ConfigDict) -> list:
  """The `formats.Sample`s the training pipeline draws from."""
  videos = clip_source.load_videos(data_config.root, cache_dir=data_config.cache_dir,
                                   groups=tuple(data_config.groups) or None)
  return vript_pipeline.build_samples(data_config, videos)


def tokenizer_texts(samples) -> list[str]:
  """What a tokenizer is trained on: each sample's question pieces and answer."""
  texts = []
  for s in samples:
    texts += [t for t in s.model_input.split(captioner_text.IMAGE_PLACEHOLDER) if t]
    texts.append(s.model_target)
  return texts


def _read_tokenizer(path: epath.Path) -> tokenizers.Tokenizer:
  return tokenizers.Tokenizer.from_str(files.read_text(path))


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                      samples: Optional[Callable[[], list]] = None
                      ) -> tuple[tokenizers.Tokenizer, str]:
  """(tokenizer, where it came from), saved as `{workdir}/tokenizer.json` (module docstring).

  `samples()` gives the training samples when a tokenizer must be trained.
  """
  saved = epath.Path(workdir) / TOKENIZER_FILE
  if saved.exists():
    return _read_tokenizer(saved), f"{saved} (this run's)"
  previous = epath.Path(config.init_from) / TOKENIZER_FILE if config.init_from else None
  if config.tokenizer.path:
    tokenizer, source = text_tokenizer.load_tokenizer(config.tokenizer.path), config.tokenizer.path
  elif previous is not None and previous.exists():
    tokenizer, source = _read_tokenizer(previous), str(previous)
  elif config.init.llm_dir:
    tokenizer, source = text_tokenizer.load_tokenizer(config.init.llm_dir), config.init.llm_dir
  else:
    texts = tokenizer_texts(samples() if samples else training_samples(config.data))
    tokenizer = text_tokenizer.train_tokenizer(texts, vocab_size=config.tokenizer.vocab_size)
    source = (f"trained on {len(texts)} texts of {config.data.root} "
              f"({tokenizer.get_vocab_size()} tokens)")
  if jax.process_index() == 0:
    # Written whole, so a concurrent reader never sees half a file.
    files.makedirs(saved.parent)
    files.write_text(saved, tokenizer.to_str())
  return tokenizer, source


def answer_token_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                      num_tokens: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, {'loss', 'accuracy'}) over the answer tokens (`loss_mask`).

  Both are sums over this batch divided by `num_tokens` (default: its answer
  tokens, at least 1); see `classification.masked_token_cross_entropy`.
  """
  if num_tokens is None:
    num_tokens = jnp.maximum(jnp.sum(loss_mask.astype(jnp.float32)), 1.0)
  loss = classification.masked_token_cross_entropy(logits, targets, loss_mask, num_tokens)
  correct = (jnp.argmax(logits, axis=-1) == targets) & loss_mask.astype(bool)
  accuracy = jnp.sum(correct.astype(jnp.float32)) / num_tokens
  return loss, {"loss": loss, "accuracy": accuracy}


class _EncodedIterator(grain.DatasetIterator):
  """A pipeline iterator whose batches pass through `encode`; state and stats
  are the pipeline's."""

  def __init__(self, parent, encode):
    super().__init__(parent)
    self._encode = encode

  def __next__(self):
    return self._encode(next(self._parent))

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)

  def stats(self):
    return self._parent.stats()


class CaptionerTrainer:
  """Builds the state, the jitted train step and the evaluation of a captioner."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    self.config = config
    self.workdir = workdir
    if config.ema_decay:
      raise ValueError("config.ema_decay: the captioner trainer keeps no EMA; set it to 0")
    unknown = sorted(set(config.train.freeze) - set(PARTS))
    if unknown:
      raise ValueError(f"config.train.freeze has {unknown}; parts are {PARTS}")
    self.frozen = tuple(config.train.freeze)
    self.mesh = mesh or sharding_lib.create_mesh(config.mesh_shape)
    self.rules = sharding_lib.normalize_rules(config.logical_axis_rules)
    prepare_synthetic_data(config)
    self._samples = None
    self.tokenizer, source = prepare_tokenizer(config, workdir, self.samples)
    logging.info("tokenizer: %s", source)
    self.cfg = model_config(config)
    self.model = captioner_lib.Captioner(self.cfg)
    self._check_sizes()
    if not config.total_steps:
      config.total_steps = self._epoch_steps()

    dp = sharding_lib.data_parallel_size(self.mesh)
    per_step = dp * config.grad_accum_steps
    if config.global_batch_size % per_step:
      raise ValueError(f"global_batch_size={config.global_batch_size} must divide evenly over "
                       f"{dp} data-parallel devices x grad_accum_steps={config.grad_accum_steps}")
    if config.eval.batch_size % dp:
      raise ValueError(f"eval.batch_size={config.eval.batch_size} must divide evenly over "
                       f"{dp} data-parallel devices")
    args = captioner_lib.init_inputs(self.cfg)
    self.abstract_params, self.param_shardings, self._init_params = train_state.init_params(
        self.model, jax.random.key(0), *args, mesh=self.mesh, rules=self.rules)
    abstract = nn.meta.unbox(self.abstract_params)
    self.tx, self.schedule = optimizer_lib.make_optimizer(
        config.optimizer, abstract, config.total_steps, tuple(f"^{p}/" for p in self.frozen))
    repl = sharding_lib.replicated(self.mesh)
    self.state_shardings = {
        "step": repl, "params": self.param_shardings,
        "opt_state": train_state.opt_state_shardings(
            self.tx, abstract, self.param_shardings, self.mesh)}
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self._train_step = jax.jit(
        self._train_step_fn,
        in_shardings=(self.state_shardings, self.batch_sharding, repl),
        out_shardings=(self.state_shardings, repl),
        donate_argnums=(0,))
    self._eval_step = jax.jit(
        self._eval_step_fn, in_shardings=(self.param_shardings, self.batch_sharding),
        out_shardings=repl)
    if jax.process_index() == 0:
      files.write_text(epath.Path(workdir) / MODEL_CONFIG_FILE, self.cfg.to_json())
    counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v))
              for k, v in abstract.items()}
    logging.info("captioner: %s parameters; frozen %s; %d visual tokens of %d positions",
                 {k: f"{v / 1e6:.1f}M" for k, v in counts.items()}, self.frozen or "nothing",
                 self.num_visual_tokens, config.text.max_length)

  @property
  def num_visual_tokens(self) -> int:
    return self.cfg.num_visual_tokens()

  def samples(self) -> list:
    """The training samples (loaded once)."""
    if self._samples is None:
      self._samples = training_samples(self.config.data)
    return self._samples

  def _check_sizes(self):
    t, lm = self.config.text, self.cfg.lm
    vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > lm.vocab_size:
      raise ValueError(f"the tokenizer has {vocab} tokens, the LM's vocab_size is "
                       f"{lm.vocab_size}: set config.model.lm.vocab_size >= {vocab}")
    for token in (t.bos_token, t.pad_token):
      text_tokenizer.special_id(self.tokenizer, token)
    if t.max_length <= self.num_visual_tokens:
      raise ValueError(f"config.text.max_length={t.max_length} leaves no text room after "
                       f"{self.num_visual_tokens} visual tokens")
    if t.max_length > lm.max_positions:
      raise ValueError(f"config.text.max_length={t.max_length} exceeds the LM's "
                       f"max_positions={lm.max_positions} (config.model.lm.max_positions)")

  def _epoch_steps(self) -> int:
    """`config.num_epochs` over the training samples, in global batches."""
    num = len(self.samples())
    steps = max(1, math.ceil(self.config.num_epochs * num / self.config.global_batch_size))
    logging.info("total_steps=%d: %s epoch(s) of %d samples in batches of %d", steps,
                 self.config.num_epochs, num, self.config.global_batch_size)
    return steps

  # -- data -------------------------------------------------------------------

  def encode(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """A pipeline batch -> the device batch (`BATCH_KEYS`), on the host."""
    t = self.config.text
    text = captioner_text.encode_batch(
        batch, self.tokenizer, num_visual_tokens=self.num_visual_tokens,
        max_length=t.max_length, bos=t.bos, bos_token=t.bos_token, pad_token=t.pad_token,
        max_answer_length=t.max_answer_length or None)
    captioner_lib.check_visual_slots(text["visual"], self.num_visual_tokens)
    # The tower casts frames to the compute dtype first, so casting here only
    # halves the host-to-device traffic under bfloat16.
    frames = np.asarray(batch["frames"]).astype(jnp.dtype(self.config.compute_dtype))
    return {"frames": frames, **{k: text[k] for k in BATCH_KEYS[1:]}}

  def _dataset(self, train: bool, batch_size: int):
    count = jax.process_count()
    if batch_size % count:
      raise ValueError(f"batch size {batch_size} is not divisible by {count} processes")
    return vript_pipeline.create_vript_dataset(
        self.config.data, train=train, seed=self.config.seed,
        batch_size_per_host=batch_size // count)

  def train_iterator(self):
    return _EncodedIterator(iter(self._dataset(True, self.config.global_batch_size)),
                            self.encode)

  # -- state ------------------------------------------------------------------

  def _init_state(self, rng):
    params = self._init_params(rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": self.tx.init(params)}

  def abstract_state(self):
    return train_state.abstract_state(self._init_state, self.state_shardings)

  def pretrained_params(self) -> dict[str, Any]:
    """The parts `init_from` and `config.init`'s directories provide (host arrays)."""
    loaded = {}
    if self.config.init_from:
      loaded = dict(checkpoint_lib.load_state_subtree(self.config.init_from, "params"))
      captioner_lib.check_params(loaded, self.cfg, self.config.init_from)
    init = self.config.init
    return captioner_lib.load_pretrained(self.cfg, init.llm_dir or None,
                                         init.vision_dir or None, loaded)

  def init_state(self, rng):
    with nn.logical_axis_rules(self.rules):
      state = jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)
    loaded = self.pretrained_params()
    if loaded:
      logging.info("initialised %s from %s", sorted(loaded), [
          p for p in (self.config.init_from, self.config.init.llm_dir,
                      self.config.init.vision_dir) if p])
      abstract = nn.meta.unbox(self.abstract_params)
      params = dict(state["params"])
      for part, values in loaded.items():
        params[part] = jax.device_put(
            jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), values, abstract[part]),
            self.param_shardings[part])
      state = train_state.restart_from(state, params, self.tx, self.state_shardings)
    return state

  # -- the jitted step ----------------------------------------------------------

  def _loss(self, params, batch, rng, train: bool, num_tokens=None):
    # Frozen parts are constants of the loss: no gradient is computed for them.
    params = {k: jax.lax.stop_gradient(v) if k in self.frozen else v for k, v in params.items()}
    logits, _ = self.model.apply(
        {"params": params}, batch["frames"], batch["ids"], batch["visual"], train=train,
        rngs={"dropout": rng} if train else None)
    loss, metrics = answer_token_loss(logits, batch["targets"], batch["loss_mask"], num_tokens)
    return loss, (metrics, {})

  def _train_step_fn(self, state, batch, rng):
    step = state["step"]
    accum = self.config.grad_accum_steps
    answer_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    # Each micro-batch divides by its share of the global count, so their
    # average is the mean over every answer token of the batch.
    per_micro = jnp.maximum(answer_tokens, 1.0) / accum

    def loss_and_grad(params, micro_batch, r):
      return jax.value_and_grad(self._loss, has_aux=True)(params, micro_batch, r, True, per_micro)

    with nn.logical_axis_rules(self.rules):
      (loss, (metrics, _)), grads = train_state.accumulate_gradients(
          loss_and_grad, state["params"], batch, rng, accum)
      updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
      params = jax.tree.map(jnp.add, state["params"], updates)
    new = dict(state, step=step + 1, params=params, opt_state=opt_state)
    ok = jnp.isfinite(loss) & train_state.all_finite(grads)
    new = train_state.keep_if(ok, new, dict(state, step=step + 1))
    metrics.update(answer_tokens=answer_tokens, grad_norm=optax.tree.norm(grads),
                   lr=self.schedule(step), nonfinite=jnp.logical_not(ok).astype(jnp.int32))
    return new, metrics

  def compile_train_step(self, state, batch, rng):
    compiled = self._train_step.lower(state, batch, rng).compile()
    return compiled, compiled

  def _eval_step_fn(self, params, batch):
    """Sums over the batch: answer-token CE, correct tokens, answer tokens."""
    with nn.logical_axis_rules(self.rules):
      _, (metrics, _) = self._loss(params, batch, None, False, 1.0)
    return {"ce": metrics["loss"], "correct": metrics["accuracy"],
            "tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32))}

  # -- evaluation ---------------------------------------------------------------

  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    """Teacher-forced loss and token accuracy over (the first `eval.num_batches`
    batches of) one pass of the samples; padding rows carry no answer tokens."""
    del writer
    ev = self.config.eval
    totals = {"ce": 0.0, "correct": 0.0, "tokens": 0.0}
    for i, batch in enumerate(self._dataset(False, ev.batch_size)):
      if ev.num_batches and i >= ev.num_batches:
        break
      batch = sharding_lib.host_batch_to_global(self.encode(batch), self.mesh)
      for k, v in jax.device_get(self._eval_step(state["params"], batch)).items():
        totals[k] += float(v)
    tokens = max(totals["tokens"], 1.0)
    result = {"eval_loss": totals["ce"] / tokens, "eval_accuracy": totals["correct"] / tokens,
              "eval_answer_tokens": totals["tokens"]}
    logging.info("eval at step %d: %s", step, result)
    return result


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains a captioner and writes `summary.txt` next to the checkpoints."""
  start = time.time()
  trainer = CaptionerTrainer(config, workdir)
  result = loop.train_and_evaluate(trainer, workdir)
  cfg = trainer.cfg
  loop.write_summary(
      f"Vriptor-style captioner {config.variant} ({cfg.num_frames} frames x "
      f"{cfg.tokens_per_frame} tokens, {cfg.lm.n_layer}-layer LM of width {cfg.lm.dim})",
      result, workdir, start,
      [f"tokenizer: {os.path.join(workdir, TOKENIZER_FILE)}",
       f"model config: {os.path.join(workdir, MODEL_CONFIG_FILE)}",
       f"frozen: {', '.join(trainer.frozen) or 'nothing'}"])
  return result
