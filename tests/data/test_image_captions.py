"""Image-caption pairs: tar shards with .txt / .json captions, LlamaGen's jsonl
index folders and Parquet indexes of real photographs, corrupt images skipped
and named, malformed indexes refused, captions streamed with exact resume and
packed as ArrayRecord."""

import io
import json
import os
import shutil
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import helpers
from helpers import assert_same_batches, real_photo, take_batches
from vwt_jax.data import array_records
from vwt_jax.data import image_text
from vwt_jax.data import packed
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.tools import pack_images

# LlamaGen's caption lists: [blip, llava, llava_first].
CAPTIONS = {
    "coffee.png": ["a cup of coffee", "A white cup of coffee on a saucer, beans beside it.",
                   "A white cup of coffee on a saucer"],
    "chelsea.png": ["a cat", "An orange tabby cat looks to the left.", "An orange tabby cat"],
    "rocket.jpg": ["a rocket launch", "A rocket lifts off its pad in smoke.", "A rocket"],
    "astronaut.png": ["an astronaut", "An astronaut in a suit before a flag.", "An astronaut"],
}


def _photo(name):
  with open(real_photo(name), "rb") as f:
    return f.read()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_jsonl(path, lines):
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))


@pytest.fixture
def shards(tmp_path):
  """img2dataset's layout (.jpg + .txt + .json) and the other caption forms: four
  captioned photos, a .json without a caption next to a .txt, a caption that is
  not UTF-8, a photo without a caption and a caption without a photo."""
  folder = tmp_path / "shards"
  folder.mkdir()
  with tarfile.open(folder / "train-000.tar", "w") as tar:
    _add(tar, "000000.png", _photo("coffee.png"))
    _add(tar, "000000.txt", b"a cup of coffee\n")
    _add(tar, "000000.json", json.dumps({"caption": "a cup of coffee", "key": "000000",
                                         "status": "success"}).encode())
    _add(tar, "000001.jpg", _photo("rocket.jpg"))
    _add(tar, "000001.json", json.dumps({"caption": "a rocket launch", "width": 512}).encode())
    _add(tar, "cats/000002.png", _photo("chelsea.png"))
    _add(tar, "cats/000002.json", json.dumps({"caption": None, "text": "a cat"}).encode())
  with tarfile.open(folder / "train-001.tar", "w") as tar:
    _add(tar, "000003.png", _photo("astronaut.png"))
    _add(tar, "000003.json", json.dumps({"url": "https://example.com/a.png"}).encode())
    _add(tar, "000003.txt", "an astronaut, façade".encode())
    _add(tar, "000004.png", _photo("camera.png"))
    _add(tar, "000004.txt", "a camera".encode("utf-16"))
    _add(tar, "000005.png", _photo("coffee.png"))
    _add(tar, "000006.txt", b"a caption without its image")
  return str(folder)


@pytest.fixture
def t2i(tmp_path):
  """LlamaGen's layout: train/ holds two jsonl files (a blank line, a missing and
  a broken image among them) and the images; validation.jsonl plain captions."""
  root = tmp_path / "t2i"
  images = root / "train" / "images"
  images.mkdir(parents=True)
  for name in ("coffee.png", "rocket.jpg"):
    shutil.copy(real_photo(name), images / name)
  (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  shutil.copy(real_photo("chelsea.png"), elsewhere / "chelsea.png")
  _write_jsonl(root / "train" / "000.jsonl", [
      {"image_path": "images/coffee.png", "text": CAPTIONS["coffee.png"]},
      {"image_path": str(elsewhere / "chelsea.png"), "text": CAPTIONS["chelsea.png"]},
      "",
      {"image_path": "images/missing.jpg", "text": CAPTIONS["astronaut.png"]}])
  _write_jsonl(root / "train" / "001.jsonl", [
      {"image_path": "images/broken.jpg", "text": CAPTIONS["astronaut.png"]},
      {"image_path": "images/rocket.jpg", "text": CAPTIONS["rocket.jpg"]}])
  (root / "train" / "README.md").write_text("not an index")
  _write_jsonl(root / "validation.jsonl", [
      {"image": "train/images/rocket.jpg", "caption": "a rocket"},
      {"file": "train/images/broken.jpg", "prompt": "nothing"},
      {"path": "train/images/coffee.png", "TEXT": "coffee"}])
  return str(root)


def _config(name, data_dir, **overrides):
  config = pipeline.default_data_config()
  config.update(dict(name=name, data_dir=data_dir, image_size=32, num_threads=2, prefetch=8,
                     **overrides))
  return config


def _shards_config(shards, **overrides):
  return _config("webdataset", shards, **{
      "captions": True, "train_split": "train-{000..001}.tar", "eval_split": "train-001.tar",
      **overrides})


def _t2i_config(t2i, **overrides):
  return _config("image_text", t2i, train_split="train", eval_split="validation.jsonl",
                 **overrides)


def _records(source):
  """{record name: caption} of the readable records; {record name: error} of the others."""
  good, corrupt = {}, {}
  for i in range(len(source)):
    try:
      record = source[i]
      transforms.decode_image(record["image"])
      good[source.record_name(i)] = record["caption"]
    except transforms.CorruptRecordError as e:
      corrupt[source.record_name(i)] = str(e)
  return good, corrupt


def test_tar_captions_from_txt_or_json(shards):
  config = _shards_config(shards)
  assert pipeline.captioned(config) and pipeline.num_classes(config) == 0
  source, _ = pipeline.open_source(config, config.train_split)
  good, corrupt = _records(source)
  name = lambda shard, key: os.path.join(shards, f"train-00{shard}.tar:{key}")
  # The .txt first, else the .json's "caption", else its "text".
  assert good == {name(0, "000000"): "a cup of coffee", name(0, "000001"): "a rocket launch",
                  name(0, "cats/000002"): "a cat", name(1, "000003"): "an astronaut, façade"}
  assert source[0]["image"] == _photo("coffee.png") and "label" not in source[0]
  assert sorted(corrupt) == [name(1, "000004"), name(1, "000005"), name(1, "000006")]
  for key in ("000004", "000005"):
    assert "no readable caption (.txt, or .json with a" in corrupt[name(1, key)]
  assert "no image" in corrupt[name(1, "000006")]
  # The same shards read for classes: no sample has a label.
  labelled, _ = pipeline.open_source(_shards_config(shards, captions=False), "train-000.tar")
  with pytest.raises(transforms.CorruptRecordError, match="000000: no readable label"):
    labelled[0]  # pylint: disable=pointless-statement


def test_llamagen_jsonl_folders_and_caption_keys(t2i):
  config = _t2i_config(t2i)
  assert pipeline.captioned(config) and pipeline.num_classes(config) == 0
  source, description = pipeline.open_source(config, "train")
  assert "image_text split 'train'" in description
  good, corrupt = _records(source)
  train = os.path.join(t2i, "train")
  chelsea = os.path.join(os.path.dirname(t2i), "elsewhere", "chelsea.png")
  # Name order of the files, line numbers counting the blank line; README.md ignored.
  assert good == {
      f"{train}/000.jsonl line 1: {train}/images/coffee.png": "a cup of coffee",
      f"{train}/000.jsonl line 2: {chelsea}": "a cat",
      f"{train}/001.jsonl line 2: {train}/images/rocket.jpg": "a rocket launch"}
  assert list(corrupt) == [f"{train}/000.jsonl line 4: {train}/images/missing.jpg",
                           f"{train}/001.jsonl line 1: {train}/images/broken.jpg"]
  assert "cannot read" in corrupt[f"{train}/000.jsonl line 4: {train}/images/missing.jpg"]
  assert source[1]["image"] == _photo("chelsea.png")
  for key, number in image_text.CAPTION_KEY.items():
    keyed, _ = pipeline.open_source(_t2i_config(t2i, caption_key=key), "train")
    assert keyed[0]["caption"] == CAPTIONS["coffee.png"][number]
  # A plain caption and the other field names; a file or a pattern as the split.
  for split in ("validation.jsonl", "valid*.jsonl", "validation.jsonl,train/001.jsonl"):
    source, _ = pipeline.open_source(config, split)
    assert [source[i]["caption"] for i in range(3)] == ["a rocket", "nothing", "coffee"]
    assert source[2]["image"] == _photo("coffee.png")
  assert len(pipeline.open_source(config, "validation.jsonl,train/001.jsonl")[0]) == 5


def test_parquet_indexes(t2i, tmp_path):
  folder = tmp_path / "laion"
  folder.mkdir()
  images = os.path.join(t2i, "train", "images")
  pq.write_table(pa.table({"TEXT": ["a cup of coffee", "a rocket"],
                           "image": [os.path.join(images, "coffee.png"),
                                     os.path.join(images, "rocket.jpg")],
                           "similarity": [0.3, 0.4]}), folder / "part-0.parquet")
  # LlamaGen's caption lists, paths relative to the index.
  pq.write_table(pa.table({"image_path": ["../t2i/train/images/broken.jpg",
                                          "../t2i/train/images/rocket.jpg"],
                           "text": [CAPTIONS["astronaut.png"], CAPTIONS["rocket.jpg"]]}),
                 folder / "part-1.parquet")
  _write_jsonl(folder / "part-2.jsonl", [{"file": os.path.join(images, "coffee.png"),
                                          "caption": "coffee again"}])
  source = image_text.data_source(str(tmp_path), "laion", "llava_first")
  good, corrupt = _records(source)
  assert good == {
      f"{folder}/part-0.parquet row 1: {images}/coffee.png": "a cup of coffee",
      f"{folder}/part-0.parquet row 2: {images}/rocket.jpg": "a rocket",
      f"{folder}/part-1.parquet row 2: {folder}/../t2i/train/images/rocket.jpg": "A rocket",
      f"{folder}/part-2.jsonl line 1: {images}/coffee.png": "coffee again"}
  assert list(corrupt) == [f"{folder}/part-1.parquet row 1: {folder}/../t2i/train/images/"
                           "broken.jpg"]
  assert source[1]["image"] == source[3]["image"] == _photo("rocket.jpg")


@pytest.mark.parametrize("line, error", [
    ('{"image_path": "a.png", "text": ["blip"', r"x\.jsonl line 2: not JSON .*expected "
     r'\{"image_path": \.\.\., "text": \.\.\.\}'),
    ('["a.png", "a caption"]', r"x\.jsonl line 2: expected a JSON object, got list"),
    ('{"image_path": "a.png", "text": null, "url": "u"}',
     r"x\.jsonl line 2: expected a field of text \| caption \| prompt \| TEXT \(not null\); "
     r"it has \['image_path', 'text', 'url'\]"),
    ('{"img": "a.png", "caption": "c"}',
     r"line 2: expected a field of image_path \| image \| file \| path"),
    ('{"image_path": "a.png", "text": ["blip", "llava"]}',
     r"line 2: \"text\" lists 2 captions; data\.caption_key='llava_first' takes caption #2"),
    ('{"image_path": "a.png", "text": 3}', r'line 2: expected "image_path" an image path and '
     r'"text" a caption \(strings\), got str and int'),
    ('{"image_path": "https://example.com/a.jpg", "text": "c"}',
     r"line 2: https://example\.com/a\.jpg is a web URL; nothing is downloaded here: fetch the "
     r"images first \(e\.g\. img2dataset"),
])
def test_malformed_index_lines_stop_at_open_time(tmp_path, line, error):
  index = tmp_path / "x.jsonl"
  index.write_text('{"image_path": "a.png", "text": ["a", "b", "c"]}\n' + line + "\n")
  with pytest.raises(ValueError, match=error):
    image_text.ImageTextSource([str(index)], caption_key="llava_first")


def test_bad_splits_and_parquet_columns_are_named(t2i, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"image_text split 'test': .*t2i/test does not"):
    image_text.data_source(t2i, "test")
  with pytest.raises(FileNotFoundError, match=r"image_text index files '.*/test-\*\.jsonl': no"):
    image_text.data_source(t2i, "test-*.jsonl")
  with pytest.raises(ValueError, match=r"train/README\.md: not an index file \(\.jsonl or"):
    image_text.data_source(t2i, "train/README.md")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"empty: no \.jsonl or \.parquet index file"):
    image_text.data_source(str(tmp_path), "empty")
  with pytest.raises(ValueError, match=r"data\.caption_key='long': expected one of \['blip'"):
    image_text.data_source(t2i, "train", "long")
  pq.write_table(pa.table({"url": ["https://example.com/a.jpg"], "caption": ["c"]}),
                 tmp_path / "urls.parquet")
  with pytest.raises(ValueError, match=r"urls\.parquet: expected a column of image_path \| "
                     r"image \| file \| path; it has \['url', 'caption'\]"):
    image_text.data_source(str(tmp_path), "urls.parquet")
  # Hugging Face's embedded images: their bytes, not paths.
  pq.write_table(pa.table({"image": [{"bytes": _photo("coffee.png"), "path": "coffee.png"}],
                           "text": ["c"]}), tmp_path / "embedded.parquet")
  with pytest.raises(ValueError, match=r"embedded\.parquet: column 'image' holds struct<.*>, "
                     r"not image paths \(strings\)"):
    image_text.data_source(str(tmp_path), "embedded.parquet")


def test_parquet_without_pyarrow_names_it(tmp_path, monkeypatch):
  pq.write_table(pa.table({"image": ["a.png"], "text": ["c"]}), tmp_path / "x.parquet")
  monkeypatch.setitem(sys.modules, "pyarrow", None)
  with pytest.raises(ImportError, match=r"Parquet index files need pyarrow \(pip install"):
    image_text.ImageTextSource([str(tmp_path / "x.parquet")])


class _ReadCaptions(pipeline.RecordReader):
  """(position, record index) -> the record's caption and index, the image decoded
  (what code extraction takes from a captioned record)."""

  def __init__(self, source, description, *, train):
    super().__init__(len(source), description, train=train)
    self._source = source

  def _padding(self):
    return {"caption": "", "index": np.int32(-1)}

  def _example(self, position, record_index):
    del position
    record = self._source[record_index]
    transforms.decode_image(record["image"])
    return {"caption": record["caption"], "index": np.int32(record_index)}


def _caption_batches(config, *, batch, train):
  source, description = pipeline.open_source(config, config.train_split)
  return pipeline.record_batches(
      config, _ReadCaptions(source, description, train=train), len(source),
      description=description, finalize=lambda b: b, global_batch_size=batch, seed=0,
      train=train, process_index=0, process_count=1)


@pytest.mark.parametrize("kind", ["webdataset", "image_text"])
def test_captions_stream_with_corrupt_records_skipped_and_exact_resume(shards, t2i, kind,
                                                                       caplog):
  config = _shards_config(shards) if kind == "webdataset" else _t2i_config(t2i)
  source, _ = pipeline.open_source(config, config.train_split)
  good, corrupt = _records(source)
  iterator = iter(_caption_batches(config, batch=len(good), train=True))
  batches = take_batches(iterator, 3)  # three epochs of the good pairs
  streamed = np.concatenate([b["caption"] for b in batches]).tolist()
  assert sorted(streamed) == sorted(list(good.values()) * 3)
  assert iterator.stats()["num_corrupt_records"] >= 2 * len(corrupt)
  for name in corrupt:
    assert name in caplog.text
  state = iterator.get_state()
  expected = take_batches(iterator, 2)
  restored = iter(_caption_batches(config, batch=len(good), train=True))
  restored.set_state(state)
  assert_same_batches(take_batches(restored, 2), expected)
  # One pass in record order, the corrupt records masked out.
  (evaluated,) = list(_caption_batches(config, batch=8, train=False))
  assert evaluated["caption"][evaluated["mask"]].tolist() == list(good.values())
  assert evaluated["index"][~evaluated["mask"]].tolist() == [-1] * (8 - len(good))


def test_image_batches_of_captioned_sources_train_tokenizers(t2i):
  """The images alone (label 0), corrupt ones skipped, the eval crops the official ones."""
  config = _t2i_config(t2i)
  iterator = iter(pipeline.create_image_dataset(config, split="train", global_batch_size=3,
                                                seed=0, train=True))
  batch = next(iterator)
  assert batch["image"].shape == (3, 32, 32, 3) and batch["label"].tolist() == [0, 0, 0]
  ds = pipeline.create_image_dataset(config, split=config.eval_split, global_batch_size=4,
                                     seed=0, train=False, process_index=0, process_count=1)
  (batch,) = list(ds)
  assert batch["mask"].tolist() == [True, False, True, False]
  expected = transforms.preprocess_image(_photo("coffee.png"), image_size=32, train=False)
  np.testing.assert_array_equal(np.round((batch["image"][2] + 1.0) * 127.5), expected)


def test_an_index_on_a_bucket_reads_its_relative_images_there(t2i):
  with helpers.fake_gcs() as bucket:
    bucket["b/t2i/train/images/coffee.png"] = _photo("coffee.png")
    bucket["b/t2i/train/part-0.jsonl"] = (json.dumps(
        {"image_path": "images/coffee.png", "text": CAPTIONS["coffee.png"]}) + "\n").encode()
    source = image_text.ImageTextSource(image_text.index_files("gs://b/t2i", "train"))
    assert source.record_name(0) == ("gs://b/t2i/train/part-0.jsonl line 1: "
                                     "gs://b/t2i/train/images/coffee.png")
    assert source[0] == {"image": _photo("coffee.png"), "caption": "a cup of coffee"}


def test_captioned_sources_pack_with_their_captions(shards, t2i, tmp_path):
  out = str(tmp_path / "packed")
  summary = pack_images.pack("image_text", t2i, "train", out, caption_key="llava")
  assert (summary["num_records"], summary["num_corrupt"], summary["captions"]) == (3, 2, True)
  pack_images.main(["--source", "webdataset", "--input", shards, "--split",
                    "train-{000..001}.tar", "--output_split", "shards", "--captions",
                    "--output", out])
  config = _config("packed", out)
  assert pipeline.captioned(config) and pipeline.num_classes(config) == 0
  copy, _ = pipeline.open_source(config, "train")
  assert [copy[i]["caption"] for i in range(3)] == [
      CAPTIONS[name][1] for name in ("coffee.png", "chelsea.png", "rocket.jpg")]
  assert copy[2]["image"] == _photo("rocket.jpg")
  copy, _ = pipeline.open_source(config, "shards")
  assert copy[3] == {"image": _photo("astronaut.png"), "caption": "an astronaut, façade"}
  with pytest.raises(ValueError, match=r"holds image-caption pairs: split 'val' of labelled "
                     "images goes to another folder"):
    pack_images.pack("webdataset", shards, "train-000.tar", out, output_split="val",
                     max_corrupt=10)
  with pytest.raises(ValueError, match="--captions is for tar shards"):
    pack_images.pack("image_text", t2i, "train", str(tmp_path / "other"), captions=True)


def test_damaged_packed_captions_are_corrupt_records(tmp_path):
  out = str(tmp_path / "packed")
  shards = array_records.ShardWriter(out, "train", 10)
  os.makedirs(out)
  for record in (b"\x05\x00\x00\x00abcde" + _photo("coffee.png"), b"\x05\x00\x00\x00abc",
                 b"\x02\x00\x00\x00\xff\xfe" + _photo("coffee.png"), b"\x01"):
    shards.write(record)
  shards.close()
  with open(packed.metadata_path(out), "w") as f:
    json.dump({"format": packed.FORMAT, "classes": [], "captions": True,
               "splits": {"train": {"num_records": 4, "shards": shards.shards}}}, f)
  source = packed.PackedSource(out, "train")
  assert source[0] == {"image": _photo("coffee.png"), "caption": "abcde"}
  for index, error in ((1, "7 bytes, too few for its caption and image"),
                       (2, r"caption \('utf-8' codec"), (3, "1 bytes, too few")):
    with pytest.raises(transforms.CorruptRecordError, match=f"train-00000.array_record record "
                       f"{index}: {error}"):
      source[index]  # pylint: disable=pointless-statement
