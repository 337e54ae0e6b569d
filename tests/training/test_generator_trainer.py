"""Generator trainer (GPT and MaskGIT) on a tiny code dataset, and the sample command."""

import os

import numpy as np
import pytest
from PIL import Image

from helpers import load_config, save_random_titok_run, tiny_titok_config, write_class_codes
from vwt_jax import sample as sample_lib
from vwt_jax.core import images as images_lib
from vwt_jax.data import codes
from vwt_jax.families import gpt as gpt_family
from vwt_jax.training import generator

NUM_CLASSES, SEQ_LEN, VOCAB = 10, 8, 64


@pytest.fixture(scope="module")
def code_dir(shapes_dir, tmp_path_factory):
  run = str(tmp_path_factory.mktemp("titok_run"))
  config = tiny_titok_config(shapes_dir)
  save_random_titok_run(config, run)
  return write_class_codes(str(tmp_path_factory.mktemp("codes")), run, config,
                           num_classes=NUM_CLASSES, seq_len=SEQ_LEN, vocab=VOCAB)


def _tiny(arg, code_dir, **overrides):
  config = load_config(*arg.split(":"))
  if config.family == "gpt":
    config.model.update(dict(n_layer=1, n_head=2, dim=32))
  else:
    config.model.update(dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
                             intermediate_size=64))
  config.data.update(dict(dir=code_dir, num_workers=0))
  config.update(dict(total_steps=4, global_batch_size=8, log_every=2, eval_every=4,
                     checkpoint_every=2, async_checkpointing=False))
  config.sampling.update(dict(classes=(0, 3, 7), per_class=2))
  config.eval.update(dict(num_batches=1, batch_size=8))
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("arg", ["llamagen.py:tiny", "maskgit.py:tiny"])
def test_train_writes_checkpoints_metrics_and_samples(arg, code_dir, tmp_path):
  config = _tiny(arg, code_dir)
  if config.family == "gpt":
    # Tensor parallel with 3 heads: 'tensor' = 2 does not divide them, so those
    # weights stay whole on it, in training and in sampling.
    config.mesh_shape = (-1, 2, 2)
    config.model.update(dict(n_head=3, dim=48))
  workdir = str(tmp_path)
  result = generator.train(config, workdir)
  assert result["step"] == 4
  assert np.isfinite(result["train"]["loss"]) and np.isfinite(result["eval"]["eval_loss"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  # 3 classes x 2 samples of 16 px, each shown 6x (96 px): one row per class.
  assert Image.open(os.path.join(workdir, "samples.png")).size == (2 * 96, 3 * 96)
  with open(os.path.join(workdir, "summary.txt"), encoding="utf-8") as f:
    assert f"{SEQ_LEN} tokens of {VOCAB} codes" in f.read()


def test_sizes_come_from_the_code_dataset_and_must_agree(code_dir):
  config = _tiny("llamagen.py:tiny", code_dir)
  meta = codes.read_metadata(code_dir)
  cfg = gpt_family.model_config(config, meta)
  assert (cfg.vocab_size, cfg.block_size, cfg.num_classes, cfg.rope_2d) == (
      VOCAB, SEQ_LEN, NUM_CLASSES, False)
  config.model.vocab_size = 128
  with pytest.raises(ValueError, match="vocab_size=128 but the code dataset"):
    gpt_family.model_config(config, meta)


def test_sample_is_deterministic_and_writes_adm_npz(code_dir, tmp_path):
  config = _tiny("llamagen.py:tiny", code_dir)
  workdir = str(tmp_path / "run")
  generator.train(config, workdir)
  gen, params = sample_lib.load(config, workdir)
  labels = np.array([1, 2, 3], np.int32)
  a = sample_lib.sample(gen, params, labels, seed=5, batch_size=8, top_k=0)
  b = sample_lib.sample(gen, params, labels, seed=5, batch_size=8, top_k=0)
  assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert images_lib.quantize(np.array([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


def test_text_to_image_trains_on_captioned_codes(tmp_path):
  """t2i: caption features (left-padded, masked) condition the GPT; loss is finite."""
  path = str(tmp_path / "codes")
  meta = codes.CodeMetadata(tokenizer="vqgan", code_shape=(2, 2), vocab_size=VOCAB,
                            num_classes=0, caption_dim=8, caption_length=4)
  rng = np.random.default_rng(1)
  for split in ("train", "validation"):
    with codes.CodeDatasetWriter(path, meta, split=split) as writer:
      for i in range(16):
        n = 1 + i % 4
        writer.add(rng.integers(0, VOCAB, (1, 2, 2)), 0,
                   caption_emb=rng.normal(size=(4, 8)).astype(np.float32),
                   caption_mask=(np.arange(4) < n).astype(np.int32))
  config = _tiny("llamagen.py:tiny,cond=t2i", path)
  # The caption width and the prefix (caption) length come from the dataset.
  cfg = gpt_family.model_config(config, meta)
  assert (cfg.caption_dim, cfg.cls_token_num) == (8, 4)
  config.model.cls_token_num = 120
  with pytest.raises(ValueError, match="cls_token_num=120 but the code dataset"):
    gpt_family.model_config(config, meta)
  config.model.cls_token_num = None
  config.update(dict(total_steps=2, checkpoint_every=2, eval_every=2))
  result = generator.train(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["eval"]["eval_loss"])
