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

Model: `CaptionerConfig(**config.model)` (`families.captioner.model_config`;
`vision` and `lm` hold their dataclasses' fields), which the weights of
`config.init.llm_dir` / `config.init.vision_dir` must fit. Parameters start
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
import re
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
import tokenizers

from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import files
from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import captioner_text
from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import pipeline as vript_pipeline
from vwt_jax.data.vript import synthetic
from vwt_jax.families import captioner as captioner_family
from vwt_jax.losses import classification
from vwt_jax.models import captioner as captioner_lib
from vwt_jax.training import loop
from vwt_jax.training import optimizer as optimizer_lib
from vwt_jax.training import trainer as trainer_lib

TOKENIZER_FILE = captioner_family.TOKENIZER_FILE
MODEL_CONFIG_FILE = captioner_family.MODEL_CONFIG_FILE
PARTS = ("vision", "projector", "lm")
# What a device batch holds; 'attention' is left out because right-padded
# rows need no mask beyond the causal one (see `Captioner.__call__`).
BATCH_KEYS = ("frames", "ids", "visual", "targets", "loss_mask")


def prepare_synthetic_data(config: ml_collections.ConfigDict) -> None:
  """Writes the embedded synthetic Vript under `config.data.root` when
  `config.data.synthetic` holds `synthetic.generate` settings (idempotent).

  A folder there holding another dataset (a Vript download, your own) is
  trained on as it is; a synthetic one written with other settings stops the
  run unless `config.data.synthetic_replace`: nothing is replaced unasked.
  """
  settings = config.data.get("synthetic")
  root = config.data.root
  if not settings:
    return
  if (not files.is_remote(root) and os.path.isdir(root) and os.listdir(root)
      and not synthetic.written_here(root)):
    logging.info("%s holds a dataset not written by the synthetic generator: training on it "
                 "as it is", root)
    return
  if jax.process_index() == 0:
    try:
      summary = synthetic.generate(root, replace=config.data.get("synthetic_replace", False),
                                   **settings.to_dict())
    except synthetic.OtherSettingsError as e:
      raise ValueError(f"config.data.synthetic: {e}; from the config: "
                       "--config.data.synthetic_replace=True") from None
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
  elif config.init.get("llm_dir"):
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


class CaptionerTrainer(trainer_lib.Trainer):
  """The captioner's data, tokenizer, freezing and answer-token loss on the generic trainer.

  A model of another architecture on the same data and loss (`training.st_llm`)
  overrides the model hooks: `FREEZABLE`, `MODEL_CONFIG_FILE`, `build_model`,
  `init_inputs`, `num_visual_tokens`, `extra_inputs`, `logits`,
  `pretrained_params` and `title`.
  """
  # Name -> the parameter paths (regex) of each part `config.train.freeze` may name.
  FREEZABLE = {p: f"^{p}/" for p in PARTS}
  MODEL_CONFIG_FILE = MODEL_CONFIG_FILE

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    if config.ema_decay:
      raise ValueError("config.ema_decay: the captioner trainer keeps no EMA; set it to 0")
    unknown = sorted(set(config.train.freeze) - set(self.FREEZABLE))
    if unknown:
      raise ValueError(f"config.train.freeze has {unknown}; parts are {tuple(self.FREEZABLE)}")
    super().__init__(config, workdir, mesh)
    self.frozen_parts = tuple(config.train.freeze)
    self._frozen = (re.compile("|".join(self.FREEZABLE[p] for p in self.frozen_parts))
                    if self.frozen_parts else None)
    prepare_synthetic_data(config)
    self._samples = None
    self.tokenizer, source = prepare_tokenizer(config, workdir, self.samples)
    logging.info("tokenizer: %s", source)
    self.cfg, self.model = self.build_model()
    self._check_sizes()
    if not config.total_steps:
      config.total_steps = self._epoch_steps()

    dp = self.data_parallel
    if config.global_batch_size % (dp * config.grad_accum_steps):
      raise ValueError(f"global_batch_size={config.global_batch_size} must divide evenly over "
                       f"{dp} data-parallel devices x grad_accum_steps={config.grad_accum_steps}")
    if config.eval.batch_size % dp:
      raise ValueError(f"eval.batch_size={config.eval.batch_size} must divide evenly over "
                       f"{dp} data-parallel devices")
    self.setup_state(tuple(self.FREEZABLE[p] for p in self.frozen_parts))
    self._eval_step = jax.jit(
        self._eval_step_fn, in_shardings=(self.param_shardings, self.batch_sharding),
        out_shardings=self.replicated)
    if jax.process_index() == 0:
      files.write_text(epath.Path(workdir) / self.MODEL_CONFIG_FILE, self.cfg.to_json())
    abstract = nn.meta.unbox(self.abstract_state()["params"])
    counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v))
              for k, v in abstract.items()}
    logging.info("captioner: %s parameters; frozen %s; %d visual tokens of %d positions",
                 {k: f"{v / 1e6:.1f}M" for k, v in counts.items()},
                 self.frozen_parts or "nothing", self.num_visual_tokens, config.text.max_length)

  def build_model(self) -> tuple[Any, nn.Module]:
    """(model config, Flax module) of `self.config`."""
    cfg = captioner_family.model_config(self.config)
    return cfg, captioner_family.build(cfg)

  def init_inputs(self) -> tuple[jax.Array, ...]:
    """Small inputs `init_params` builds the parameters from."""
    return captioner_lib.init_inputs(self.cfg)

  @property
  def num_visual_tokens(self) -> int:
    return self.cfg.num_visual_tokens()

  def extra_inputs(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Device-batch entries beyond `BATCH_KEYS` (none for the captioner)."""
    del batch
    return {}

  def logits(self, params, batch, train: bool, rng) -> jax.Array:
    """Next-token logits (B, S, vocab) of a device batch."""
    logits, _ = self.model.apply(
        {"params": params}, batch["frames"], batch["ids"], batch["visual"], train=train,
        rngs={"dropout": rng} if train else None)
    return logits

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
    return {"frames": frames, **{k: text[k] for k in BATCH_KEYS[1:]},
            **self.extra_inputs(batch)}

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

  # -- state, loss ---------------------------------------------------------------

  def init_params(self, rng):
    return self.model.init(rng, *self.init_inputs())["params"]

  def pretrained_params(self) -> dict[str, Any]:
    """The parts `init_from` and `config.init`'s directories provide (host arrays)."""
    loaded = {}
    if self.config.init_from:
      loaded = dict(checkpoint_lib.load_state_subtree(self.config.init_from, "params"))
      captioner_family.check_params(loaded, self.cfg, self.config.init_from)
    init = self.config.init
    loaded = captioner_family.load_pretrained(self.cfg, init.llm_dir or None,
                                              init.vision_dir or None, loaded)
    if loaded:
      logging.info("initialised %s from %s", sorted(loaded), [
          p for p in (self.config.init_from, init.llm_dir, init.vision_dir) if p])
    return loaded

  def context(self, state, batch):
    # Each micro-batch divides by its share of the global answer-token count,
    # so their average is the mean over every answer token of the batch.
    answer_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    return {"answer_tokens": answer_tokens,
            "num_tokens": jnp.maximum(answer_tokens, 1.0) / self.config.grad_accum_steps}

  def _loss(self, params, batch, rng, train: bool, num_tokens=None):
    # Frozen parts are constants of the loss: no gradient is computed for them.
    if self._frozen is not None:
      params = jax.tree_util.tree_map_with_path(
          lambda path, x: (jax.lax.stop_gradient(x)
                           if self._frozen.search(optimizer_lib.path_name(path)) else x), params)
    logits = self.logits(params, batch, train, rng)
    return answer_token_loss(logits, batch["targets"], batch["loss_mask"], num_tokens)

  def loss(self, params, batch, rng, context, frozen):
    loss, metrics = self._loss(params, batch, rng, True, context["num_tokens"])
    # The global batch's count: the same in every micro-batch, so their mean keeps it.
    return loss, (dict(metrics, answer_tokens=context["answer_tokens"]), {})

  def _eval_step_fn(self, params, batch):
    """Sums over the batch: answer-token CE, correct tokens, answer tokens."""
    _, metrics = self._loss(params, batch, None, False, 1.0)
    return {"ce": metrics["loss"], "correct": metrics["accuracy"],
            "tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32))}

  # -- evaluation ---------------------------------------------------------------

  def title(self):
    cfg = self.cfg
    return (f"Vriptor-style captioner {self.config.variant} ({cfg.num_frames} frames x "
            f"{cfg.tokens_per_frame} tokens, {cfg.lm.n_layer}-layer LM of width {cfg.lm.dim})")

  def summary_notes(self, result):
    del result
    return [f"tokenizer: {os.path.join(self.workdir, TOKENIZER_FILE)}",
            f"model config: {os.path.join(self.workdir, self.MODEL_CONFIG_FILE)}",
            f"frozen: {', '.join(self.frozen_parts) or 'nothing'}"]

  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    """Teacher-forced loss and token accuracy over (the first `eval.num_batches`
    batches of) one pass of the samples; padding rows carry no answer tokens."""
    del writer
    ev = self.config.eval
    batches = (self.encode(b) for b in self._dataset(False, ev.batch_size))
    totals, _ = self.eval_sums(self._eval_step, state["params"], batches, ev.num_batches)
    tokens = max(totals["tokens"], 1.0)
    result = {"eval_loss": totals["ce"] / tokens, "eval_accuracy": totals["correct"] / tokens,
              "eval_answer_tokens": totals["tokens"]}
    logging.info("eval at step %d: %s", step, result)
    return result


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains a captioner and writes `summary.txt` next to the checkpoints."""
  return loop.run(CaptionerTrainer(config, workdir))
