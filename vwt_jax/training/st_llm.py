"""Fine-tuning ST-LLM (the released Vriptor's architecture) on Vript, as its
stage-1 and stage-2 recipes do (`configs/vriptor.py` with `arch=st_llm`).

The captioner trainer's data, text layout, answer-token loss and evaluation
(`training/captioner.py`) with ST-LLM in place of the Vriptor-style captioner:

* every sample's instruction also goes through the Q-Former, tokenized with
  bert-base-uncased's vocabulary (`config.tokenizer.qformer`) as
  `captioner_text.qformer_instruction` derives it from the prompt (the
  request without its voice-over), padded to `config.text.qformer_length`
  tokens so that batches keep one shape (a longer instruction stops the run
  naming the field: the official code would read all of it);
* parts to freeze (`config.train.freeze`): 'vision' (EVA ViT-g and
  `ln_vision`), 'qformer' (the Q-Former and its queries, not `llama_proj`),
  'llama_proj', 'residual' (the video input's projections) and 'lm'. The
  recipes freeze the first two, as ST-LLM's configs (`freeze_vit`,
  `freeze_qformer`) do;
* `config.init.stllm_dir`: a folder in the released layout
  (`conversion.st_llm.load_vriptor`; the official stages start from ST-LLM's
  or the previous stage's weights); `init_from`: one of these runs.

The run folder holds `st_llm_config.json`, the model's `STLLMConfig`.
"""

from typing import Any

from absl import logging
import jax
import numpy as np

from vwt_jax.conversion import st_llm as st_llm_conversion
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import hub
from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import captioner_text
from vwt_jax.families import st_llm as st_llm_family
from vwt_jax.models import st_llm
from vwt_jax.training import captioner
from vwt_jax.training import loop


class STLLMTrainer(captioner.CaptionerTrainer):
  """ST-LLM on the captioner trainer (module docstring)."""
  FREEZABLE = {"vision": "^vision/", "qformer": "^qformer/(?!llama_proj/)",
               "llama_proj": "^qformer/llama_proj/", "residual": "^(down_proj|up_proj)/",
               "lm": "^lm/"}
  MODEL_CONFIG_FILE = st_llm_family.MODEL_CONFIG_FILE

  def build_model(self):
    cfg = st_llm_family.model_config(self.config)
    t = self.config.text
    self.qformer_tokenizer = text_tokenizer.load_qformer_tokenizer(
        hub.resolve(self.config.tokenizer.qformer), t.qformer_length)
    size = self.qformer_tokenizer.get_vocab_size(with_added_tokens=True)
    if size > cfg.qformer.vocab_size:
      raise ValueError(f"config.tokenizer.qformer has {size} tokens, more than "
                       f"config.model.qformer.vocab_size={cfg.qformer.vocab_size}")
    # Padded to one length; not truncated, so that a longer instruction is reported.
    self.qformer_tokenizer.no_truncation()
    self.qformer_tokenizer.enable_padding(
        direction="right", pad_id=text_tokenizer.special_id(self.qformer_tokenizer, "[PAD]"),
        pad_token="[PAD]", length=t.qformer_length)
    return cfg, st_llm.STLLM(cfg)

  def init_inputs(self):
    return st_llm.init_inputs(self.cfg)

  @property
  def num_visual_tokens(self) -> int:
    return self.cfg.num_video_tokens(self.config.data.num_frames)

  def extra_inputs(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """The Q-Former's instruction ids and mask (B, qformer_length); padding rows get none."""
    mask = batch.get("mask")
    texts = [captioner_text.qformer_instruction(str(m)) if mask is None or mask[i] else ""
             for i, m in enumerate(batch["model_input"])]
    limit = self.config.text.qformer_length
    encoded = self.qformer_tokenizer.encode_batch(texts)
    longest = max(len(e.ids) for e in encoded)
    if longest > limit:
      raise ValueError(f"an instruction of {longest} Q-Former tokens is longer than "
                       f"config.text.qformer_length={limit}: {texts[0][:80]!r}...")
    return {"qformer_ids": np.array([e.ids for e in encoded], np.int32),
            "qformer_mask": np.array([e.attention_mask for e in encoded], np.int32)}

  def logits(self, params, batch, train: bool, rng) -> jax.Array:
    logits, _ = self.model.apply(
        {"params": params}, batch["frames"], batch["ids"], batch["visual"],
        batch["qformer_ids"], batch["qformer_mask"], train=train,
        rngs={"dropout": rng} if train else None)
    return logits

  def pretrained_params(self) -> dict[str, Any]:
    """`init_from`'s parameters (a run of this trainer), else `init.stllm_dir`'s;
    their shapes must be the model's (`train_state.merge_params` names any other)."""
    if self.config.init_from:
      loaded = dict(checkpoint_lib.load_state_subtree(self.config.init_from, "params"))
      source = self.config.init_from
    elif self.config.init.stllm_dir:
      _, loaded = st_llm_conversion.load_vriptor(
          hub.resolve(self.config.init.stllm_dir), param_dtype=self.cfg.lm.param_dtype,
          scan_layers=self.cfg.lm.scan_layers)
      source = self.config.init.stllm_dir
    else:
      return {}
    logging.info("initialised %s from %s", sorted(loaded), source)
    return loaded

  def title(self):
    cfg = self.cfg
    return (f"ST-LLM {self.config.variant} ({self.config.data.num_frames} frames, "
            f"{cfg.video_input} video input of {self.num_visual_tokens} tokens, "
            f"{cfg.lm.n_layer}-layer LM of width {cfg.lm.dim})")


def train(config, workdir: str) -> dict[str, Any]:
  """Fine-tunes ST-LLM and writes `summary.txt` next to the checkpoints."""
  return loop.run(STLLMTrainer(config, workdir))
