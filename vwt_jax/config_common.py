"""What the config files in `configs/` share: the run fields, optimizer and data
sections, the `get_config` argument parser and model sections from dataclasses.

A config file imports this module and the model dataclasses it needs, nothing
else, and its `model` section holds exactly the fields of the family's model
dataclass (`families.<family>.model_config` builds it with `Config(**config.model)`).
"""

import dataclasses
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import codes
from vwt_jax.data import pipeline
from vwt_jax.data.vript import pipeline as vript_pipeline

# Fields every model dataclass has that come from the run (compute_dtype,
# param_dtype), not from `config.model`.
_RUN_FIELDS = ("dtype", "param_dtype")


def parse_arg(arg: str | None, config_file: str, options: tuple[str, ...] = (),
              default: str = "tiny") -> tuple[str, dict[str, str]]:
  """`VARIANT[,key=value...]` -> (variant, {key: value}); only `options` keys allowed."""
  variant, *rest = (arg or default).split(",")
  pairs = [p for p in rest if p]
  malformed = [p for p in pairs if "=" not in p]
  given = dict(p.split("=", 1) for p in pairs if "=" in p)
  unknown = sorted(set(given) - set(options))
  if malformed or unknown:
    expected = "VARIANT" + "".join(f"[,{o}=...]" for o in options)
    raise ValueError(f"{config_file}: unknown option(s) {malformed + unknown}; expected "
                     f"{expected}")
  return variant, given


def check_variant(variant: str, known, config_file: str) -> None:
  if variant not in known:
    raise ValueError(f"{config_file}: unknown variant {variant!r}; expected one of "
                     f"{sorted(known)}")


def model_section(cfg: Any, **updates) -> ml_collections.ConfigDict:
  """A `config.model` section holding the fields of a model dataclass instance
  (nested dataclasses as sections of their own), run dtypes left out.

  A field at None (e.g. `n_kv_head`) becomes a typed placeholder, so that
  `--config.model.NAME=VALUE` can set it.
  """
  def fields(obj):
    hints = typing.get_type_hints(type(obj))
    out = ml_collections.ConfigDict()
    for f in dataclasses.fields(obj):
      if f.name in _RUN_FIELDS:
        continue
      value = getattr(obj, f.name)
      if dataclasses.is_dataclass(value):
        value = fields(value)
      elif value is None:
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)]
        value = config_dict.placeholder(kinds[0] if len(kinds) == 1 else object)
      out[f.name] = value
    return out
  section = fields(cfg)
  section.update(updates)
  return section


def base_config(family: str, variant: str, *, total_steps: int, global_batch_size: int,
                ema_decay: float) -> ml_collections.ConfigDict:
  """The fields every run config shares: the loop, the mesh, checkpoints.

  Each config file adds its own model, data, optimizer and loss sections and
  overrides these where its recipe differs.
  """
  c = ml_collections.ConfigDict()
  c.family = family
  c.variant = variant
  c.seed = 0
  c.total_steps = total_steps
  c.global_batch_size = global_batch_size
  c.grad_accum_steps = 1
  c.compute_dtype = "bfloat16"
  c.param_dtype = "float32"
  c.mesh_shape = (-1, 1, 1)
  c.logical_axis_rules = sharding_lib.DEFAULT_LOGICAL_AXIS_RULES
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 5_000
  c.max_checkpoints_to_keep = 3
  c.async_checkpointing = True
  # A jax.profiler trace of steps [profile_start_step, + profile_num_steps)
  # into {workdir}/profile/process_0 (TensorBoard's profile plugin reads it);
  # 0 steps = off. The first steps after the start are not representative.
  c.profile_start_step = 10
  c.profile_num_steps = 0
  c.profile_all_processes = False
  # A checkpoint (ours: a workdir or step folder) or an official state dict
  # (.bin/.pt/.safetensors/.npz) whose weights initialise the model.
  c.init_from = ""
  c.ema_decay = ema_decay
  # Each config adds its evaluation sizes. Weight files of the optional metrics
  # ('' = off; the evaluation log says how to get them): the FID Inception
  # (.npz from `vwt_jax.conversion.inception`) for rFID in tokenizer evaluations
  # and the default of `vwt_jax.sample_eval`, and LPIPS (.npz from
  # `vwt_jax.conversion.lpips`, backbone `lpips_net`) for tokenizer evaluations.
  c.eval = ml_collections.ConfigDict(dict(inception_weights="", lpips_weights="",
                                          lpips_net="vgg"))
  return c


def optimizer(**overrides) -> ml_collections.ConfigDict:
  """An `optimizer` section (`training.optimizer.make_optimizer`): AdamW, clipping,
  warm-up then cosine decay; TiTok's defaults unless overridden."""
  config = ml_collections.ConfigDict(dict(
      lr=1e-4, end_lr=1e-5, schedule="cosine", warmup_steps=10_000,
      b1=0.9, b2=0.99, eps=1e-8, weight_decay=1e-4, grad_clip_norm=1.0,
      # Substrings of parameter paths excluded from weight decay, as in TiTok.
      wd_exclude=("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm",
                  "gamma", "embed"),
  ))
  config.update(overrides)
  return config


def image_data() -> ml_collections.ConfigDict:
  """A `data` section of images (`data.pipeline`)."""
  return pipeline.default_data_config()


def code_data() -> ml_collections.ConfigDict:
  """A `data` section of tokenizer codes (`data.codes`)."""
  return codes.default_codes_data_config()


def vript_data() -> ml_collections.ConfigDict:
  """A `data` section of Vript clips (`data.vript.pipeline`)."""
  return vript_pipeline.default_vript_data_config()
