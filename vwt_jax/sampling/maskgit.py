"""MaskGIT sampling of TiTok's generators (official `ImageBert.generate`).

Starting from an all-masked sequence, each of `num_steps` steps predicts every
position, samples a token for each masked one (Gumbel-max with an annealed
temperature), and re-masks the least confident ones so that the arccos
schedule's number of tokens stays masked; the last step unmasks everything.

Per-step scalars (temperatures, guidance scales, mask lengths) depend only on
the step, so they are computed once on the host in float64 like the official
Python code (`sampling_schedule`) and the whole loop runs as one jitted
`lax.fori_loop`.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import maskgit_generator

GUIDANCE_DECAYS = ("constant", "linear", "power-cosine")
# Columns of the fixtures' `schedule_*` tables, in order.
SCHEDULE_COLUMNS = ("step", "ratio", "annealed_temp", "cfg_scale", "softmax_temp", "mask_ratio",
                    "mask_len", "masked_before", "masked_after")
_GUMBEL_EPS = 1e-20


def step_ratios(num_steps: int) -> np.ndarray:
  """Progress after each step: (step + 1) / num_steps."""
  return (np.arange(num_steps) + 1.0) / num_steps


def annealed_temperatures(num_steps: int, randomize_temperature: float) -> np.ndarray:
  """Gumbel-noise scale of each step: T * (1 - ratio), reaching 0 at the last step."""
  return randomize_temperature * (1.0 - step_ratios(num_steps))


def softmax_temperatures(num_steps: int) -> np.ndarray:
  """Logit divisor of each step when annealing: 0.5 + 0.8 * (1 - ratio)."""
  return 0.5 + 0.8 * (1.0 - step_ratios(num_steps))


def guidance_scales(num_steps: int, guidance_scale: float, guidance_decay: str = "constant",
                    guidance_scale_pow: float = 3.0) -> np.ndarray:
  """CFG scale used at each step.

  'constant': `guidance_scale` throughout. 'linear': 0 at step 0 (conditional
  pass only), then the previous step's ratio times the scale (the official
  loop updates it *after* each step). 'power-cosine' (MDT):
  `(gs - 1) * (1 - cos(pi * (step / S) ** pow)) / 2 + 1`.
  """
  if guidance_decay not in GUIDANCE_DECAYS:
    raise ValueError(f"guidance_decay must be one of {GUIDANCE_DECAYS}, got {guidance_decay!r}")
  steps = np.arange(num_steps, dtype=np.float64)
  if guidance_decay == "constant":
    return np.full(num_steps, float(guidance_scale))
  if guidance_decay == "linear":
    return steps / num_steps * guidance_scale
  scale_step = (1.0 - np.cos((steps / num_steps) ** guidance_scale_pow * math.pi)) / 2.0
  return (guidance_scale - 1.0) * scale_step + 1.0


def target_mask_lengths(num_steps: int, seq_len: int) -> np.ndarray:
  """floor(L * arccos_mask_ratio(ratio)) per step, before clamping to the masked count."""
  ratios = maskgit_generator.arccos_mask_ratio(step_ratios(num_steps))
  return np.floor(seq_len * ratios).astype(np.int64)


def clamp_mask_length(target, num_masked):
  """max(1, min(num_masked - 1, target)): always unmask at least one token."""
  xp = jnp if isinstance(num_masked, jax.Array) or isinstance(target, jax.Array) else np
  return xp.maximum(1, xp.minimum(num_masked - 1, target))


def sampling_schedule(num_steps: int, seq_len: int, *, guidance_scale: float = 3.0,
                      guidance_decay: str = "constant", guidance_scale_pow: float = 3.0,
                      randomize_temperature: float = 4.5) -> dict[str, np.ndarray]:
  """Every per-step quantity (float64 / int64 arrays of length `num_steps`).

  Keys are `SCHEDULE_COLUMNS` plus `target_mask_len`. `masked_before/after`
  and `mask_len` assume no confidence ties (with ties, all tied tokens are
  re-masked); after the last step nothing is masked.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  ratio = step_ratios(num_steps)
  target = target_mask_lengths(num_steps, seq_len)
  masked_before, mask_len = np.zeros(num_steps, np.int64), np.zeros(num_steps, np.int64)
  masked = seq_len
  for step in range(num_steps):
    masked_before[step] = masked
    mask_len[step] = clamp_mask_length(target[step], masked)
    masked = 0 if step == num_steps - 1 else mask_len[step]
  masked_after = np.append(mask_len[:-1], 0)
  return dict(
      step=np.arange(num_steps), ratio=ratio,
      annealed_temp=annealed_temperatures(num_steps, randomize_temperature),
      cfg_scale=guidance_scales(num_steps, guidance_scale, guidance_decay, guidance_scale_pow),
      softmax_temp=softmax_temperatures(num_steps),
      mask_ratio=maskgit_generator.arccos_mask_ratio(ratio),
      mask_len=mask_len, masked_before=masked_before, masked_after=masked_after,
      target_mask_len=target)


def schedule_table(schedule: dict[str, np.ndarray]) -> np.ndarray:
  """(num_steps, 9) float64 table in the fixtures' `schedule_*` column order."""
  return np.stack([np.asarray(schedule[c], np.float64) for c in SCHEDULE_COLUMNS], axis=1)


def gumbel_noise(rng: jax.Array, shape) -> jax.Array:
  """-log(-log(u)) with both logs clamped at 1e-20, as the official sampler."""
  u = jax.random.uniform(rng, shape, jnp.float32)
  return -jnp.log(jnp.maximum(-jnp.log(jnp.maximum(u, _GUMBEL_EPS)), _GUMBEL_EPS))


@functools.partial(jax.jit, static_argnames=("model", "use_guidance"))
def _sample(model: nn.Module, params: Any, labels: jax.Array, rng: jax.Array,
            annealed_temp: jax.Array, cfg_scale: jax.Array, softmax_temp: jax.Array,
            target_mask_len: jax.Array, guide_from_uncond: jax.Array, *,
            use_guidance: bool) -> jax.Array:
  config = model.config
  batch, seq_len, mask_id = labels.shape[0], config.image_seq_len, config.mask_token_id
  num_steps = annealed_temp.shape[0]
  variables = {"params": params}

  def predict(ids, step):
    if not use_guidance:
      return model.apply(variables, ids, labels)[0]
    # One forward over [conditional; unconditional] halves.
    drop = jnp.arange(2 * batch) >= batch
    both, _ = model.apply(variables, jnp.concatenate([ids, ids]),
                          jnp.concatenate([labels, labels]), drop_labels=drop)
    cond, uncond = both[:batch], both[batch:]
    scale = cfg_scale[step]
    # power-cosine guides from the unconditional logits, the other decays from the conditional.
    guided = jnp.where(guide_from_uncond, uncond, cond) + (cond - uncond) * scale
    # A zero scale means the official loop ran the conditional pass only.
    return jnp.where(scale != 0, guided, cond)

  def body(step, ids):
    is_mask = ids == mask_id
    logits = predict(ids, step) / softmax_temp[step]
    temp = annealed_temp[step]
    sample_rng, confidence_rng = jax.random.split(jax.random.fold_in(rng, step))
    sampled = jnp.argmax(logits + temp * gumbel_noise(sample_rng, logits.shape), axis=-1)
    sampled_logits = jnp.take_along_axis(logits, sampled[..., None], axis=-1)[..., 0]
    sampled = jnp.where(is_mask, sampled, ids)
    sampled_logits = jnp.where(is_mask, sampled_logits, jnp.inf)
    # The official code takes the masked count of the first row for the whole batch.
    mask_len = clamp_mask_length(target_mask_len[step], jnp.sum(is_mask[0]).astype(jnp.int32))
    confidence = sampled_logits + temp * gumbel_noise(confidence_rng, sampled_logits.shape)
    cut_off = jnp.sort(confidence, axis=-1)[:, mask_len - 1]
    remasked = jnp.where(confidence <= cut_off[:, None], mask_id, sampled)
    return jnp.where(step == num_steps - 1, sampled, remasked)

  ids = jnp.full((batch, seq_len), mask_id, jnp.int32)
  return jax.lax.fori_loop(0, num_steps, body, ids)


def generate(model: nn.Module, params: Any, labels: jax.Array, *, rng: jax.Array,
             num_steps: int = 8, guidance_scale: float = 3.0, guidance_decay: str = "constant",
             guidance_scale_pow: float = 3.0, randomize_temperature: float = 4.5,
             softmax_temperature_annealing: bool = False) -> jax.Array:
  """Samples token sequences (B, image_seq_len) int32 in [0, codebook_size).

  Args:
    model: an `ImageBert` / `UViTBert` (anything with `.config` and the same
      `apply(variables, tokens, labels, drop_labels=...)` interface).
    params: its `params` collection.
    labels: (B,) class labels in [0, condition_num_classes).
    rng: PRNG key; the result is a deterministic function of it. With
      `randomize_temperature=0` the noise is multiplied by 0 and the result
      does not depend on it.
    num_steps, guidance_scale, guidance_decay, guidance_scale_pow,
    randomize_temperature, softmax_temperature_annealing: as the official
      `ImageBert.generate` (same defaults); the released settings are in `configs/maskgit.py`.
  """
  schedule = sampling_schedule(
      num_steps, model.config.image_seq_len, guidance_scale=guidance_scale,
      guidance_decay=guidance_decay, guidance_scale_pow=guidance_scale_pow,
      randomize_temperature=randomize_temperature)
  softmax_temp = (schedule["softmax_temp"] if softmax_temperature_annealing
                  else np.ones(num_steps))
  f32 = lambda name: jnp.asarray(schedule[name], jnp.float32)
  return _sample(model, params, jnp.asarray(labels, jnp.int32), rng, f32("annealed_temp"),
                 f32("cfg_scale"), jnp.asarray(softmax_temp, jnp.float32),
                 jnp.asarray(schedule["target_mask_len"], jnp.int32),
                 jnp.asarray(guidance_decay == "power-cosine"),
                 use_guidance=bool(np.any(schedule["cfg_scale"] != 0)))
