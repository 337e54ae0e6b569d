"""extract_codes: a tiny TiTok checkpoint -> code dataset (images or Vript keyframes +
caption features) -> generator batches."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import copy_vript_root, save_random_titok_run, tiny_titok_config
from vwt_jax.core import sharding
from vwt_jax.data import codes
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.data.vript import clip_source
from vwt_jax.families import text_encoders
from vwt_jax.families import tokenizer as tokenizer_lib
from vwt_jax.models import gpt
from vwt_jax.tools import extract_codes as extract

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
  """A TiTok run folder as the trainer leaves it, with untrained parameters."""
  config = tiny_titok_config(shapes_dir)
  workdir = str(tmp_path_factory.mktemp("titok_run"))
  model, params = save_random_titok_run(config, workdir)
  return config, workdir, model, params


def _views(config, split, views, crop_range, indices):
  source, _ = pipeline.open_source(config.data, split)
  return np.stack([codes.make_views(transforms.decode_image(source[i]["image"]), views,
                                    config.data.image_size, crop_range) for i in indices])


def test_titok_codes_equal_encoding_the_crops_directly(run, tmp_path):
  config, workdir, model, params = run
  summary = extract.extract_codes(config, workdir, str(tmp_path / "codes"),
                                  split="train[:20]", views="ten_crop", crop_range=1.1,
                                  batch_size=12)
  assert summary["records"] == 20 and summary["num_views"] == 10
  assert summary["code_shape"] == [8] and summary["corrupt_skipped"] == 0
  meta = codes.read_metadata(str(tmp_path / "codes"))
  assert (meta.tokenizer, meta.vocab_size, meta.seq_len, meta.num_classes) == ("titok", 64, 8, 10)
  assert meta.crop_range == 1.1 and meta.source["checkpoint"] == os.path.abspath(workdir)
  assert meta.source["config"]["compute_dtype"] == config.compute_dtype

  source = codes.CodeSource(str(tmp_path / "codes"), "train")
  records = [source[i] for i in range(len(source))]
  assert [r["index"] for r in records] == list(range(20))
  assert [r["label"] for r in records] == [i % 10 for i in range(20)]
  written = np.stack([r["codes"] for r in records])
  assert written.shape == (20, 10, 8) and 0 <= written.min() and written.max() < 64
  # Untrained, but the codes still depend on the crop.
  assert any(len({tuple(view) for view in record}) > 1 for record in written)

  images = _views(config, "train", "ten_crop", 1.1, range(20)).reshape(-1, 16, 16, 3)
  # Jitted on one device: eager Flax takes seconds, and no sharding is involved.
  direct = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode)[1])(
      params, transforms.to_float(images))
  np.testing.assert_array_equal(written.reshape(-1, 8), direct["indices"])


def _top_left_pixels(checkpoint, config, mesh):
  """A 2-D 'tokenizer' whose codes spell out its input (the red value // 4 of
  every 4th pixel), so written codes identify the exact crop encoded."""
  del checkpoint

  def encode(images):
    pixels = jnp.round((images[:, ::4, ::4, 0] + 1.0) * 127.5)
    return (pixels // 4).astype(jnp.int32).reshape(len(images), -1)

  batch = sharding.batch_sharding(mesh)
  return tokenizer_lib.Tokenizer(
      kind="vqgan", config=config, code_shape=(4, 4), vocab_size=64, image_size=16,
      encode=jax.jit(encode, in_shardings=batch, out_shardings=batch), decode=None,
      pictures=None)


class _CorruptEveryFifth:

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = dict(self._source[index])
    if index % 5 == 0:
      record["image"] = b"\x89PNG garbage"
    return record


def test_views_land_in_order_and_corrupt_images_are_skipped(run, tmp_path, monkeypatch):
  config = run[0]
  monkeypatch.setattr(tokenizer_lib, "load_tokenizer", _top_left_pixels)
  open_source = pipeline.open_source
  monkeypatch.setattr(pipeline, "open_source",
                      lambda c, s: (_CorruptEveryFifth(open_source(c, s)[0]), "shapes"))
  out = str(tmp_path / "codes")
  summary = extract.extract_codes(config, "unused", out, split="train[:30]", views="ten_crop",
                                  crop_range=1.3, batch_size=5)
  good = [i for i in range(30) if i % 5]
  assert summary["records"] == len(good) and summary["corrupt_skipped"] == 6
  meta = codes.read_metadata(out)
  assert meta.code_shape == (4, 4) and meta.splits["train"]["num_corrupt"] == 6
  assert meta.splits["train"]["source_split"] == "train[:30]"
  source = codes.CodeSource(out, "train")
  assert [source[i]["index"] for i in range(len(source))] == good
  written = np.stack([source[i]["codes"] for i in range(len(source))])
  crops = _views(config, "train", "ten_crop", 1.3, good)
  np.testing.assert_array_equal(written, crops[:, :, ::4, ::4, 0] // 4)

  config = tiny_titok_config(config.data.data_dir)
  config.data.max_corrupt_records = 2
  with pytest.raises(pipeline.TooManyCorruptRecordsError, match="max_corrupt_records=2"):
    extract.extract_codes(config, "unused", str(tmp_path / "more"), split="train",
                          views="center", batch_size=8)


def test_unknown_family_and_existing_split(run, tmp_path):
  config = tiny_titok_config(run[0].data.data_dir, family="maskgit")
  with pytest.raises(ValueError, match=r"family='maskgit'.*'titok'"):
    extract.extract_codes(config, run[1], str(tmp_path), views="center")
  with pytest.raises(ValueError, match="views='five_crop'"):
    extract.extract_codes(run[0], run[1], str(tmp_path), views="five_crop")


def test_command_line_writes_a_dataset_the_generator_pipeline_reads(run, tmp_path):
  _, workdir, _, _ = run
  out = str(tmp_path / "codes")
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.tools.extract_codes", "--checkpoint", workdir,
       "--output_dir", out, "--split", "validation", "--views", "flip", "--batch_size", "5"],
      env=env, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["records"] == 16 and summary["num_views"] == 2 and summary["split"] == "validation"

  data = codes.default_codes_data_config()
  data.dir = out
  ds = codes.create_code_dataset(data, split="validation", global_batch_size=8, seed=0,
                                 train=False, process_index=0, process_count=1)
  batches = list(ds)
  assert len(batches) == 2 and all(b["mask"].all() for b in batches)
  assert batches[0]["codes"].shape == (8, 8) and batches[0]["codes"].dtype == np.int32
  np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]),
                                np.arange(16) % 10)


def test_vript_keyframes_and_caption_features_as_the_t2i_gpt_reads_them(run, fixtures_dir,
                                                                         tmp_path, monkeypatch):
  config = run[0]
  monkeypatch.setattr(tokenizer_lib, "load_tokenizer", _top_left_pixels)
  root = copy_vript_root(fixtures_dir, tmp_path)
  keyframes = clip_source.KeyframeSource(clip_source.load_videos(root), image_size=16)
  records = [keyframes[i] for i in range(len(keyframes))]
  # One of the 9 captioned clips becomes undecodable: skipped and counted.
  broken = [r["clip_id"] for r in records].index("q7Wm2xYv8Ra_0-Scene-001")
  with open(os.path.join(root, "vript_short_videos_clips", "q7Wm2xYv8Ra_0",
                         "q7Wm2xYv8Ra_0-Scene-001.mp4"), "wb") as f:
    f.write(b"not an mp4")
  good = [i for i in range(9) if i != broken]
  # 80 tokens: the fixture's captions have 61 to 102.
  encoder = text_encoders.load_caption_encoder("minilm", max_length=80)
  out = str(tmp_path / "codes")
  # One batch of 16: the caption encoder then compiles once (for 16 rows) here.
  summary = extract.extract_codes(config, "unused", out, views="flip", batch_size=16,
                                  vript_root=root, caption_encoder=encoder)
  assert (summary["records"], summary["corrupt_skipped"], summary["split"]) == (8, 1, "train")
  meta = codes.read_metadata(out)
  assert (meta.num_classes, meta.caption_dim, meta.caption_length) == (0, 384, 80)
  assert meta.source["caption_encoder"] == text_encoders.describe(encoder)
  assert meta.splits["train"]["vript_root"] == os.path.abspath(root)

  # The codes spell out the middle keyframe of each clip, in index order.
  source = codes.CodeSource(out, "train")
  assert [source[i]["index"] for i in range(8)] == good
  crops = np.stack([codes.make_views(records[i]["image"], "flip", 16) for i in good])
  np.testing.assert_array_equal(np.stack([source[i]["codes"] for i in range(8)]),
                                crops[:, :, ::4, ::4, 0] // 4)

  # Training batches hold what sampling feeds the GPT for the same captions:
  # real tokens at the end, zeros before (float16 on disk).
  data = codes.default_codes_data_config()
  data.dir = out
  batch = next(iter(codes.create_code_dataset(data, split="train", global_batch_size=8,
                                              seed=0, train=False, process_index=0,
                                              process_count=1)))
  # Padded to the 16 rows the encoder compiled for above.
  cond, emb_mask = gpt.left_pad_captions(*encoder.encode(
      [records[i]["caption"] for i in good] + [""] * 8))
  np.testing.assert_array_equal(batch["caption_mask"], np.asarray(emb_mask)[:8])
  # The same compiled encoder on the same rows: only the float16 storage rounds,
  # by half an ulp: 2^-11 relative (2^-25 absolute among the subnormals).
  np.testing.assert_allclose(batch["caption_emb"], np.asarray(cond)[:8], rtol=2.0 ** -11,
                             atol=2.0 ** -25)
  lengths = batch["caption_mask"].sum(1)
  assert lengths.max() == 80 and lengths.min() < 80

  # Another encoder cannot add a split; Vript takes no tfds split.
  other = text_encoders.load_caption_encoder("minilm", max_length=16)
  with pytest.raises(ValueError, match="holds caption features of"):
    extract.extract_codes(config, "unused", out, views="flip", vript_root=root,
                          caption_encoder=other, output_split="validation")
  with pytest.raises(ValueError, match="take no split"):
    extract.extract_codes(config, "unused", out, split="train", vript_root=root,
                          caption_encoder=encoder)
