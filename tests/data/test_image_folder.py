"""Your own pictures as a dataset: class folders or a labels file, real photographs,
corrupt files skipped and named, the official crops."""

import json
import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest

from helpers import real_photo, take_batches, tiny_titok_config
from vwt_jax import main as main_lib
from vwt_jax.data import codes
from vwt_jax.data import image_folder
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.families import common
from vwt_jax.tools import extract_codes


def _save_as(src, dst, size=None):
  image = Image.open(src)
  if size:
    image = image.resize(size, Image.BICUBIC)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  image.save(dst)


@pytest.fixture
def root(tmp_path):
  """train/{cat,cup,rocket}/ of real photos in several formats and sizes, a
  broken JPEG and a text file; validation/{cat,cup}/."""
  root = tmp_path / "pictures"
  train = root / "train"
  for folder in ("cat", "cup", "rocket/nested"):
    (train / folder).mkdir(parents=True)
  shutil.copy(real_photo("chelsea.png"), train / "cat" / "chelsea.png")
  _save_as(real_photo("chelsea.png"), str(train / "cat" / "chelsea_small.webp"), (151, 100))
  shutil.copy(real_photo("coffee.png"), train / "cup" / "coffee.png")
  _save_as(real_photo("coffee.png"), str(train / "cup" / "coffee.JPG"), (300, 200))
  shutil.copy(real_photo("rocket.jpg"), train / "rocket" / "rocket.jpg")
  shutil.copy(real_photo("camera.png"), train / "rocket" / "nested" / "camera.png")
  (train / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
  (train / "cat" / "notes.txt").write_text("not an image")
  _save_as(real_photo("chelsea.png"), str(root / "validation" / "cat" / "a.png"))
  _save_as(real_photo("coffee.png"), str(root / "validation" / "cup" / "b.jpg"))
  return str(root)


def _config(root, **overrides):
  config = pipeline.default_data_config()
  config.update(dict(name="image_folder", data_dir=root, image_size=32, num_threads=2,
                     prefetch=8, **overrides))
  return config


def _train(config, batch=4):
  return pipeline.create_image_dataset(config, split="train", global_batch_size=batch,
                                       seed=0, train=True)


def test_classes_files_and_labels(root):
  assert image_folder.classes(root, "train") == ("cat", "cup", "rocket")
  assert pipeline.num_classes(_config(root)) == 3
  source, _ = pipeline.open_source(_config(root), "train")
  names = [os.path.relpath(source.record_name(i), root) for i in range(len(source))]
  assert names == ["train/cat/broken.jpg", "train/cat/chelsea.png",
                   "train/cat/chelsea_small.webp", "train/cup/coffee.JPG",
                   "train/cup/coffee.png", "train/rocket/nested/camera.png",
                   "train/rocket/rocket.jpg"]
  assert [source[i]["label"] for i in range(1, len(source))] == [0, 0, 1, 1, 2, 2]


def test_train_batches_skip_count_and_name_the_broken_file(root, caplog):
  iterator = iter(_train(_config(root)))
  batches = take_batches(iterator, 6)  # four epochs of the six good pictures
  for b in batches:
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
  labels = np.concatenate([b["label"] for b in batches])
  assert np.bincount(labels, minlength=3).tolist() == [8, 8, 8]
  assert iterator.stats()["num_corrupt_records"] >= 3
  assert "broken.jpg" in caplog.text
  with pytest.raises(pipeline.TooManyCorruptRecordsError,
                     match=r"max_corrupt_records=0; the last ones: .*broken\.jpg"):
    take_batches(iter(_train(_config(root, max_corrupt_records=0))), 3)


def test_eval_pictures_are_the_official_centre_crops(root):
  ds = pipeline.create_image_dataset(_config(root), split="validation", global_batch_size=2,
                                     seed=0, train=False, process_index=0, process_count=1)
  (batch,) = list(ds)
  assert batch["label"].tolist() == [0, 1] and batch["mask"].all()
  for image, name in zip(batch["image"], ("validation/cat/a.png", "validation/cup/b.jpg")):
    with open(os.path.join(root, name), "rb") as f:
      expected = transforms.preprocess_image(f.read(), image_size=32, train=False)
    # uint8 crops mapped to [-1, 1] by the pipeline: exact in float32.
    np.testing.assert_array_equal(np.round((image + 1.0) * 127.5), expected)


def test_other_splits_take_the_train_classes_by_name(root):
  other = os.path.join(root, "validation", "dog")
  _save_as(real_photo("astronaut.png"), os.path.join(other, "x.png"), (64, 64))
  with pytest.raises(ValueError, match=r"classes \['dog'\] are not among the 3 classes"):
    pipeline.open_source(_config(root), "validation")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_flat_folder_with_a_labels_file(tmp_path, kind):
  flat = tmp_path / "flat" / "train"
  flat.mkdir(parents=True)
  for name in ("coffee.png", "rocket.jpg", "chelsea.png"):
    shutil.copy(real_photo(name), flat / name)
  rows = [("rocket.jpg", "space"), ("coffee.png", "drink"), ("chelsea.png", "animal")]
  if kind == "csv":
    (flat / "labels.csv").write_text("file,label\n" + "".join(f"{f},{l}\n" for f, l in rows))
  else:
    (flat / "labels.jsonl").write_text(
        "".join(json.dumps({"file": f, "label": l}) + "\n" for f, l in rows))
  root = str(tmp_path / "flat")
  assert image_folder.classes(root, "train") == ("animal", "drink", "space")
  source, _ = pipeline.open_source(_config(root), "train")
  assert [source[i]["label"] for i in range(3)] == [2, 1, 0]
  batch = next(iter(_train(_config(root), batch=3)))
  assert sorted(batch["label"].tolist()) == [0, 1, 2]


def test_bad_folders_and_label_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "train"))):
    pipeline.open_source(_config(str(tmp_path)), "train")
  (tmp_path / "train").mkdir()
  with pytest.raises(ValueError, match="no image in class sub-folders and no labels.csv"):
    pipeline.open_source(_config(str(tmp_path)), "train")
  (tmp_path / "train" / "labels.csv").write_text("a.png,1,extra\n")
  with pytest.raises(ValueError, match=r"labels.csv row 1: expected two columns"):
    pipeline.open_source(_config(str(tmp_path)), "train")
  with pytest.raises(ValueError, match="needs data.data_dir"):
    pipeline.open_source(_config(""), "train")


def test_train_a_tokenizer_and_extract_codes_from_a_folder(root, tmp_path):
  config = tiny_titok_config(tmp_path / "unused", total_steps=2, checkpoint_every=2)
  config.data.update(dict(name="image_folder", data_dir=root, eval_split="validation"))
  run = str(tmp_path / "run")
  main_lib.run(config, run)
  with open(os.path.join(run, "metrics.jsonl")) as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert losses and np.isfinite(losses).all()
  summary = extract_codes.extract_codes(common.run_config(run), run, str(tmp_path / "codes"),
                                        views="center", batch_size=4)
  written = codes.CodeSource(str(tmp_path / "codes"), "train")
  # The six pictures; the broken one skipped and counted.
  assert len(written) == 6 and summary["corrupt_skipped"] == 1
  assert written.metadata.num_classes == 3
  assert sorted(int(written[i]["label"]) for i in range(6)) == [0, 0, 1, 1, 2, 2]
