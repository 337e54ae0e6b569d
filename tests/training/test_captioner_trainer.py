"""Captioner trainer on a tiny embedded Vript: loss, checkpoints, tokenizer, resume, freezing."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import load_config
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.families import captioner as captioner_family
from vwt_jax.models import captioner as captioner_lib
from vwt_jax.training import captioner
from vwt_jax.training import loop

# Two videos of two 4-6 frame scenes at 32 px: 5 samples of all four formats but one.
DATA = dict(num_long_videos=1, num_short_videos=1, scenes_per_video=(2, 2),
            frames_per_scene=(4, 6), resolution=32, fps=8, seed=0, crf=23)


def _config(root):
  config = load_config("vriptor.py", "tiny")
  config.data.update(dict(root=root, num_frames=2, num_threads=2, prefetch=2))
  config.data.synthetic.update(DATA)
  # One token per vision token: the cheapest projector to compile.
  config.model.projector = "linear"
  config.text.update(dict(max_length=128, max_answer_length=64))
  # Data parallel x FSDP: parameters sharded as in the 7B configs.
  config.update(dict(mesh_shape=(-1, 2, 1), total_steps=4, global_batch_size=8, log_every=1,
                     checkpoint_every=2, eval_every=4, async_checkpointing=False))
  config.train.freeze = ("vision",)
  config.optimizer.update(dict(lr=3e-3, end_lr=3e-3, schedule="constant", warmup_steps=0))
  config.eval.update(dict(num_batches=1, batch_size=8))
  return config


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """A 4-step run; the data are generated under data.root on first use.

  The resume test reuses its trainer, whose compiled step is then cached.
  """
  root = str(tmp_path_factory.mktemp("vript") / "data")
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer = captioner.CaptionerTrainer(_config(root), workdir)
  return trainer, workdir, loop.train_and_evaluate(trainer, workdir)


def test_run_learns_and_writes_checkpoints_tokenizer_and_config(straight):
  trainer, workdir, result = straight
  config = trainer.config
  assert os.path.isfile(os.path.join(config.data.root, ".complete"))
  losses = _losses(workdir)
  # A behaviour check, not a float tolerance: from ~ln(vocab) = 6.9 (uniform),
  # Adam at lr 3e-3 without warm-up fits the answer tokens' frequencies at
  # ~0.3 nats a step here, so 3 steps clear 0.5 with margin; no training would not.
  assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1] - 0.5
  assert result["step"] == 4 and 0 < result["train"]["answer_tokens"] <= 8 * 64
  assert np.isfinite(result["eval"]["eval_loss"]) and result["eval"]["eval_answer_tokens"] > 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  tokenizer = captioner.prepare_tokenizer(config, workdir)[0]
  assert 512 < tokenizer.get_vocab_size() <= 1024
  with open(os.path.join(workdir, captioner.MODEL_CONFIG_FILE), encoding="utf-8") as f:
    cfg = captioner_lib.CaptionerConfig.from_json(f.read())
  assert cfg == captioner_family.model_config(config) and cfg.num_visual_tokens() == 32


def test_frozen_vision_stays_bit_identical(straight):
  _, workdir, _ = straight
  before, after = (checkpoint_lib.load_state_subtree(
      os.path.join(workdir, "checkpoints", step), "params") for step in ("2", "4"))
  jax.tree.map(np.testing.assert_array_equal, before["vision"], after["vision"])
  for part in ("projector", "lm"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before[part], after[part])
    assert all(jax.tree.leaves(changed)), part


def test_resume_repeats_the_same_losses(straight, tmp_path, monkeypatch):
  """A run stopped after step 2 (its checkpoint copied) continues exactly."""
  trainer, workdir, _ = straight
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(resumed, "checkpoints"),
                  ignore=lambda folder, names: ["4"] if "4" in names else [])
  monkeypatch.setattr(trainer.config, "eval_every", 0)
  assert loop.train_and_evaluate(trainer, resumed)["step"] == 4
  expected, losses = _losses(workdir), _losses(resumed)
  assert sorted(losses) == [3, 4]
  # The same compiled steps on the exact checkpointed state and the same
  # batches on this machine: equal; 1e-6 is margin only.
  for step in (3, 4):
    np.testing.assert_allclose(losses[step], expected[step], rtol=1e-6, err_msg=f"step {step}")


def test_an_existing_tokenizer_is_reused_without_reading_data(straight, tmp_path):
  trainer, workdir, _ = straight
  shutil.copy(os.path.join(workdir, captioner.TOKENIZER_FILE), tmp_path)

  def no_data():
    raise AssertionError("the dataset was read")

  tokenizer, source = captioner.prepare_tokenizer(trainer.config, str(tmp_path), no_data)
  assert "this run's" in source
  with open(os.path.join(workdir, captioner.TOKENIZER_FILE), encoding="utf-8") as f:
    assert tokenizer.to_str() == f.read()


_loss = jax.jit(captioner.answer_token_loss)


def test_loss_counts_answer_tokens_only():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 6, 11)).astype(np.float32))
  targets = rng.integers(0, 11, (2, 6)).astype(np.int32)
  loss_mask = np.zeros((2, 6), bool)
  loss_mask[0, 3:5] = loss_mask[1, 1:6] = True
  loss, metrics = _loss(logits, jnp.asarray(targets), jnp.asarray(loss_mask))
  question = targets.copy()
  question[0, 1] = (question[0, 1] + 1) % 11
  assert _loss(logits, jnp.asarray(question), jnp.asarray(loss_mask))[0] == loss
  answer = targets.copy()
  answer[0, 3] = (answer[0, 3] + 1) % 11
  assert _loss(logits, jnp.asarray(answer), jnp.asarray(loss_mask))[0] != loss
  # The mean over the 7 answer tokens of the batch, not of the per-row means;
  # two micro-batches normalised by half the batch count average to it.
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  # Float32 both ways: the 11-way log-softmax sum, then the mean over 7 tokens.
  helpers.assert_allclose_f32(loss, -picked[loss_mask].mean(), reduction=11, depth=2)
  halves = [_loss(logits[i:i + 1], jnp.asarray(targets[i:i + 1]),
                   jnp.asarray(loss_mask[i:i + 1]), 7 / 2)[0] for i in (0, 1)]
  helpers.assert_allclose_f32(np.mean(halves), loss, reduction=11, depth=2)
  assert 0.0 <= metrics["accuracy"] <= 1.0


def test_synthetic_data_never_replaces_what_is_under_the_root(straight, tmp_path):
  trainer, _, _ = straight
  root = trainer.config.data.root
  marker = os.path.join(root, ".complete")
  before = os.stat(marker).st_mtime_ns
  # Written with these settings: kept as it is.
  captioner.prepare_synthetic_data(trainer.config)
  assert os.stat(marker).st_mtime_ns == before
  # Other settings: the run stops, naming the difference and the override.
  other = _config(root)
  other.data.synthetic.seed = 1
  with pytest.raises(ValueError, match=r"seed=0 there, 1 asked.*synthetic_replace=True"):
    captioner.prepare_synthetic_data(other)
  assert os.stat(marker).st_mtime_ns == before
  # A folder holding another dataset (here a copy without the marker) is
  # trained on as it is.
  foreign = str(tmp_path / "mine")
  shutil.copytree(root, foreign)
  os.remove(os.path.join(foreign, ".complete"))
  listing = sorted(os.listdir(foreign))
  captioner.prepare_synthetic_data(_config(foreign))
  assert sorted(os.listdir(foreign)) == listing
