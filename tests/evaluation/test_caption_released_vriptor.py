"""`python -m vwt_jax.caption --pretrained vriptor-stllm` offline: the official
code's tiny ST-LLM (tests/fixtures/vriptor) saved in the released layout in a
Hub cache, with the Q-Former's BERT vocabulary, captioning real videos."""

import json
import os
import shutil

import av
from huggingface_hub import constants
import jax
import numpy as np
import pytest

import helpers
from vwt_jax import caption
from vwt_jax.families import pretrained
from vwt_jax.families import st_llm as st_llm_family

MAX_NEW = 6


def _short_video(path, num_frames=20):
  """An mp4 of `num_frames` frames: shorter than the 64 the released model reads."""
  rng = np.random.default_rng(0)
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for _ in range(num_frames):
      frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8),
                                         format="rgb24")
      out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


@pytest.fixture
def released(fixtures_dir, tmp_path, monkeypatch):
  """A Hub cache holding the tiny Vriptor and bert-base-uncased's stand-in, offline."""
  folder = tmp_path / "Vriptor-STLLM"
  names = helpers.released_stllm_folder(fixtures_dir, str(folder))
  cache = str(tmp_path / "hub")
  repo = pretrained.get("vriptor-stllm").checkpoint.removeprefix("hf://")
  helpers.hub_cache(cache, repo, {name: str(folder / name) for name in names})
  helpers.hub_cache(cache, st_llm_family.QFORMER_TOKENIZER.removeprefix("hf://"),
                    {"vocab.txt": os.path.join(fixtures_dir, "vriptor", "stllm_bert_vocab.txt")})
  monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return pretrained.get("vriptor-stllm").checkpoint


def test_released_vriptor_captions_a_folder_of_real_videos(released, tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  shutil.copy(helpers.real_video("bikes.mp4"), videos / "bikes.mp4")
  shutil.copy(helpers.real_video("carphone_pristine.mp4"), videos / "carphone.mp4")
  _short_video(str(videos / "short.mp4"))
  out = str(tmp_path / "out")
  result = caption.run(str(videos), released, output_dir=out, max_new_tokens=MAX_NEW,
                       batch_size=2)
  assert (result["num_videos"], result["num_clips"], result["skipped"]) == (3, 3, [])
  with open(os.path.join(out, caption.PREDICTIONS_FILE)) as f:
    predicted = {row["id"]: row["pred"] for row in map(json.loads, f)}
  assert sorted(predicted) == ["bikes", "carphone", "short"] and all(predicted.values())

  # Each caption is what the model gives that video alone: the short video
  # (20 frames) ran apart from the 64-frame ones, and batching padded the
  # shorter prompt in front of its video.
  gen, params = caption.load_captioner(None, released)
  assert isinstance(gen, st_llm_family.STLLMCaptionGenerator)
  for name, frames in (("bikes", 64), ("short", 20)):
    path = str(videos / f"{name}.mp4")
    window = gen.read_frames([path])
    assert window.shape == (frames, 28, 28, 3)
    clip = caption.find_videos(path)[0].clips[0].clip
    alone = gen.caption(params, window[None], [caption.single_prompt(clip, gen.stage)],
                        key=jax.random.key(0), max_new_tokens=MAX_NEW)
    assert alone == [predicted[name]]
