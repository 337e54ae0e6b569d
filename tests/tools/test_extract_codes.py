"""extract_codes: a tiny TiTok checkpoint -> code dataset (images or Vript keyframes +
caption features) -> generator batches."""

import json
import os
import socket
import subprocess
import sys
import time

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
from vwt_jax.families import common
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


@pytest.fixture
def every_fifth_corrupt(monkeypatch):
  """Sources whose records 0, 5, 10, ... do not decode (named 'shapes')."""
  open_source = pipeline.open_source
  monkeypatch.setattr(pipeline, "open_source",
                      lambda c, s: (_CorruptEveryFifth(open_source(c, s)[0]), "shapes"))


@pytest.mark.usefixtures("every_fifth_corrupt")
def test_views_land_in_order_and_corrupt_images_are_skipped(run, tmp_path, monkeypatch):
  config = run[0]
  monkeypatch.setattr(tokenizer_lib, "load_tokenizer", _top_left_pixels)
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
  # Captions and a caption encoder go together.
  pairs = tiny_titok_config(run[0].data.data_dir)
  pairs.data.name = "image_text"
  with pytest.raises(ValueError, match="'image_text' gives image-caption pairs: name the "
                     "caption encoder"):
    extract.extract_codes(pairs, run[1], str(tmp_path), views="center")
  with pytest.raises(ValueError, match="a caption encoder needs captions"):
    extract.extract_codes(run[0], run[1], str(tmp_path), views="center",
                          caption_encoder=text_encoders.load_caption_encoder("minilm"))


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


def _files(folder):
  """{relative path: bytes} of every file under `folder`."""
  found = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, folder)] = f.read()
  return found


@pytest.mark.usefixtures("every_fifth_corrupt")
def test_two_processes_write_the_files_one_writes(run, tmp_path, caplog):
  _, workdir, _, _ = run
  config = common.run_config(workdir)
  # 20 records in shards of 3 (the last of 2); batches of 4 straddle them.
  kwargs = dict(split="train[:20]", views="flip", batch_size=4, shard_size=3)
  one = extract.extract_codes(config, workdir, str(tmp_path / "one"), **kwargs)
  assert (one["records"], one["corrupt_skipped"], one["shards"]) == (16, 4, 7)
  assert one["complete"]

  two = str(tmp_path / "two")
  first = extract.extract_codes(config, workdir, two, process_index=0, process_count=2,
                                **kwargs)
  # Shards 0, 2, 4, 6 hold records 0-2, 6-8, 12-14, 18-19, of which 0 is corrupt.
  assert (first["records"], first["corrupt_skipped"], first["shards_written"]) == (10, 1, 4)
  assert not first["complete"] and not os.path.exists(codes.metadata_path(two))
  second = extract.extract_codes(config, workdir, two, process_index=1, process_count=2,
                                 **kwargs)
  assert (second["records"], second["corrupt_skipped"], second["complete"]) == (6, 3, True)
  # Logged by their index in the source, not in this process's share.
  assert "Corrupt record 15 of shapes, skipped" in caplog.text
  assert _files(two) == _files(str(tmp_path / "one"))

  meta = codes.read_metadata(two)
  assert meta.splits["train"]["num_corrupt"] == 4
  assert [s["num_records"] for s in meta.splits["train"]["shards"]] == [2, 2, 3, 2, 3, 2, 2]
  source = codes.CodeSource(two, "train")
  assert [source[i]["index"] for i in range(len(source))] == [i for i in range(20) if i % 5]

  # Run again, the job is complete: nothing is encoded. Another job is refused.
  again = extract.extract_codes(config, workdir, two, process_index=1, process_count=2,
                                **kwargs)
  assert (again["records"], again["shards_resumed"], again["complete"]) == (0, 3, True)
  with pytest.raises(ValueError, match=r"train-progress/job.json belongs to another "
                     r"extraction \(num_records, source_split differ\)"):
    extract.extract_codes(config, workdir, two, **{**kwargs, "split": "train[:10]"})
  with pytest.raises(ValueError, match="process_index=2 is not in"):
    extract.extract_codes(config, workdir, two, process_index=2, process_count=2, **kwargs)


@pytest.mark.usefixtures("every_fifth_corrupt")
def test_a_shard_of_corrupt_records_only_has_no_file(run, tmp_path, monkeypatch):
  config = run[0]
  monkeypatch.setattr(tokenizer_lib, "load_tokenizer", _top_left_pixels)
  out = str(tmp_path / "codes")
  summary = extract.extract_codes(config, "unused", out, split="train[:7]", views="center",
                                  batch_size=2, shard_size=1)
  assert (summary["records"], summary["corrupt_skipped"], summary["shards"]) == (5, 2, 7)
  shards = codes.read_metadata(out).splits["train"]["shards"]
  assert [s["file"] for s in shards] == [f"train-{k:05d}.array_record" for k in (1, 2, 3, 4, 6)]
  assert len(codes.CodeSource(out, "train")) == 5


_SLOW_EXTRACTION = """
import sys, time
from absl import app
from vwt_jax.tools import extract_codes
record = extract_codes._Progress.record

def record_slowly(self, shard, entry):
  record(self, shard, entry)
  time.sleep(1.0)  # Time for the test to kill the process between two shards.

extract_codes._Progress.record = record_slowly
extract_codes.define_flags()
app.run(extract_codes.main)
"""


def test_a_killed_extraction_resumes_to_the_same_files(run, tmp_path):
  _, workdir, _, _ = run
  config = common.run_config(workdir)
  kwargs = dict(split="validation", views="ten_crop", crop_range=1.1, batch_size=4,
                shard_size=3)
  reference = str(tmp_path / "reference")
  extract.extract_codes(config, workdir, reference, **kwargs)

  out = str(tmp_path / "codes")
  script = tmp_path / "slow_extraction.py"
  script.write_text(_SLOW_EXTRACTION)
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), JAX_PLATFORMS="cpu")
  process = subprocess.Popen(
      [sys.executable, str(script), "--checkpoint", workdir, "--output_dir", out,
       "--split", "validation", "--views", "ten_crop", "--crop_range", "1.1",
       "--batch_size", "4", "--shard_size", "3"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  first_done = os.path.join(out, "validation-progress", "00001.json")
  deadline = time.time() + 240
  while not os.path.exists(first_done) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.kill()
  _, stderr = process.communicate()
  assert os.path.exists(first_done), stderr.decode()[-3000:]
  assert not os.path.exists(codes.metadata_path(out))

  resumed = extract.extract_codes(config, workdir, out, **kwargs)
  # 16 records: shards 0 and 1 were done before the kill, 2 to 5 remain.
  assert resumed["shards_resumed"] >= 2 and resumed["complete"]
  assert resumed["records"] == 16 - 3 * resumed["shards_resumed"]
  # Same files, and nothing half-written left behind.
  assert _files(out) == _files(reference)


def test_extraction_to_a_bucket_writes_what_it_writes_locally(run, tmp_path, monkeypatch,
                                                              bucket, array_record_on_bucket):
  config = run[0]
  monkeypatch.setattr(tokenizer_lib, "load_tokenizer", _top_left_pixels)
  kwargs = dict(split="train[:10]", views="center", batch_size=4, shard_size=4)
  local = str(tmp_path / "codes")
  extract.extract_codes(config, "unused", local, **kwargs)
  for index in (1, 0):
    summary = extract.extract_codes(config, "unused", "gs://b/codes", process_index=index,
                                    process_count=2, **kwargs)
  assert summary["complete"]
  assert {f"b/codes/{name}": data for name, data in _files(local).items()} == bucket
  source = codes.CodeSource("gs://b/codes", "train")
  assert [source[i]["index"] for i in range(10)] == list(range(10))
  assert array_record_on_bucket.urls


def test_a_two_process_jax_job_writes_the_files_one_process_writes(run, tmp_path):
  _, workdir, _, _ = run
  # One CPU device per process (no fake-device flag), each compiling on its own.
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(PYTHONPATH=os.path.abspath(REPO), JAX_PLATFORMS="cpu")
  argv = [sys.executable, "-m", "vwt_jax.tools.extract_codes", "--checkpoint", workdir,
          "--split", "train[:24]", "--views", "flip", "--batch_size", "4", "--shard_size", "5"]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    coordinator = f"127.0.0.1:{s.getsockname()[1]}"
  started = [subprocess.Popen(argv + ["--output_dir", str(tmp_path / "one")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
  for index in range(2):
    started.append(subprocess.Popen(
        argv + ["--output_dir", str(tmp_path / "two")],
        env=dict(env, VWT_COORDINATOR_ADDRESS=coordinator, VWT_NUM_PROCESSES="2",
                 VWT_PROCESS_ID=str(index)), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  summaries = []
  for process in started:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-3000:]
    summaries.append(json.loads(stdout.decode().strip().splitlines()[-1]))
  assert [s["process"] for s in summaries] == ["0/1", "0/2", "1/2"]
  # Shards 0, 2, 4 (records 0-4, 10-14, 20-23) and 1, 3 (5-9, 15-19).
  assert [s["records"] for s in summaries] == [24, 14, 10]
  assert all(s["complete"] for s in summaries)
  assert _files(str(tmp_path / "two")) == _files(str(tmp_path / "one"))
