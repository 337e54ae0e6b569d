import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers
from vwt_jax.losses import adversarial

REAL = jnp.array([2.0, 0.5, -1.0])
FAKE = jnp.array([-2.0, 0.0, 1.5])


def test_hinge_hand_values():
  # relu(1 - real) = 0, .5, 2 -> 5/6 ; relu(1 + fake) = 0, 1, 2.5 -> 7/6
  # float32 against exact: means of 3, then the average of the two.
  helpers.assert_allclose_f32(adversarial.hinge_d_loss(REAL, FAKE), 1.0, reduction=3, depth=2)
  helpers.assert_allclose_f32(adversarial.hinge_g_loss(FAKE), 1.0 / 6.0, reduction=3)
  helpers.assert_allclose_f32(adversarial.discriminator_loss("hinge", REAL, FAKE), 1.0,
                              reduction=3, depth=2)


def test_non_saturating_matches_torch_bce():
  real, fake = torch.tensor(np.asarray(REAL)), torch.tensor(np.asarray(FAKE))
  want_d = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) +
                  F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
  want_g = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
  # Two float32 softplus formulas, means of 3, then the average of the two.
  helpers.assert_allclose_f32(adversarial.non_saturating_d_loss(REAL, FAKE), want_d,
                              reduction=3, depth=2)
  helpers.assert_allclose_f32(adversarial.generator_loss("non_saturating", FAKE), want_g,
                              reduction=3)


def test_unknown_kinds_raise():
  with pytest.raises(ValueError, match="hinge"):
    adversarial.discriminator_loss("wasserstein", REAL, FAKE)
  with pytest.raises(ValueError, match="non_saturating"):
    adversarial.generator_loss("wasserstein", FAKE)


def test_adopt_weight_gates_on_traced_step():
  gate = jax.jit(lambda step: adversarial.adopt_weight(step, 20000, 0.01))
  assert float(gate(19999)) == 0.0
  # A select of the float32 constant: off 0.01 by its rounding only (< u = 6e-8
  # relative, under the default rtol 1e-7).
  np.testing.assert_allclose(gate(20000), 0.01)
  np.testing.assert_allclose(adversarial.adopt_weight(25000, 20000), 1.0)


def test_lecam_hand_values():
  state = adversarial.LeCamState(jnp.float32(0.3), jnp.float32(-0.2))
  real = jnp.array([[1.0], [0.0]])  # mean 0.5
  fake = jnp.array([[0.2], [-0.4]])  # mean -0.1
  # relu(0.5 + 0.2)^2 + relu(0.3 + 0.1)^2; float32 against exact: means of 2,
  # then the sums of squares.
  helpers.assert_allclose_f32(adversarial.lecam_loss(real, fake, state), 0.49 + 0.16,
                              reduction=2, depth=2)
  clipped = adversarial.LeCamState(jnp.float32(-1.0), jnp.float32(1.0))
  assert float(adversarial.lecam_loss(real, fake, clipped)) == 0.0

  new = adversarial.lecam_update(state, real, fake, decay=0.999)
  helpers.assert_allclose_f32(new.ema_real, 0.3 * 0.999 + 0.5 * 0.001, reduction=2, depth=2)
  helpers.assert_allclose_f32(new.ema_fake, -0.2 * 0.999 - 0.1 * 0.001, reduction=2, depth=2)


def test_lecam_state_threads_through_jit_and_blocks_gradient():
  state = adversarial.lecam_init()
  assert float(state.ema_real) == 0.0 and float(state.ema_fake) == 0.0

  @jax.jit
  def step(state, real, fake):
    loss = adversarial.hinge_d_loss(real, fake) + 0.001 * adversarial.lecam_loss(real, fake, state)
    return loss, adversarial.lecam_update(state, real, fake)

  _, state = step(state, REAL, FAKE)
  # 0.001 * a float32 mean of 3 logits against float64: the scale is 0.001 times
  # the mean of |logits| (the summed terms).
  for ema, logits in ((state.ema_real, REAL), (state.ema_fake, FAKE)):
    helpers.assert_allclose_f32(ema, 0.001 * float(jnp.mean(logits)), reduction=3, depth=2,
                                scale=0.001 * float(jnp.mean(jnp.abs(logits))))
  grad = jax.grad(lambda r: adversarial.lecam_update(state, r, FAKE).ema_real)(REAL)
  np.testing.assert_array_equal(grad, 0.0)
