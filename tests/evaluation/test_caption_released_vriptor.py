"""`python -m vwt_jax.caption --pretrained vriptor-stllm` offline: the official
code's tiny ST-LLM (tests/fixtures/vriptor) saved in the released layout in a
Hub cache, with the Q-Former's BERT vocabulary, captioning real videos."""

import json
import os
import shutil
import subprocess
import sys

import av
from huggingface_hub import constants
import jax
import numpy as np
import pytest

import helpers
from vwt_jax import caption
from vwt_jax.data.vript import captioner_text
from vwt_jax.families import pretrained
from vwt_jax.families import st_llm as st_llm_family

MAX_NEW = 6
REPO = os.path.join(os.path.dirname(__file__), "..", "..")


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
  return cache


def test_released_vriptor_captions_real_videos_with_and_without_voiceover(released, tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  shutil.copy(helpers.real_video("bikes.mp4"), videos / "bikes.mp4")
  shutil.copy(helpers.real_video("carphone_pristine.mp4"), videos / "carphone.mp4")
  _short_video(str(videos / "short.mp4"))
  # References, and a voice-over for one video.
  (videos / caption.CAPTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in (
      {"video": "bikes.mp4", "caption": "Cyclists ride past.", "voiceover": "Here they come."},
      {"video": "carphone.mp4", "caption": "A man talks on a phone in a car."})))
  out = str(tmp_path / "out")
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2", HF_HUB_CACHE=released,
             HF_HUB_OFFLINE="1")
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.caption", str(videos), "--pretrained", "vriptor-stllm",
       "--output_dir", out, f"--max_new_tokens={MAX_NEW}", "--batch_size=2"],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, caption.PREDICTIONS_FILE)) as f:
    rows = {row["id"]: row for row in map(json.loads, f)}
  assert sorted(rows) == ["bikes", "carphone", "short"]
  assert all(r["pred"] for r in rows.values())
  assert rows["bikes"]["gt"] == ["Cyclists ride past."] and "gt" not in rows["short"]

  # Each caption is what the model gives that video alone: the short video
  # (20 frames) ran apart from the 64-frame ones, and batching padded the
  # shorter prompt in front of its video. The voice-over reaches the LLM's
  # prompt, not the Q-Former's instruction.
  gen, params = caption.load_captioner(None, pretrained.get("vriptor-stllm").checkpoint)
  assert isinstance(gen, st_llm_family.STLLMCaptionGenerator)
  clips = {v.video_id: v.clips[0].clip for v in caption.find_videos(str(videos))}
  for name, frames in (("bikes", 64), ("short", 20)):
    window = gen.read_frames([clips[name].path])
    assert window.shape == (frames, 28, 28, 3)
    prompt = caption.single_prompt(clips[name], gen.stage)
    assert ("Voiceover:" in prompt) == (name == "bikes")
    assert "voiceover" not in captioner_text.qformer_instruction(prompt)
    alone = gen.caption(params, window[None], [prompt], key=jax.random.key(0),
                        max_new_tokens=MAX_NEW)
    assert alone == [rows[name]["pred"]]
