"""Fine-tuning ST-LLM (`configs/vriptor.py:*,arch=st_llm`) on a tiny embedded Vript:
the loss falls, the frozen parts stay, and a released-layout folder initialises it."""

import json
import os

import jax
import numpy as np
import pytest

import helpers
from vwt_jax import caption
from vwt_jax import config_common
from vwt_jax.conversion import st_llm as st_llm_conversion
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.families import common
from vwt_jax.tools import parity_common, parity_vriptor
from vwt_jax.training import loop
from vwt_jax.training import st_llm

# Two videos of two 4-6 frame scenes at 32 px, as the captioner trainer's test.
DATA = dict(num_long_videos=1, num_short_videos=1, scenes_per_video=(2, 2),
            frames_per_scene=(4, 6), resolution=32, fps=8, seed=0, crf=23)


def _config(root, fixtures_dir):
  config = helpers.load_config("vriptor.py", "tiny,arch=st_llm")
  config.data.update(dict(root=root, num_frames=2, num_threads=2, prefetch=2))
  config.data.synthetic.update(DATA)
  # The Q-Former's vocabulary: the parity fixture's 45 BERT word pieces.
  config.tokenizer.qformer = os.path.join(fixtures_dir, "vriptor", "stllm_bert_vocab.txt")
  config.text.update(dict(max_length=128, max_answer_length=64))
  config.update(dict(mesh_shape=(-1, 2, 1), total_steps=4, global_batch_size=8, log_every=1,
                     checkpoint_every=2, eval_every=4, async_checkpointing=False))
  # The recipes' freezing: EVA ViT-g and the Q-Former (not llama_proj).
  config.train.freeze = ("vision", "qformer")
  config.optimizer.update(dict(lr=3e-3, end_lr=3e-3, schedule="constant", warmup_steps=0))
  config.eval.update(dict(num_batches=1, batch_size=8))
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory, fixtures_dir):
  root = str(tmp_path_factory.mktemp("vript") / "data")
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer = st_llm.STLLMTrainer(_config(root, fixtures_dir), workdir)
  return trainer, workdir, loop.train_and_evaluate(trainer, workdir)


def test_the_loss_falls_and_the_frozen_parts_stay(run):
  trainer, workdir, result = run
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}
  # From ~ln(1024) = 6.9, Adam at 3e-3 fits the answer tokens' frequencies by
  # ~0.3 nats a step (as the captioner's test): 3 steps clear 0.5; none would not.
  assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1] - 0.5
  assert np.isfinite(result["eval"]["eval_loss"])
  # 2 frames -> 4 residual frames x 4 queries.
  assert trainer.num_visual_tokens == 16
  before, after = (checkpoint_lib.load_state_subtree(
      os.path.join(workdir, "checkpoints", step), "params") for step in ("2", "4"))
  jax.tree.map(np.testing.assert_array_equal, before["vision"], after["vision"])
  qformer = {k: v for k, v in before["qformer"].items() if k != "llama_proj"}
  jax.tree.map(np.testing.assert_array_equal, qformer,
               {k: after["qformer"][k] for k in qformer})
  # What the recipes train: the LLM, llama_proj and the residual projections.
  for part in ("lm", "down_proj", "up_proj"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before[part], after[part])
    assert all(jax.tree.leaves(changed)), part
  assert not np.array_equal(before["qformer"]["llama_proj"]["kernel"],
                            after["qformer"]["llama_proj"]["kernel"])
  with open(os.path.join(workdir, st_llm.STLLMTrainer.MODEL_CONFIG_FILE)) as f:
    assert json.load(f)["residual_size"] == 4


def test_the_run_captions_videos(run, tmp_path):
  trainer, workdir, _ = run
  common.save_config(trainer.config, workdir)  # as `vwt_jax.main` does
  gen, _ = caption.load_captioner(None, workdir)
  assert (gen.stage, gen.num_frames, gen.repetition_penalty) == ("stage1", 2, 1.0)
  result = caption.run(trainer.config.data.root, workdir, output_dir=str(tmp_path / "out"),
                       max_new_tokens=4, batch_size=4)
  with open(result["predictions"], encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  # Every captioned clip of the 2 videos, with its ground truth.
  assert len(rows) == result["num_clips"] == 4 and all("gt" in r for r in rows)


def test_a_released_layout_folder_initialises_the_run(fixtures_dir, tmp_path):
  """The official code's tiny ST-LLM saved in the released layout, through `init.stllm_dir`."""
  folder = str(tmp_path / "released")
  helpers.released_stllm_folder(fixtures_dir, folder)
  vriptor = os.path.join(fixtures_dir, "vriptor")
  config = _config(str(tmp_path / "data"), fixtures_dir)
  config.model = config_common.model_section(parity_vriptor.stllm_config(vriptor))
  config.data.image_size = config.model.vision.image_size
  config.tokenizer.path = folder
  config.text.update(dict(bos_token="</s>", pad_token="<unk>"))
  config.init.stllm_dir = folder
  trainer = st_llm.STLLMTrainer(config, str(tmp_path / "run"))
  # Every parameter comes from the folder, in the shapes of the run's model.
  loaded = trainer.pretrained_params()
  abstract = jax.tree.map(lambda x: x.shape, trainer.abstract_state()["params"])
  assert jax.tree.map(np.shape, loaded) == abstract
  expected = st_llm_conversion.convert_state_dict(
      parity_common.load_arrays(vriptor, "stllm_state_dict.npz"), trainer.cfg)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
