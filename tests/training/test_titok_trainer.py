"""The TiTok trainer end to end on tiny models and the synthetic shapes."""

import functools
import json
import os
import signal

import chex
import flax.linen as nn
import grain
import jax
import numpy as np
import pytest

import helpers
from helpers import tiny_titok_config
from vwt_jax import main as main_lib
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import sharding
from vwt_jax.families import common
from vwt_jax.families import titok as titok_family
from vwt_jax.models import maskgit_vqgan
from vwt_jax import reconstruct as reconstruct_lib
from vwt_jax.training import loop
from vwt_jax.training import titok as titok_trainer


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


class _Interrupt(grain.DatasetIterator):
  """Wraps the trainer's iterator to act once, when batch `at` is drawn."""

  def __init__(self, iterator, at, action):
    super().__init__(iterator)
    self._at, self._action, self._drawn = at, action, 0

  def __next__(self):
    batch = next(self._parent)
    self._drawn += 1
    if self._drawn == self._at:
      batch = self._action(batch)
    return batch

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


def _run(config, workdir, monkeypatch=None, at=None, action=None):
  if action is not None:
    original = titok_trainer.TiTokTrainer.train_iterator

    def patched(self):
      # +1: the loop peeks one batch (and rewinds) to compile the step.
      return _Interrupt(original(self), at + 1, action)

    monkeypatch.setattr(titok_trainer.TiTokTrainer, "train_iterator", patched)
  result = main_lib.run(config, str(workdir))
  if action is not None:
    monkeypatch.undo()
  return result


def test_resume_after_crash_and_preemption_repeats_the_same_losses(
    shapes_dir, tmp_path, monkeypatch):
  config = tiny_titok_config(shapes_dir, total_steps=6, log_every=1, checkpoint_every=2)
  _run(config, tmp_path / "straight")
  expected = _losses(tmp_path / "straight")
  assert sorted(expected) == [1, 2, 3, 4, 5, 6]

  # A crash while drawing batch 4: the newest checkpoint is step 2.
  def crash(batch):
    raise RuntimeError("simulated crash")

  with pytest.raises(RuntimeError, match="simulated crash"):
    _run(config, tmp_path / "crashed", monkeypatch, at=4, action=crash)
  assert checkpoint_lib.Checkpointer(
      str(tmp_path / "crashed" / "checkpoints"), save_interval_steps=2,
      max_to_keep=3).latest_step() == 2
  # SIGTERM while step 3 (the first after resuming) runs: a checkpoint at
  # step 3, then a clean exit.
  def preempt(batch):
    os.kill(os.getpid(), signal.SIGTERM)
    return batch

  result = _run(config, tmp_path / "crashed", monkeypatch, at=1, action=preempt)
  assert result["step"] == 3
  result = _run(config, tmp_path / "crashed")
  assert result["step"] == 6
  resumed = _losses(tmp_path / "crashed")
  # The resumed run replays the same compiled steps on the exact checkpointed
  # state and the same batches on this machine: equal; 1e-6 is margin only.
  for step in (3, 4, 5, 6):
    np.testing.assert_allclose(resumed[step], expected[step], rtol=1e-6, err_msg=f"step {step}")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    shapes_dir, tmp_path, monkeypatch):
  config = tiny_titok_config(shapes_dir, total_steps=6, checkpoint_every=2, log_every=1)

  def poison(batch):
    batch["image"] = np.full_like(batch["image"], np.nan)
    return batch

  with pytest.raises(loop.NonFiniteLossError, match="step 3.*last good checkpoint is step 2"):
    _run(config, tmp_path, monkeypatch, at=3, action=poison)
  params = checkpoint_lib.load_state_subtree(str(tmp_path), "params")
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def _one_step(config, mesh, batch):
  trainer = titok_trainer.TiTokTrainer(config, "/tmp/unused", mesh=mesh)
  state = trainer.init_state(jax.random.key(0))
  global_batch = sharding.host_batch_to_global(batch, mesh)
  state, metrics = trainer.train_step(state, global_batch, jax.random.key(1))
  return trainer, state, jax.device_get(metrics)


# Without codebook restart (it sees only the last micro-batch's codes under
# accumulation): the sharded and accumulation tests then share one compiled step.
NO_RESTART = {"train.dead_code_threshold": 0.0}


def test_sharded_step_matches_single_device(shapes_dir):
  config = tiny_titok_config(shapes_dir, **NO_RESTART)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
           "label": np.arange(8, dtype=np.int32)}
  mesh8 = sharding.create_mesh((-1, 2, 2))
  mesh1 = sharding.create_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer8, state8, m8 = _one_step(config, mesh8, batch)
  _, state1, m1 = _one_step(config, mesh1, batch)
  # Sharding reorders the sums. Longest: the loss's mean over 8*16*16*3 pixels;
  # depth: patch embed, 6 dots per block, token/quantizer/embed projections,
  # ffn, conv (19), then the discriminator's 7 for the adversarial term.
  helpers.assert_allclose_f32(m8["loss"], m1["loss"], reduction=8 * 16 * 16 * 3, depth=26)
  # Adam's first step moves a parameter by <= lr (|m / (sqrt(v) + eps)| <= 1)
  # plus lr * wd * |p|, either way for a gradient that rounding can flip.
  lr, wd = float(m1["lr"]), config.optimizer.weight_decay
  chex.assert_trees_all_close(jax.device_get(state8["params"]),
                              jax.device_get(state1["params"]), atol=2 * lr, rtol=2 * lr * wd)
  # The parameters really are split as the logical rules say.
  kernel = state8["params"]["encoder"]["transformer_0"]["mlp"]["c_fc"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # Adam's moments follow their parameter; the step counters are replicated.
  specs = {s.spec for s in jax.tree.leaves(trainer8.state_shardings["opt_state"])}
  assert jax.sharding.PartitionSpec("fsdp", "tensor") in specs
  assert jax.sharding.PartitionSpec() in specs
  # A fresh state types its leaves like a restored one (no recompile on resume).
  assert not any(leaf.weak_type for leaf in jax.tree.leaves(trainer8.abstract_state()))


def test_gradient_accumulation_matches_one_big_batch(shapes_dir):
  config = tiny_titok_config(shapes_dir, **NO_RESTART)
  rng = np.random.default_rng(1)
  batch = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
           "label": np.arange(8, dtype=np.int32)}
  mesh = sharding.create_mesh((-1, 2, 2))
  _, state1, m1 = _one_step(config, mesh, batch)
  config.grad_accum_steps = 2
  _, state2, m2 = _one_step(config, mesh, batch)
  # Two micro-batches reorder the sums: tolerances as in the sharded test.
  helpers.assert_allclose_f32(m2["loss"], m1["loss"], reduction=8 * 16 * 16 * 3, depth=26)
  lr, wd = float(m1["lr"]), config.optimizer.weight_decay
  chex.assert_trees_all_close(jax.device_get(state2["params"]),
                              jax.device_get(state1["params"]), atol=2 * lr, rtol=2 * lr * wd)


def test_vae_stage1_and_stage2_recipes_train(shapes_dir, tmp_path, monkeypatch):
  # The adversarial term is covered by the other tests; off here, it saves compiles.
  no_gan = {"losses.discriminator_weight": 0.0}
  vae = tiny_titok_config(shapes_dir, total_steps=2, eval_every=2,
                          **{"model.quantize_mode": "vae"}, **no_gan)
  result = main_lib.run(vae, str(tmp_path / "vae"))
  assert np.isfinite(result["train"]["kl"])
  assert os.path.exists(tmp_path / "vae" / "reconstructions.png")

  # Stage 1 learns the proxy codes of a (here randomly initialised) teacher.
  stage1 = tiny_titok_config(shapes_dir, arg="tiny,recipe=stage1", total_steps=2,
                             eval_every=2, **{"teacher.checkpoint": "teacher.bin"})
  stage1.teacher.update(dict(hidden_channels=32, channel_mult=(1, 2, 2)))
  stage1.model.dec_patch_size = 4

  @functools.cache
  def teacher(image_size):
    cfg = common.from_fields(maskgit_vqgan.MaskGitVQGANConfig,
                             {k: v for k, v in stage1.teacher.items() if k != "checkpoint"})
    params = jax.jit(maskgit_vqgan.MaskGitVQGAN(cfg).init)(
        jax.random.key(3), np.zeros((1, image_size, image_size, 3), np.float32))["params"]
    return cfg, jax.tree.map(np.asarray, nn.meta.unbox(params))

  def random_teacher(section, image_size):
    # Both stages read the one teacher, as they would read one file.
    assert section.to_dict() == stage1.teacher.to_dict()
    return teacher(image_size)

  monkeypatch.setattr(titok_family, "load_vqgan", random_teacher)
  result = main_lib.run(stage1, str(tmp_path / "stage1"))
  assert 0 < result["train"]["proxy_ce"] < 20
  assert os.path.exists(tmp_path / "stage1" / "reconstructions.png")

  # Stage 2 starts from stage 1 plus the teacher's decoder, and trains only
  # the decoders.
  stage2 = tiny_titok_config(shapes_dir, arg="tiny,recipe=stage2", total_steps=2,
                             eval_every=0, init_from=str(tmp_path / "stage1"),
                             **{"teacher.checkpoint": "teacher.bin",
                                "optimizer.warmup_steps": 1}, **no_gan)
  stage2.teacher.update(dict(hidden_channels=32, channel_mult=(1, 2, 2)))
  stage2.model.pixel_decoder.update(dict(hidden_channels=32, channel_mult=(1, 2, 2)))
  stage2.model.dec_patch_size = 4
  result = main_lib.run(stage2, str(tmp_path / "stage2"))
  before = checkpoint_lib.load_state_subtree(str(tmp_path / "stage1"), "ema_params")
  after = checkpoint_lib.load_state_subtree(str(tmp_path / "stage2"), "params")
  # Frozen: exactly zero updates, so equal (chex's default tolerance is moot);
  # a trained scale moves by ~lr = 1e-3 a step, far past allclose's 1e-5.
  chex.assert_trees_all_close(after["encoder"], before["encoder"])
  chex.assert_trees_all_close(after["latent_tokens"], before["latent_tokens"])
  assert not np.allclose(after["decoder"]["ln_post"]["scale"],
                         before["decoder"]["ln_post"]["scale"])
  assert np.isfinite(result["train"]["reconstruction_loss"])


def test_init_from_and_reconstruct_command(shapes_dir, tmp_path):
  config = tiny_titok_config(shapes_dir, total_steps=2)
  main_lib.run(config, str(tmp_path / "run"))
  trained = checkpoint_lib.load_state_subtree(str(tmp_path / "run"), "ema_params")

  config2 = tiny_titok_config(shapes_dir, total_steps=2, init_from=str(tmp_path / "run"))
  trainer = titok_trainer.TiTokTrainer(config2, str(tmp_path / "second"))
  state = trainer.init_state(jax.random.key(7))
  chex.assert_trees_all_close(jax.device_get(state["params"]), trained)

  out = tmp_path / "grid.png"
  result = reconstruct_lib.reconstruct(
      common.run_config(str(tmp_path / "run")), str(tmp_path / "run"), str(out),
      num_images=4)
  assert out.exists() and result["num_images"] == 4 and result["psnr"] > 0
