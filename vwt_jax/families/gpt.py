"""LlamaGen's GPT generators: config (with sizes from the code dataset), weights, sampling."""

from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

from vwt_jax.conversion import llamagen as llamagen_conversion
from vwt_jax.families import common
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.sampling import autoregressive

TRAINER = "vwt_jax.training.generator"
# What the code dataset decides when the config leaves it unset (None).
DATASET_FIELDS = ("vocab_size", "block_size", "rope_2d", "num_classes", "caption_dim",
                  "cls_token_num")


def model_config(config: ml_collections.ConfigDict, metadata=None) -> gpt_lib.GPTConfig:
  """`GPTConfig(**config.model)`, unset sizes taken from the code dataset's `metadata`.

  2D RoPE over VQGAN grids, 1D over TiTok sequences; a t2i GPT takes its
  caption width and prefix length (the caption length) from a captioned
  dataset. Without a class count (a tokenizer alone, or captions) c2i keeps
  the reference's 1000 classes.
  """
  fields = dict(config.model)
  if metadata is not None:
    code_shape = tuple(metadata.code_shape)
    given = dict(vocab_size=int(metadata.vocab_size), block_size=int(np.prod(code_shape)),
                 rope_2d=len(code_shape) == 2)
    if metadata.num_classes and fields["model_type"] == "c2i":
      given["num_classes"] = int(metadata.num_classes)
    if getattr(metadata, "caption_dim", 0) and fields["model_type"] == "t2i":
      given.update(caption_dim=int(metadata.caption_dim),
                   cls_token_num=int(metadata.caption_length))
    common.fill_from_dataset(fields, given, config.data.dir)
  if fields["num_classes"] is None:
    fields["num_classes"] = 1000
  missing = [k for k in DATASET_FIELDS if fields[k] is None]
  if missing:
    raise ValueError(f"config.model: {missing} unknown; set them or config.data.dir "
                     "to a code dataset whose metadata.json gives them")
  return common.from_fields(gpt_lib.GPTConfig, fields, **common.dtypes(config))


def build(cfg: gpt_lib.GPTConfig) -> gpt_lib.GPT:
  return gpt_lib.GPT(cfg)


def init_args(cfg: gpt_lib.GPTConfig, batch: int):
  """(args, kwargs) of `module.init` for a batch of `batch` rows."""
  idx = jnp.zeros((batch, cfg.block_size - 1), jnp.int32)
  return (gpt_lib.dummy_condition(cfg, batch), idx), {"train": False}


def load_params(path: str, config: ml_collections.ConfigDict, cfg: gpt_lib.GPTConfig) -> Any:
  """Parameters from our run or an official `c2i_*.pt` / `t2i_*.pt` file."""
  if common.is_run(path):
    return common.run_params(path, config)
  return llamagen_conversion.convert_gpt(common.official_state_dict(path), cfg)


def sizes(cfg: gpt_lib.GPTConfig) -> tuple[int, int, int, bool]:
  """(codes per sample, code vocabulary, classes, conditioned on a class label)."""
  return cfg.block_size, cfg.vocab_size, cfg.num_classes, cfg.model_type == "c2i"


def description(config: ml_collections.ConfigDict, cfg: gpt_lib.GPTConfig) -> str:
  return (f"LlamaGen GPT {config.variant} ({cfg.model_type}, "
          f"{'2D' if cfg.rope_2d else '1D'} RoPE)")


def sampling_rules(cfg: gpt_lib.GPTConfig) -> dict[str, tuple[Callable[[Any], bool], str]]:
  """Each setting the KV-cache sampler reads: (test of a valid value, what is valid)."""
  if cfg.has_null_condition:
    guidance = (lambda v: v >= 1, "a guidance scale >= 1 (1 = no guidance)")
  else:
    guidance = (lambda v: v == 1, "1 (no guidance): this GPT was trained without class "
                "dropout, so it has no null class to guide with")
  vocab = cfg.vocab_size
  return {
      "cfg_scale": guidance,
      "cfg_interval": (lambda v: v >= -1, "-1 (guide every token) or k >= 0 (guide "
                       "image tokens 0..k+1)"),
      "temperature": (lambda v: v > 0, "a temperature > 0"),
      "top_k": (lambda v: 0 <= v <= vocab, f"0 (keep all) to {vocab} (the vocabulary)"),
      "top_p": (lambda v: 0 < v <= 1, "0 < top_p <= 1 (1 = off)"),
  }


def sample(model: gpt_lib.GPT, params: Any, cond, rng, settings: dict, mesh, rules,
           emb_mask=None):
  """Codes for labels (c2i) or left-padded captions + `emb_mask` (t2i)."""
  return autoregressive.generate(
      model, params, cond, num_tokens=model.config.block_size, rng=rng,
      cfg_scale=settings["cfg_scale"], cfg_interval=settings["cfg_interval"],
      temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
      emb_mask=emb_mask, mesh=mesh, rules=rules)
