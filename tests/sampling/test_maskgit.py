"""MaskGIT schedules, the jitted sampler, and the masked-token training objective."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from vwt_jax.losses import masked_tokens
from vwt_jax.models.maskgit_generator import (MaskGitGeneratorConfig, arccos_mask_ratio,
                                              build_generator)
from vwt_jax.sampling import maskgit


def test_arccos_mask_ratio():
  # float64: a few 2^-53 of values <= 1.
  np.testing.assert_allclose(arccos_mask_ratio(np.array([0.0, 0.5, 1.0])),
                             [1.0, 2.0 / 3.0, 0.0], atol=1e-12)
  assert isinstance(arccos_mask_ratio(jnp.asarray(0.5)), jax.Array)


def test_schedule_counts_and_temperatures():
  s = maskgit.sampling_schedule(8, 8, randomize_temperature=9.5)
  np.testing.assert_array_equal(s["mask_len"], [7, 6, 5, 4, 3, 2, 1, 1])
  np.testing.assert_array_equal(s["masked_before"], [8, 7, 6, 5, 4, 3, 2, 1])
  np.testing.assert_array_equal(s["masked_after"], [7, 6, 5, 4, 3, 2, 1, 0])
  # float64 schedules: a few 2^-53, inside the default rtol 1e-7 (also below).
  np.testing.assert_allclose(s["annealed_temp"][[0, -1]], [9.5 * 7 / 8, 0.0])
  np.testing.assert_allclose(s["softmax_temp"][[0, -1]], [1.2, 0.5])
  assert maskgit.schedule_table(s).shape == (8, len(maskgit.SCHEDULE_COLUMNS))


def test_every_step_unmasks_at_least_one_token():
  s = maskgit.sampling_schedule(64, 128)  # TiTok-S-128's setting
  assert np.all(np.diff(s["masked_before"]) < 0) and s["masked_after"][-1] == 0
  assert np.all(s["mask_len"] >= 1)


def test_guidance_decays():
  np.testing.assert_allclose(maskgit.guidance_scales(4, 3.0, "constant"), [3.0] * 4)
  # Linear: conditional-only first step, then the previous step's ratio.
  np.testing.assert_allclose(maskgit.guidance_scales(4, 3.0, "linear"), [0.0, 0.75, 1.5, 2.25])
  pc = maskgit.guidance_scales(8, 6.9, "power-cosine", 3.0)
  assert pc[0] == 1.0 and np.all(np.diff(pc) > 0) and pc[-1] < 6.9
  expected = (6.9 - 1) * (1 - math.cos(math.pi * 0.5 ** 3)) / 2 + 1
  np.testing.assert_allclose(pc[4], expected)
  with pytest.raises(ValueError, match="guidance_decay"):
    maskgit.guidance_scales(4, 3.0, "cosine")


CONFIG = MaskGitGeneratorConfig(
    model_type="UViT", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=32, image_seq_len=6, condition_num_classes=5, codebook_size=12)
LABELS = jnp.asarray([0, 3, 4], jnp.int32)


@pytest.fixture(scope="module")
def tiny_generator():
  model = build_generator(CONFIG)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 6), jnp.int32),
                            jnp.zeros((1,), jnp.int32))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype),
                                  nn.unbox(abstract))
  return model, params


def _generate(tiny_generator, rng, temperature=4.5):
  model, params = tiny_generator
  return np.asarray(maskgit.generate(
      model, params, LABELS, rng=rng, num_steps=4, guidance_scale=2.0, guidance_decay="linear",
      randomize_temperature=temperature, softmax_temperature_annealing=True))


def test_generate_is_deterministic_per_rng(tiny_generator):
  first = _generate(tiny_generator, jax.random.key(0))
  assert first.shape == (3, CONFIG.image_seq_len) and first.dtype == np.int32
  assert np.all((first >= 0) & (first < CONFIG.codebook_size))
  np.testing.assert_array_equal(first, _generate(tiny_generator, jax.random.key(0)))
  others = [_generate(tiny_generator, jax.random.key(seed)) for seed in (1, 2)]
  assert any(not np.array_equal(first, other) for other in others)
  # Temperature 0: the noise is multiplied by 0, so the rng does not matter.
  np.testing.assert_array_equal(_generate(tiny_generator, jax.random.key(1), 0.0),
                                _generate(tiny_generator, jax.random.key(2), 0.0))


def test_mask_tokens_masks_the_scheduled_count():
  tokens = jnp.tile(jnp.arange(16, dtype=jnp.int32), (64, 1))
  rng = jax.random.key(3)
  masked, mask = masked_tokens.mask_tokens(rng, tokens, mask_token_id=99)
  t = jax.random.uniform(jax.random.split(rng)[0], (64,))
  ratio = np.clip(np.arccos(np.asarray(t, np.float64)) / (np.pi / 2), 1e-6, 1.0)
  expected = np.maximum(np.round(16 * ratio), 1)
  np.testing.assert_array_equal(np.sum(mask, axis=1), expected)
  np.testing.assert_array_equal(np.asarray(masked), np.where(mask, 99, tokens))
  assert len({tuple(row) for row in np.asarray(mask)}) > 1  # positions vary per row


def test_label_drop_mask_rate():
  drop = masked_tokens.label_drop_mask(jax.random.key(0), 20000)
  assert drop.shape == (20000,) and drop.dtype == jnp.bool_
  # Binomial(20000, 0.1) / 20000 has standard deviation 0.0021: 0.01 is 4.7 of them.
  assert abs(float(jnp.mean(drop)) - masked_tokens.CLASS_LABEL_DROPOUT) < 0.01


def test_masked_token_loss_matches_torch_mlm_loss():
  logits = jnp.asarray([[[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, -0.4], [1.5, 1.0, -2.0, 0.25]]])
  targets = jnp.asarray([[0, 3, 1]])
  mask = jnp.asarray([[True, False, True]])
  loss, metrics = masked_tokens.masked_token_loss(logits, targets, mask)
  # Value of the official MLMLoss (torch CrossEntropyLoss(label_smoothing=0.1),
  # unmasked weight 0.1) on these inputs, computed once with torch 2.x.
  # Both float32: 4-way log-softmax sums, then per-token and weighted sums (the
  # 1e-8 weight epsilon moves it by < 1e-8).
  helpers.assert_allclose_f32(loss, 0.9155000448226929, reduction=4, depth=3)
  # Argmaxes are [0, 2, 0]: one of the two masked positions is right (exact).
  np.testing.assert_allclose(metrics["correct_tokens"], 0.5)
