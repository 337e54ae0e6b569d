"""`parity titok-generator`: TiTok's MaskGIT generators (ImageBert, UViTBert).

Per `generator_*` stem: conditional / unconditional logits, the sampling
schedules (`schedule_<decay>`) and the temperature-0 generations
(`generate_T0_<decay>`), with the settings of the stem's config json.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.conversion.maskgit_generator import load_generator
from vwt_jax.models.maskgit_generator import MaskGitGeneratorConfig
from vwt_jax.sampling import maskgit
from vwt_jax.tools.parity_common import (ACTIVATION_TOL, EXACT, LOSS_TOL, Result, compare_io,
                                         load_arrays, load_json, run_stems)

_GENERATE_PREFIX, _SCHEDULE_PREFIX = "generate_T0_", "schedule_"


def _decay(name: str, prefix: str) -> str:
  """`generate_T0_power_cosine` -> 'power-cosine'."""
  return name[len(prefix):].replace("_", "-")


def _generator_stem(fixture_dir: str, stem: str) -> list[Result]:
  meta = load_json(fixture_dir, f"{stem}_config.json")
  config = MaskGitGeneratorConfig.from_official(meta["official_config"], meta["model_type"],
                                                dtype=jnp.float32, param_dtype=jnp.float32)
  model, params = load_generator(os.path.join(fixture_dir, f"{stem}_state_dict.npz"), config)
  io = load_arrays(fixture_dir, f"{stem}_io.npz")
  kwargs = dict(meta["generate_kwargs"])
  if "num_sample_steps" in kwargs:  # the official keyword
    kwargs["num_steps"] = kwargs.pop("num_sample_steps")
  tokens, labels = jnp.asarray(io["input_ids"]), jnp.asarray(io["condition"])

  ours = {}
  with jax.default_matmul_precision("highest"):
    forward = jax.jit(lambda p, drop: model.apply({"params": p}, tokens, labels,
                                                  drop_labels=drop)[0])
    ours["logits_cond"] = forward(params, jnp.zeros(labels.shape, bool))
    ours["logits_uncond"] = forward(params, jnp.ones(labels.shape, bool))
    for name in io:
      if name.startswith(_GENERATE_PREFIX):
        decay = _decay(name, _GENERATE_PREFIX)
        if decay in maskgit.GUIDANCE_DECAYS:
          ours[name] = maskgit.generate(model, params, labels, rng=jax.random.key(0),
                                        guidance_decay=decay, **kwargs)
      elif name.startswith(_SCHEDULE_PREFIX):
        decay = _decay(name, _SCHEDULE_PREFIX)
        if decay in maskgit.GUIDANCE_DECAYS:
          ours[name] = maskgit.schedule_table(maskgit.sampling_schedule(
              kwargs["num_steps"], config.image_seq_len, guidance_scale=kwargs["guidance_scale"],
              guidance_decay=decay, guidance_scale_pow=kwargs["guidance_scale_pow"],
              randomize_temperature=meta["schedule_randomize_temperature"]))
  return compare_io(stem, io, ours, ("input_ids", "condition"), _tolerance)


def _tolerance(name: str, ref: np.ndarray) -> dict:
  if np.issubdtype(ref.dtype, np.integer):
    return EXACT
  if name.startswith(_SCHEDULE_PREFIX):
    # Host-side float64 arithmetic on both sides.
    return LOSS_TOL
  return ACTIVATION_TOL


def run_generators(fixture_dir: str) -> list[Result]:
  """Every `generator_*` stem: logits, sampling schedules and deterministic generations."""
  return run_stems(fixture_dir, "generator", _generator_stem)
