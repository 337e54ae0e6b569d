"""vwt_jax.sample_eval: sharded, resumable per-class sampling packed as an ADM npz."""

import json
import os

import numpy as np
import pytest

from helpers import save_random_generator_run, save_random_titok_run
from helpers import tiny_titok_config
from vwt_jax import sample as sample_lib
from vwt_jax import sample_eval
from vwt_jax.data import codes
from vwt_jax.evaluation import adm_npz

NUM_CLASSES, PER_CLASS, SHARD = 3, 8, 8


@pytest.fixture(scope="module")
def generator_run(shapes_dir, tmp_path_factory):
  """A random tiny GPT over the codes of a random tiny TiTok (3 classes)."""
  titok = str(tmp_path_factory.mktemp("titok"))
  titok_config = tiny_titok_config(shapes_dir)
  save_random_titok_run(titok_config, titok)
  code_dir = str(tmp_path_factory.mktemp("codes"))
  meta = codes.CodeMetadata(tokenizer="titok", code_shape=(8,), vocab_size=64,
                            num_classes=NUM_CLASSES, views="center", image_size=16,
                            source={"checkpoint": titok, "config": titok_config.to_dict()})
  with codes.CodeDatasetWriter(code_dir, meta, split="train") as writer:
    for i in range(4):
      writer.add(np.full((1, 8), i), i % NUM_CLASSES)
  run = str(tmp_path_factory.mktemp("gpt"))
  return save_random_generator_run("tiny", code_dir, run), run


@pytest.fixture(scope="module")
def loaded(generator_run):
  config, run = generator_run
  return sample_lib.load(config, run)


def _shards(directory):
  return sorted(os.listdir(os.path.join(directory, "shards")))


def test_resumed_run_keeps_finished_shards_and_equals_an_uninterrupted_one(loaded, tmp_path):
  trainer, params = loaded
  labels = sample_eval.class_labels(NUM_CLASSES, PER_CLASS)
  kwargs = dict(shard_size=SHARD, seed=3, batch_size=8)
  interrupted = str(tmp_path / "interrupted")
  assert sample_eval.generate_shards(trainer, params, interrupted, labels, max_shards=2,
                                     **kwargs) == 2
  assert _shards(interrupted) == ["shard_00000.npz", "shard_00001.npz"]
  first = [os.path.join(interrupted, "shards", n) for n in _shards(interrupted)]
  # An mtime in the past: a rewrite would show even on a coarse clock.
  for path in first:
    os.utime(path, (1e9, 1e9))
  with pytest.raises(FileNotFoundError, match="1 of 3 shards missing"):
    sample_eval.pack_shards(interrupted, labels, SHARD)
  assert sample_eval.generate_shards(trainer, params, interrupted, labels, **kwargs) == 1
  assert [os.path.getmtime(p) for p in first] == [1e9, 1e9]
  resumed = sample_eval.pack_shards(interrupted, labels, SHARD)

  whole = str(tmp_path / "whole")
  assert sample_eval.generate_shards(trainer, params, whole, labels, **kwargs) == 3
  uninterrupted = sample_eval.pack_shards(whole, labels, SHARD)
  with np.load(resumed) as a, np.load(uninterrupted) as b:
    assert sorted(a.files) == ["arr_0", "arr_1"]
    assert a["arr_0"].shape == (NUM_CLASSES * PER_CLASS, 16, 16, 3)
    assert a["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(a["arr_1"], np.repeat(np.arange(NUM_CLASSES), PER_CLASS))
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    # Shards draw different keys: not one shard's images repeated.
    assert not np.array_equal(a["arr_0"][:SHARD], a["arr_0"][SHARD:2 * SHARD])


def test_shards_must_hold_whole_batches(loaded, tmp_path):
  trainer, params = loaded
  with pytest.raises(ValueError, match="shard_size=12 is not a multiple of the global batch 8"):
    sample_eval.generate_shards(trainer, params, str(tmp_path), np.zeros(24, np.int32),
                                shard_size=12, batch_size=8)


def test_run_without_weights_writes_samples_and_says_what_is_missing(generator_run, tmp_path,
                                                                     capsys):
  config, run = generator_run
  out = str(tmp_path / "eval")
  reference = str(tmp_path / "ref.npz")
  adm_npz.write_samples(reference, np.zeros((4, 16, 16, 3), np.uint8))
  with pytest.raises(FileNotFoundError, match="Inception weights 'missing.npz': no such file"):
    sample_eval.run(config, run, out, per_class=2, reference=reference,
                    inception_weights="missing.npz")
  summary = sample_eval.run(config, run, out, per_class=2, reference=reference,
                            shard_size=SHARD, batch_size=8)
  printed = capsys.readouterr().out
  assert "no FID Inception weights" in printed
  assert "config.eval.inception_weights (or --inception_weights)" in printed
  assert "python -m vwt_jax.conversion.inception" in printed
  assert summary["num_samples"] == NUM_CLASSES * 2 and "metrics" not in summary
  with np.load(os.path.join(out, "samples.npz")) as f:
    assert f["arr_0"].shape == (NUM_CLASSES * 2, 16, 16, 3)
  with open(os.path.join(out, "settings.json"), encoding="utf-8") as f:
    assert json.load(f)["sampling"]["cfg_scale"] == 2.0
  # Other sampling settings in the same directory would mix two distributions.
  with pytest.raises(ValueError, match=r"cfg_scale.*use another --output_dir"):
    sample_eval.run(config, run, out, per_class=2, shard_size=SHARD, batch_size=8,
                    cfg_scale=1.0)
