"""`python -m vwt_jax.caption` end to end: a random tiny captioner run on a tiny synthetic
Vript, and on a folder of real videos with reference captions."""

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

import helpers
from helpers import load_config, save_random_captioner_run
from vwt_jax import caption
from vwt_jax import cli
from vwt_jax.data.vript import schema
from vwt_jax.data.vript import synthetic
from vwt_jax.families import captioner as captioner_family

# 2 videos x 2 scenes of 8 frames at 32 px.
DATA = dict(num_long_videos=2, num_short_videos=0, scenes_per_video=(2, 2),
            frames_per_scene=(8, 8), resolution=32, fps=8, seed=0)
# Both runs use these, so that their rows have one shape (the four clips; one
# window and three repeats of it, both prompts under 256 tokens).
COMMON = dict(max_new_tokens=8, batch_size=4, prompt_bucket=256)
REPO = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(Vript root, captioner run folder) with random parameters."""
  base = tmp_path_factory.mktemp("caption")
  root = str(base / "vript")
  synthetic.generate(root, **DATA)
  config = load_config("vriptor.py", "tiny")
  config.data.update(dict(root=root, num_frames=2))
  config.data.synthetic.update(DATA)
  config.model.lm.vocab_size = config.tokenizer.vocab_size = 384
  config.text.update(dict(max_length=256, max_answer_length=64))
  # Generation runs on the run's mesh, parameters split as in training.
  config.mesh_shape = (1, -1, 2)
  workdir = str(base / "run")
  save_random_captioner_run(config, workdir)
  return root, workdir


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_vript_root_single_scene_scored(run, tmp_path, capsys):
  root, workdir = run
  out = str(tmp_path / "out")
  result = caption.run(root, workdir, output_dir=out, score_hal=True, **COMMON)
  printed = capsys.readouterr().out
  videos = schema.load_dataset(root)
  clips = [c for v in videos for c in v.clips]
  rows = _read_jsonl(os.path.join(out, caption.PREDICTIONS_FILE))
  assert [r["id"] for r in rows] == [c.clip_id for c in clips]
  assert [r["gt"] for r in rows] == [[c.caption.content] for c in clips]
  # The caption files form a Vript root (captions only) holding the predictions.
  problems = schema.Problems()
  written = schema.load_dataset(out, problems=problems)
  assert [v.video_id for v in written] == [v.video_id for v in videos]
  assert [v.title for v in written] == [v.title for v in videos]
  assert [(c.clip_id, c.caption.content) for v in written for c in v.clips] == [
      (r["id"], r["pred"]) for r in rows]
  assert all("clip folder missing" in reason for _, reason in problems.items)
  hal = result["hal"]
  assert hal["metrics"]["num_clips"] == len(clips) == 4
  with open(os.path.join(out, caption.HAL_FILE)) as f:
    saved = json.load(f)
  assert saved["metrics"] == hal["metrics"] and saved["format"] == "single_scene"
  assert "configuration minilm_sm: sentence encoder all-MiniLM-L6-v2" in printed
  assert f"Vript-HAL [Hallucination]  F1:  {hal['metrics']['f1']:.2f}\n" in printed


def test_command_line_captions_a_clip_folder_as_one_multi_scene_window(run, tmp_path):
  root, workdir = run
  video = schema.load_dataset(root)[0]
  folder = os.path.join(root, "vript_long_videos_clips", video.video_id)
  out = str(tmp_path / "out")
  flags = [f"--{k}={v}" for k, v in COMMON.items()]
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  # The run's config with an override, as every config-driven command takes it.
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.caption", folder, "--checkpoint", workdir,
       "--config", workdir, "--config.text.max_answer_length=8", "--output_dir", out,
       "--format", "multi_scene", *flags], env=env, capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"wrote 1 caption files and 2 predictions to {out}" in result.stdout
  rows = _read_jsonl(os.path.join(out, caption.PREDICTIONS_FILE))
  # No ground truth outside a Vript root; one row per clip of the window.
  assert [r["id"] for r in rows] == [c.clip_id for c in video.clips]
  assert all(set(r) == {"id", "pred"} for r in rows)
  with open(os.path.join(out, "vript_captions", "vript_long_videos_captions",
                         f"{video.video_id}_caption.json")) as f:
    data = json.load(f)
  assert data["meta"]["num_clips"] == 2 and data["meta"]["integrity"]
  assert [d["caption"]["content"] for d in data["data"].values()] == [r["pred"] for r in rows]


def test_prompts_match_training_formats(run):
  root, _ = run
  video = caption.find_videos(root)[0]
  clip = video.clips[0].clip
  prompt = caption.single_prompt(clip, "stage1")
  assert prompt.startswith("<ImageHere>###Human: ")
  assert "(Duration: [0.0, 1.0]second, Sampling Rate: 0.02second/frame)." in prompt
  assert ("Voiceover:" in prompt) == bool(clip.asr.segments)
  window = caption.window_prompt([c.clip for c in video.clips], "stage1")
  assert "(Duration: [0.0, 2.0]second" in window
  silent = caption.find_videos(root, use_voiceover=False)[0].clips[0].clip
  assert "Voiceover:" not in caption.single_prompt(silent, "stage1")


def test_a_folder_of_videos_is_captioned_file_by_file_and_unreadable_ones_skipped(
    run, tmp_path, capsys):
  root, workdir = run
  clips = [c for v in schema.load_dataset(root) for c in v.clips]
  folder = tmp_path / "my_videos"
  folder.mkdir()
  # Camera-style names, other containers' extensions (PyAV reads the content).
  shutil.copy(clips[0].path, folder / "holiday.mp4")
  shutil.copy(clips[1].path, folder / "Street.MOV")
  (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
  (folder / "empty.mkv").write_bytes(b"")
  (folder / "notes.txt").write_text("not a video")
  videos = caption.find_videos(str(folder))
  assert [(v.video_id, len(v.clips)) for v in videos] == [
      ("Street", 1), ("broken", 1), ("empty", 1), ("holiday", 1)]
  out = str(tmp_path / "out")
  result = caption.run(str(folder), workdir, output_dir=out, **COMMON)
  printed = capsys.readouterr().out
  rows = _read_jsonl(os.path.join(out, caption.PREDICTIONS_FILE))
  assert [r["id"] for r in rows] == ["Street", "holiday"]
  assert result["num_videos"] == 2 and result["num_clips"] == 2
  assert sorted(os.path.basename(path) for path, _ in result["skipped"]) == [
      "broken.mp4", "empty.mkv"]
  assert "skipped 2 unreadable file(s)" in printed and "broken.mp4: cannot open" in printed
  # A Vript clip folder with one damaged scene: in multi_scene its whole window goes.
  video = schema.load_dataset(root)[0]
  damaged = tmp_path / video.video_id
  shutil.copytree(os.path.dirname(video.clips[0].path), damaged)
  (damaged / os.path.basename(video.clips[1].path)).write_bytes(b"")
  result = caption.run(str(damaged), workdir, output_dir=str(tmp_path / "out2"),
                       fmt="multi_scene", **COMMON)
  assert result["num_videos"] == 0 and len(result["skipped"]) == 1


def test_single_mp4_with_voiceover_file(run, tmp_path):
  root, _ = run
  clip = next(c for v in schema.load_dataset(root) for c in v.clips if c.asr.segments)
  asr = tmp_path / "asr.jsonl"
  asr.write_text(json.dumps({"clip_id": clip.clip_id, "duration": 1.0, "scene_text": [
      {"span": [0.0, 0.5], "text": " Hello there."}]}) + "\n")
  (video,) = caption.find_videos(clip.path, voiceover=str(asr))
  assert (video.video_id, video.group, len(video.clips)) == (clip.video_id, "vript_long_videos", 1)
  assert video.clips[0].gt is None
  prompt = caption.single_prompt(video.clips[0].clip, "stage1")
  assert 'Voiceover:"[0.0, 0.5] Hello there.\n"' in prompt
  (bare,) = caption.find_videos(clip.path)
  assert "Voiceover:" not in caption.single_prompt(bare.clips[0].clip, "stage1")


def test_window_answer_scenes_go_to_clips_in_order(run):
  video = caption.find_videos(run[0])[0]
  answer = ("Intro text.\n[Scene 2: Second](Duration: [1.0, 2.0])\nThe second.\n\n"
            "[Scene 3: Extra](Duration: [2.0, 3.0])\nNo such clip.###ignored")
  records = caption.window_records(video, answer)
  assert [(r["scene"], r["scene_title"], r["content"]) for r in records] == [
      (video.clips[0].clip.scene, "", ""), (video.clips[1].clip.scene, "Second", "The second.")]


def test_stop_sequences_cover_the_end_symbol(run):
  from vwt_jax.data import text_tokenizer  # pylint: disable=g-import-not-at-top
  tokenizer = text_tokenizer.load_tokenizer(os.path.join(run[1], "tokenizer.json"))
  stops = captioner_family.stop_sequences(tokenizer)
  assert tuple(tokenizer.encode("###", add_special_tokens=False).ids) in stops
  merged = [i for t, i in tokenizer.get_vocab().items() if "###" in t]
  assert merged and all((i,) in stops for i in merged)
  assert (tokenizer.token_to_id("</s>"),) in stops


def test_parameters_are_split_as_in_training(run):
  _, params = captioner_family.load_run(None, run[1])
  layer = params["lm"]["layers_0"]
  # LLaMA blocks: embed over fsdp, heads / mlp over tensor.
  spec = layer["feed_forward"]["w1"]["kernel"].sharding.spec
  assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(layer["attention"]["wqkv"]["kernel"].sharding.device_set) == jax.device_count()


def _write_lines(path, records):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


@pytest.fixture
def folder(tmp_path):
  """Real videos under camera-style names, one damaged file, and captions of two."""
  folder = tmp_path / "my_videos"
  folder.mkdir()
  shutil.copy(helpers.real_video("bikes.mp4"), folder / "bikes.mp4")
  shutil.copy(helpers.real_video("carphone_pristine.mp4"), folder / "carphone.MOV")
  shutil.copy(helpers.real_video("bigbuckbunny.mp4"), folder / "bunny.mp4")
  with open(helpers.real_video("bikes.mp4"), "rb") as f:
    (folder / "broken.mp4").write_bytes(f.read()[:20000])
  _write_lines(folder / caption.CAPTIONS_FILE, [
      {"video": "bikes.mp4", "caption": "Cyclists ride along a road past parked cars.",
       "voiceover": "Here they come."},
      {"video": "carphone.MOV", "caption": "A man talks on a phone in a moving car."},
  ])
  return folder


def test_captions_file_gives_ground_truth_and_voiceover(folder):
  videos = {v.video_id: v.clips[0] for v in caption.find_videos(str(folder))}
  assert sorted(videos) == ["bikes", "broken", "bunny", "carphone"]
  assert videos["bikes"].gt == "Cyclists ride along a road past parked cars."
  assert videos["carphone"].gt == "A man talks on a phone in a moving car."
  assert videos["bunny"].gt is None and videos["bunny"].clip.asr is None
  # 250 frames at 25 fps: the voice-over line spans the 10 s clip.
  prompt = caption.single_prompt(videos["bikes"].clip, "stage1")
  assert 'Voiceover:"[0.0, 10.0] Here they come.\n"' in prompt
  assert "Voiceover:" not in caption.single_prompt(videos["carphone"].clip, "stage1")


def test_timed_voiceover_lines(folder):
  _write_lines(folder / caption.CAPTIONS_FILE, [
      {"video": "bikes.mp4", "caption": "Cyclists.",
       "voiceover": [[0, 2.5, "Here they come."], [6, 9.5, " Go! "]]}])
  clip = {v.video_id: v.clips[0].clip for v in caption.find_videos(str(folder))}["bikes"]
  assert 'Voiceover:"[0.0, 2.5] Here they come.\n[6.0, 9.5] Go!\n"' in caption.single_prompt(
      clip, "stage1")
  assert clip.asr.full_text == "Here they come. Go!"


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2: expected a JSON object"),
    ('["bikes.mp4"]', "line 2: expected a JSON object"),
    ({"video": "bikes.mp4"}, "line 2: field 'caption': expected a string, got None"),
    ({"video": "bikes.mp4", "caption": 3}, "line 2: field 'caption': expected a string, got 3"),
    ({"video": "bikes.mp4", "caption": "a", "voiceover": ["hi"]},
     "line 2: field 'voiceover': expected a string or"),
    ({"video": "bikes.mp4", "caption": "a", "voiceover": [[3, 1, "late"]]},
     r"line 2: field 'voiceover': expected a string or \[\[start, end, text\], ...\] with"),
    ({"video": "absent.mp4", "caption": "a"},
     "line 2: field 'video': expected a video file in .*, got 'absent.mp4'"),
    ({"video": "carphone.MOV", "caption": "again"},
     "line 2: field 'video': carphone.MOV has a caption on an earlier line"),
    ({"video": "bikes.mp4", "caption": "a", "start": 1.0, "end": 2.0},
     "line 2: field 'start': expected only video, caption, voiceover"),
])
def test_a_malformed_captions_line_names_the_file_line_and_field(folder, line, message):
  _write_lines(folder / caption.CAPTIONS_FILE,
               [{"video": "carphone.MOV", "caption": "A man in a car."}, line])
  with pytest.raises(cli.SettingsError, match=f"captions.jsonl: {message}"):
    caption.find_videos(str(folder))


def test_real_videos_are_captioned_and_scored_and_the_broken_one_skipped(run, folder, tmp_path,
                                                                         capsys):
  _, workdir = run
  out = str(tmp_path / "out")
  caption.run(str(folder), workdir, output_dir=out, score_hal=True, **COMMON)
  printed = capsys.readouterr().out
  assert "skipped 1 unreadable file(s)" in printed
  assert f"{folder / 'broken.mp4'}: " in printed
  rows = _read_jsonl(os.path.join(out, caption.PREDICTIONS_FILE))
  assert [r["id"] for r in rows] == ["bikes", "bunny", "carphone"]
  assert {r["id"]: r.get("gt") for r in rows} == {
      "bikes": ["Cyclists ride along a road past parked cars."], "bunny": None,
      "carphone": ["A man talks on a phone in a moving car."]}
  with open(os.path.join(out, caption.HAL_FILE)) as f:
    assert json.load(f)["metrics"]["num_clips"] == 2
