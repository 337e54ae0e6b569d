"""pack_images: an image folder and tar shards into ArrayRecord shards, read back
by the pipeline with the same pictures and labels."""

import io
import json
import os
import shutil
import tarfile

import pytest

from helpers import real_photo
from vwt_jax.data import packed
from vwt_jax.data import pipeline
from vwt_jax.tools import pack_images


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "pictures"
  for split, names in (("train", ("chelsea.png", "coffee.png", "rocket.jpg")),
                       ("val", ("camera.png",))):
    for name in names:
      target = root / split / ("cat" if name in ("chelsea.png", "camera.png") else "thing")
      target.mkdir(parents=True, exist_ok=True)
      shutil.copy(real_photo(name), target / name)
  (root / "train" / "thing" / "broken.png").write_bytes(b"\x89PNG broken")
  return str(root)


def _config(path, **overrides):
  config = pipeline.default_data_config()
  config.update(dict(dict(name="packed", data_dir=path, image_size=32, num_threads=2,
                          prefetch=8, train_split="train", eval_split="val"), **overrides))
  return config


def test_a_packed_folder_reads_back_as_the_folder(folder, tmp_path):
  out = str(tmp_path / "packed")
  summary = pack_images.pack("image_folder", folder, "train", out, shard_size=2)
  assert (summary["num_records"], summary["num_corrupt"], summary["num_classes"]) == (3, 1, 2)
  pack_images.main(["--source", "image_folder", "--input", folder, "--split", "val",
                    "--output", out])
  metadata = packed.read_metadata(out)
  assert metadata["classes"] == ["cat", "thing"]
  assert [s["num_records"] for s in metadata["splits"]["train"]["shards"]] == [2, 1]
  original, _ = pipeline.open_source(_config(folder, name="image_folder"), "train")
  copy, _ = pipeline.open_source(_config(out), "train")
  good = [i for i in range(len(original)) if not original.record_name(i).endswith("broken.png")]
  assert len(copy) == len(good) == 3
  for i, j in enumerate(good):
    assert copy[i]["image"] == original[j]["image"]
    assert int(copy[i]["label"]) == int(original[j]["label"])
  assert pipeline.num_classes(_config(out)) == 2
  batch = next(iter(pipeline.create_image_dataset(_config(out), split="train",
                                                  global_batch_size=3, seed=0, train=True)))
  assert batch["image"].shape == (3, 32, 32, 3) and sorted(batch["label"]) == [0, 1, 1]
  with pytest.raises(ValueError, match="already holds split 'train'"):
    pack_images.pack("image_folder", folder, "train", out)


def test_a_failed_pack_leaves_no_split_and_no_half_shard(folder, tmp_path):
  out = tmp_path / "packed"
  # The broken picture comes second, while the first shard is being written.
  with pytest.raises(pipeline.TooManyCorruptRecordsError, match="exceed --max_corrupt=0"):
    pack_images.pack("image_folder", folder, "train", str(out), max_corrupt=0)
  assert sorted(os.listdir(out)) == []
  summary = pack_images.pack("image_folder", folder, "train", str(out))
  assert summary["num_records"] == 3


def test_tar_shards_pack_with_their_class_ids(tmp_path):
  shard = tmp_path / "train-0.tar"
  with tarfile.open(shard, "w") as tar:
    for key, (name, label) in enumerate((("coffee.png", 3), ("chelsea.png", 1))):
      with open(real_photo(name), "rb") as f:
        image = f.read()
      for suffix, data in ((os.path.splitext(name)[1], image),
                           (".json", json.dumps({"label": label}).encode())):
        info = tarfile.TarInfo(f"{key:04d}{suffix}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  out = str(tmp_path / "packed")
  summary = pack_images.pack("webdataset", str(tmp_path), "train-*.tar", out,
                             output_split="train")
  assert summary["num_classes"] == 4 and summary["num_records"] == 2
  copy, _ = pipeline.open_source(_config(out), "train")
  assert [int(copy[i]["label"]) for i in range(2)] == [3, 1]
  with pytest.raises(ValueError, match=r"--num_classes=2: .* labels up to 3"):
    pack_images.pack("webdataset", str(tmp_path), "train-*.tar", str(tmp_path / "other"),
                     num_classes=2)


def test_damaged_packed_shards_are_named(folder, tmp_path):
  out = str(tmp_path / "packed")
  pack_images.pack("image_folder", folder, "train", out, shard_size=2)
  shard = os.path.join(out, "train-00001.array_record")
  open(shard, "wb").close()
  with pytest.raises(ValueError, match=f"{shard}: not a readable ArrayRecord shard"):
    pipeline.open_source(_config(out), "train")
  assert packed.read_metadata(out)["splits"]["train"]["num_corrupt"] == 1
