"""Generator trainer over tokenizer codes: LlamaGen GPT and TiTok's MaskGIT.

Both train on a code dataset written by `vwt_jax.tools.extract_codes` (2D
VQGAN grids or TiTok's 1D sequences) and differ in their family (`config.family`):

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
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from vwt_jax.core import images as images_lib
from vwt_jax.data import codes as codes_lib
from vwt_jax.families import generator as generator_lib
from vwt_jax.losses import classification
from vwt_jax.losses import masked_tokens
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.training import loop
from vwt_jax.training import trainer as trainer_lib


def gpt_loss(trainer, params, batch, rng, train: bool):
  """Teacher-forced next-token cross-entropy and accuracy of the GPT."""
  cfg = trainer.cfg
  targets = batch["codes"]
  if cfg.model_type == "t2i":
    # Padded caption slots are seen only by themselves (`dataset/t2i.py`).
    cond = batch["caption_emb"]
    kwargs = {"attn_mask": gpt_lib.t2i_attention_mask(
        batch["caption_mask"], cfg.cls_token_num + targets.shape[1] - 1)}
  else:
    cond, kwargs = batch["labels"], {}
  logits, _ = trainer.model.apply(
      {"params": params}, cond, targets[:, :-1], train=train,
      rngs={"dropout": rng} if train else None, **kwargs)
  logits = logits[:, cfg.cls_token_num - 1:]
  loss = classification.token_cross_entropy(logits, targets, batch.get("valid"))
  accuracy = jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32))
  return loss, {"loss": loss, "accuracy": accuracy}


def maskgit_loss(trainer, params, batch, rng, train: bool):
  """Masked-token loss of the MaskGIT generator (class dropout when training)."""
  losses = trainer.config.losses
  tokens, labels = batch["codes"], batch["labels"]
  if rng is None:  # Evaluation: a fixed masking so the numbers are comparable.
    rng = jax.random.key(0)
  mask_rng, drop_rng, dropout_rng = jax.random.split(rng, 3)
  masked, mask = masked_tokens.mask_tokens(mask_rng, tokens, trainer.cfg.mask_token_id)
  drop = (masked_tokens.label_drop_mask(drop_rng, tokens.shape[0], losses.class_dropout)
          if train else None)
  logits, _ = trainer.model.apply(
      {"params": params}, masked, labels, train=train, drop_labels=drop,
      rngs={"dropout": dropout_rng} if train else None)
  return masked_tokens.masked_token_loss(
      logits, tokens, mask, label_smoothing=losses.label_smoothing,
      unmasked_weight=losses.unmasked_weight)


LOSSES = {"gpt": gpt_loss, "maskgit": maskgit_loss}


class GeneratorTrainer(trainer_lib.Trainer):
  """A GPT or MaskGIT generator over a code dataset on the generic trainer."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    super().__init__(config, workdir, mesh)
    self.generator = generator_lib.Generator(config, self.mesh)
    self.cfg, self.model = self.generator.cfg, self.generator.model
    self._loss = LOSSES[config.family]
    self.setup_state(gpt_lib.FROZEN_PARAMS if config.family == "gpt" else ())
    self._eval_step = jax.jit(
        lambda params, batch: self._loss(self, params, batch, None, False)[1],
        in_shardings=(self.param_shardings, self.batch_sharding), out_shardings=self.replicated)

  def init_params(self, rng):
    args, kwargs = self.generator.init_args(self.data_parallel)
    return self.model.init(rng, *args, **kwargs)["params"]

  def pretrained_params(self):
    if not self.config.init_from:
      return None
    return self.generator.family.load_params(self.config.init_from, self.config, self.cfg)

  def train_iterator(self):
    return iter(codes_lib.create_code_dataset(
        self.config.data, split=self.config.data.train_split,
        global_batch_size=self.config.global_batch_size, seed=self.config.seed, train=True))

  def loss(self, params, batch, rng, context, frozen):
    loss, metrics = self._loss(self, params, batch, rng, True)
    return loss, (metrics, {})

  def title(self):
    gen = self.generator
    return f"{gen.description} on {gen.seq_len} tokens of {gen.vocab_size} codes"

  def summary_notes(self, result):
    del result
    return (["samples.png: one row per class of config.sampling.classes"]
            if self.generator.conditional_on_class else [])

  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    """Held-out loss over `eval.num_batches` batches; `samples.png` for class generators."""
    ev = self.config.eval
    params = self.eval_params(state)
    ds = codes_lib.create_code_dataset(
        self.config.data, split=self.config.data.eval_split, global_batch_size=ev.batch_size,
        seed=self.config.seed, train=False)
    totals, batches = self.eval_sums(
        self._eval_step, params, ({k: v for k, v in b.items() if k != "mask"} for b in ds),
        ev.num_batches)
    result = {f"eval_{k}": v / max(batches, 1) for k, v in totals.items()}
    if self.generator.conditional_on_class:
      grid = self.generator.class_grid(params)
      images_lib.save_grid(grid, os.path.join(self.workdir, "samples.png"))
      writer.write_images(step, {"samples": grid[None]})
    logging.info("eval at step %d: %s", step, result)
    return result


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains a generator and writes `summary.txt` next to the checkpoints."""
  return loop.run(GeneratorTrainer(config, workdir))
