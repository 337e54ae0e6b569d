"""Text-to-image on your own image-caption pairs, end to end: real photographs
in tar shards as img2dataset writes them (and held-out ones in LlamaGen's
jsonl layout) -> codes and caption features (extracted once) -> a tiny t2i
GPT trained on them -> images sampled from captions."""

import io
import json
import os
import shutil
import tarfile

import numpy as np

import helpers
from vwt_jax import sample as sample_lib
from vwt_jax.data import codes
from vwt_jax.families import text_encoders
from vwt_jax.tools import extract_codes as extract
from vwt_jax.training import generator

# Five photographs and what they show.
SUBJECTS = {"coffee.png": "a cup of coffee on a saucer", "chelsea.png": "a tabby cat",
            "camera.png": "a man with a camera on a tripod", "rocket.jpg": "a rocket at launch",
            "astronaut.png": "an astronaut in a space suit"}
LENGTH = 12


def _pairs(root):
  """The training pairs as img2dataset writes them (ROOT/train-000000.tar:
  KEY.png|jpg + KEY.txt, each photograph twice), the held-out ones listed in
  LlamaGen's jsonl layout (ROOT/validation.jsonl, text = [blip, llava, llava_first])."""
  os.makedirs(os.path.join(root, "images"))
  with tarfile.open(os.path.join(root, "train-000000.tar"), "w") as tar:
    for copy in range(2):
      for name, subject in SUBJECTS.items():
        stem, extension = os.path.splitext(name)
        tar.add(helpers.real_photo(name), arcname=f"{copy}{stem}{extension}")
        caption = f"In this image, {subject}.".encode()
        info = tarfile.TarInfo(f"{copy}{stem}.txt")
        info.size = len(caption)
        tar.addfile(info, io.BytesIO(caption))
  with open(os.path.join(root, "validation.jsonl"), "w", encoding="utf-8") as f:
    for name, subject in list(SUBJECTS.items())[:4]:
      shutil.copy(helpers.real_photo(name), os.path.join(root, "images", name))
      f.write(json.dumps({"image_path": f"images/{name}", "text": [
          f"a photo of {subject}", f"In this image, {subject}.", subject]}) + "\n")


def test_a_t2i_gpt_trains_and_samples_from_real_image_caption_pairs(shapes_dir, tmp_path):
  root = str(tmp_path / "pairs")
  _pairs(root)
  titok_config = helpers.tiny_titok_config(shapes_dir)
  titok_config.data.update(dict(name="webdataset", captions=True, data_dir=root,
                                train_split="train-{000000..000000}.tar"))
  titok = str(tmp_path / "titok")
  helpers.save_random_titok_run(titok_config, titok)
  held_out = titok_config.copy_and_resolve_references()
  held_out.data.update(dict(name="image_text", caption_key="llava"))

  encoder = text_encoders.load_caption_encoder("minilm", max_length=LENGTH)
  code_dir = str(tmp_path / "codes")
  for config, split, output_split, records in (
      (titok_config, titok_config.data.train_split, "train", 10),
      (held_out, "validation.jsonl", "validation", 4)):
    summary = extract.extract_codes(config, titok, code_dir, split=split,
                                    output_split=output_split, views="flip", batch_size=8,
                                    caption_encoder=encoder)
    assert (summary["records"], summary["corrupt_skipped"]) == (records, 0)
  meta = codes.read_metadata(code_dir)
  assert (meta.num_classes, meta.caption_dim, meta.caption_length) == (0, 384, LENGTH)
  assert meta.source["caption_encoder"] == text_encoders.describe(encoder)
  # Each record holds the features of its own caption (the llava one): those
  # the encoder gives in the same first batch of 8, stored as float16, so to
  # half an ulp, 2^-11 relative (2^-25 absolute among the subnormals).
  llava = [f"In this image, {subject}." for subject in SUBJECTS.values()]
  features, mask = encoder.encode((llava + llava)[:8])
  source = codes.CodeSource(code_dir, "train")
  for i in (1, 7):
    np.testing.assert_allclose(source[i]["caption_emb"], features[i][mask[i].astype(bool)],
                               rtol=2.0 ** -11, atol=2.0 ** -25)

  config = helpers.load_config("llamagen.py", "tiny,cond=t2i")
  config.model.update(dict(n_layer=1, n_head=2, dim=32))
  config.data.update(dict(dir=code_dir, num_workers=0))
  config.update(dict(total_steps=4, global_batch_size=8, log_every=2, eval_every=4,
                     checkpoint_every=4, async_checkpointing=False))
  config.eval.update(dict(num_batches=1, batch_size=8))
  run = str(tmp_path / "gpt")
  result = generator.train(config, run)
  assert result["step"] == 4 and np.isfinite(result["eval"]["eval_loss"])

  gen, params = sample_lib.load(config, run)
  cond, emb_mask = sample_lib.caption_conditions(sample_lib.caption_encoder(gen),
                                                 ["a tabby cat", "a rocket at launch"])
  images = sample_lib.sample(gen, params, cond, emb_mask=emb_mask, seed=0, batch_size=8,
                             top_k=0)
  assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
