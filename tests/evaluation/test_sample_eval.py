"""vwt_jax.sample_eval: sharded, resumable per-class sampling packed as an ADM npz."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from helpers import load_config, save_random_generator_run, save_random_titok_run
from helpers import tiny_titok_config
from vwt_jax import families
from vwt_jax import sample as sample_lib
from vwt_jax import sample_eval
from vwt_jax.data import codes
from vwt_jax.evaluation import adm_npz
from vwt_jax.families import generator as generator_lib

NUM_CLASSES, PER_CLASS, SHARD = 3, 8, 8
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GPT = "the LlamaGen GPT tiny (c2i, 1D RoPE)"


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
  gen, params = loaded
  labels = sample_eval.class_labels(NUM_CLASSES, PER_CLASS)
  kwargs = dict(shard_size=SHARD, seed=3, batch_size=8)
  interrupted = str(tmp_path / "interrupted")
  assert sample_eval.generate_shards(gen, params, interrupted, labels, max_shards=2,
                                     **kwargs) == 2
  assert _shards(interrupted) == ["shard_00000.npz", "shard_00001.npz"]
  first = [os.path.join(interrupted, "shards", n) for n in _shards(interrupted)]
  # An mtime in the past: a rewrite would show even on a coarse clock.
  for path in first:
    os.utime(path, (1e9, 1e9))
  with pytest.raises(FileNotFoundError, match="1 of 3 shards missing"):
    sample_eval.pack_shards(interrupted, labels, SHARD)
  assert sample_eval.generate_shards(gen, params, interrupted, labels, **kwargs) == 1
  assert [os.path.getmtime(p) for p in first] == [1e9, 1e9]
  resumed = sample_eval.pack_shards(interrupted, labels, SHARD)

  whole = str(tmp_path / "whole")
  assert sample_eval.generate_shards(gen, params, whole, labels, **kwargs) == 3
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
  gen, params = loaded
  with pytest.raises(ValueError, match="shard_size=12 is not a multiple of the global batch 8"):
    sample_eval.generate_shards(gen, params, str(tmp_path), np.zeros(24, np.int32),
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
    settings = json.load(f)
  assert settings["sampling"]["cfg_scale"] == 2.0
  # The run's tokenizer is a TiTok: its samples become bytes by TiTok's rule.
  assert settings["pixels"] == "titok: images.to_uint8"
  # Other sampling settings in the same directory would mix two distributions.
  with pytest.raises(ValueError, match=r"cfg_scale.*use another --output_dir"):
    sample_eval.run(config, run, out, per_class=2, shard_size=SHARD, batch_size=8,
                    cfg_scale=1.0)


def _command(module, *args, cwd):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("args, message", [
    (["--classes", "5000"], "--classes: 5000 is not a class of this generator (3 classes: 0..2)"),
    (["--classes", "1,-1"], "--classes: -1 is not a class of this generator (3 classes: 0..2)"),
    (["--batch_size", "0"], "--batch_size=0: expected >= 1 images per call"),
    (["--per_class", "0"], "--per_class=0: expected >= 1 samples per class"),
    (["--cfg", "-3"], f"--cfg=-3.0: expected a guidance scale >= 1 (1 = no guidance) for {GPT}"),
])
def test_sample_refuses_what_the_generator_cannot_sample(generator_run, tmp_path, args,
                                                         message):
  _, run = generator_run
  result = _command("vwt_jax.sample", "--checkpoint", run, *args, "--npz", "samples.npz",
                    cwd=tmp_path)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.rstrip().endswith("\n" + message), result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # neither samples.png nor samples.npz


def test_sample_eval_refuses_settings_before_writing_anything(generator_run, tmp_path):
  _, run = generator_run
  result = _command("vwt_jax.sample_eval", "--checkpoint", run, "--output_dir", "out",
                    "--top_p", "2", cwd=tmp_path)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.rstrip().endswith(
      f"\n--top_p=2.0: expected 0 < top_p <= 1 (1 = off) for {GPT}"), result.stderr[-3000:]
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("overrides, counts, message", [
    (dict(top_k=65), {}, f"--top_k=65: expected 0 (keep all) to 64 (the vocabulary) for {GPT}"),
    (dict(top_p=0.0), {}, "--top_p=0.0: expected 0 < top_p <= 1 (1 = off)"),
    (dict(temperature=0.0), {}, "--temperature=0.0: expected a temperature > 0"),
    (dict(cfg_interval=-2), {}, "--cfg_interval=-2: expected -1 (guide every token) or k >= 0"),
    (dict(num_steps=8), {}, f"num_steps=8: the sampler of {GPT} has no num_steps; it reads "
     "['cfg_interval', 'cfg_scale', 'temperature', 'top_k', 'top_p']"),
    ({}, dict(resize=-1), "--resize=-1: expected a size in pixels >= 0 (0 = keep)"),
    ({}, dict(seed=-1), "--seed=-1: expected a seed >= 0"),
])
def test_sampler_settings_are_checked_against_the_gpt(loaded, overrides, counts, message):
  gen, _ = loaded
  counts = {"batch_size": 1, "resize": 0, "seed": 0, **counts}
  with pytest.raises(sample_lib.SettingsError, match="^" + re.escape(message)):
    sample_lib.check_sampling(gen, overrides, **counts)


def test_the_edges_of_the_valid_settings_pass(loaded):
  gen, _ = loaded
  sample_lib.check_sampling(gen, dict(top_k=64, top_p=1.0, cfg_scale=1.0, cfg_interval=-1,
                                      temperature=1e-3), batch_size=1, resize=0, seed=0)
  assert sample_lib.class_ids(gen, ["0", "2"], "--classes") == [0, 2]
  with pytest.raises(sample_lib.SettingsError,
                     match=r"^--classes: x is not a class of this generator \(3 classes: 0..2\)$"):
    sample_lib.class_ids(gen, ["x"], "--classes")
  with pytest.raises(sample_lib.SettingsError,
                     match=r"^config.sampling.classes is empty: expected class ids 0..2$"):
    sample_lib.class_ids(gen, [], "config.sampling.classes")


def test_settings_from_the_config_are_named_by_their_key(loaded):
  gen, _ = loaded
  config = gen.config.copy_and_resolve_references()
  config.sampling.top_k = 1000
  with pytest.raises(sample_lib.SettingsError,
                     match=re.escape("config.sampling.top_k=1000: expected 0 (keep all) to 64")):
    sample_lib.check_sampling(generator_lib.Generator(config), {}, batch_size=1, resize=0,
                              seed=0)


def test_guidance_needs_a_null_class_and_maskgit_has_its_own_settings(loaded, generator_run):
  gen, _ = loaded
  config = gen.config.copy_and_resolve_references()
  config.model.class_dropout_prob = 0.0
  unguided = generator_lib.Generator(config)
  sample_lib.check_sampling(unguided, {"cfg_scale": 1.0}, batch_size=1, resize=0, seed=0)
  with pytest.raises(sample_lib.SettingsError, match=re.escape(
      "--cfg=2.0: expected 1 (no guidance): this GPT was trained without class dropout")):
    sample_lib.check_sampling(unguided, {"cfg_scale": 2.0}, batch_size=1, resize=0, seed=0)

  config = load_config("maskgit.py", "tiny")
  # Its sizes from the GPT's code dataset.
  config.data.dir = gen.config.data.dir
  masked = generator_lib.Generator(config)
  # MaskGIT's constant and linear decays take scale 0 for the conditional pass alone.
  sample_lib.check_sampling(masked, {"cfg_scale": 0.0}, batch_size=1, resize=0, seed=0)
  with pytest.raises(sample_lib.SettingsError, match=re.escape(
      "--top_k=5: the sampler of the MaskGIT ViT generator tiny has no top_k; it reads "
      "['cfg_scale', 'guidance_decay', 'guidance_scale_pow', 'num_steps', "
      "'randomize_temperature', 'softmax_temperature_annealing']")):
    sample_lib.check_sampling(masked, {"top_k": 5}, batch_size=1, resize=0, seed=0)
  with pytest.raises(sample_lib.SettingsError, match=re.escape(
      "--cfg=-1.0: expected a guidance scale >= 0 for the MaskGIT ViT generator tiny")):
    sample_lib.check_sampling(masked, {"cfg_scale": -1.0}, batch_size=1, resize=0, seed=0)


def test_sample_eval_checks_its_settings_before_reading_weights(generator_run, tmp_path,
                                                               monkeypatch):
  config, run = generator_run

  def unreachable(self, path):
    raise AssertionError(f"read the weights of {path}")

  monkeypatch.setattr(generator_lib.Generator, "load_params", unreachable)
  out = str(tmp_path / "eval")
  for kwargs, message in ((dict(per_class=0), "--per_class=0: expected >= 1 samples per class"),
                          (dict(per_class=1, batch_size=0), "--batch_size=0: expected >= 1"),
                          (dict(per_class=1, cfg_scale=-3.0), "--cfg=-3.0: expected a guidance")):
    with pytest.raises(sample_lib.SettingsError, match="^" + re.escape(message)):
      sample_eval.run(config, run, out, **kwargs)
  assert not os.path.exists(out)


@pytest.mark.parametrize("resize", [0, 24])
def test_titok_samples_are_pixels_as_the_official_samplers_make_them(loaded, resize):
  gen, params = loaded
  labels = np.arange(8, dtype=np.int32) % NUM_CLASSES
  ours = sample_lib.sample(gen, params, labels, seed=5, batch_size=8, resize=resize)
  # The same codes through the official steps: TiTok's decoder output y in
  # [0, 1] (ours returns 2y - 1), LlamaGen's F.interpolate for --resize, then
  # TiTok's clamp(0, 1) * 255 truncated to uint8.
  codes = gen.sample_codes(params, labels, jax.random.fold_in(jax.random.key(5), 0))
  tok = gen.tokenizer()
  tok_params, _, decode, _, _ = families.get("titok").tokenizer_fns(
      tok.config, gen.metadata.source["checkpoint"])
  y = (np.asarray(jax.jit(decode)(tok_params, codes)) + 1) / 2
  y = torch.from_numpy(y).permute(0, 3, 1, 2)
  if resize:
    y = torch.nn.functional.interpolate(y, size=(resize, resize), mode="bicubic",
                                        align_corners=False)
  official = (torch.clamp(y, 0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
  assert ours.shape == official.shape == (8, resize or 16, resize or 16, 3)
  if not resize:
    # The same float32 steps in the same order (rounding LlamaGen's way would
    # move about half of the unsaturated pixels).
    np.testing.assert_array_equal(ours, official)
  else:
    # The resize's float32 sums run in another order: a pixel within about
    # 1e-5 of a level boundary may land one level off.
    levels = np.abs(ours.astype(int) - official.astype(int))
    assert levels.max() <= 1 and np.mean(levels) < 1e-3
