r"""Captions videos with a trained Vriptor-style captioner run, or the released Vriptor.

  # every captioned clip of an extracted Vript root, one caption per clip, scored
  python -m vwt_jax.caption --checkpoint demo_workdir/captioner demo_workdir/vript/heldout \
      --output_dir captions --score
  # one video's clip folder as one multi-scene window; one clip; a foreign ASR file
  python -m vwt_jax.caption --checkpoint RUN vript_long_videos_clips/VIDEO_ID \
      --format multi_scene
  python -m vwt_jax.caption --checkpoint RUN clip.mp4 --voiceover clip_asr.jsonl
  # the released Vriptor (ST-LLM, families/st_llm.py), from the Hub or a local copy
  python -m vwt_jax.caption --pretrained vriptor-stllm my_videos/ --format multi_scene
  python -m vwt_jax.caption --checkpoint /models/Vriptor-STLLM clip.mp4

Input: an extracted Vript root (its captioned clips, via the cached index of
`clip_source.load_videos`, with their ground-truth captions), a folder of
videos (`{video_id}-Scene-NNN.mp4` files are the scenes of their video, as in
a Vript clip folder, with an optional `{video_id}_asr.jsonl`; any other mp4,
mov, mkv, webm or avi file is a video of one clip) or one video file. A
folder's `captions.jsonl` gives reference captions of its videos, one JSON
object a line:

  {"video": "holiday.mp4", "caption": "A dog runs ...", "voiceover": "Look!"}

`video` is a file name in the folder, `caption` its ground truth (predictions
and --score use it as a Vript root's), `voiceover` (optional) what is said in
it: a string, one voice-over line over the whole clip, or timed lines
[[start, end, text], ...] in seconds, as an ASR gives them. Clip
durations are frames / frame rate of the file. A file that cannot be read is
reported and skipped (with its whole window in multi_scene).

Prompts are those of training (`captioner_text`, `formats`), at the run's
`config.data.stage` (stage 2 for the released Vriptor, whose frames and
decoding are described in `families/st_llm.py`):
- single_scene: one caption per clip, from `num_frames` frames taken at the
  middle of equal ranges; clips with voice-over lines (the Vript ASR, or
  --voiceover) get the voice-over prompt unless --no_voiceover.
- multi_scene: all clips of a video as one window, the frames split over the
  clips as in training and the voice-over lines offset as the official
  builder offsets them (`formats.window_text`); the answer is parsed into
  per-scene captions (`captioner_text.parse_scene_captions`), scene k of the
  answer belonging to the window's k-th clip.

Generation is greedy by default (--temperature 0) and stops at Vriptor's end
symbol '###' (or eos); see `sampling/text_generation.py`.

Output under --output_dir:
- `vript_captions/{group}_captions/{video_id}_caption.json` per video, in the
  Vript caption schema and layout (the input's group; 'captioned' for a
  folder not named '{group}_clips'), so the folder reads back with
  `schema.load_dataset`; shot type and camera movement are empty (the
  captioner does not produce them).
- `predictions.jsonl`: {"id": clip_id, "pred": caption}, plus "gt":
  [ground-truth content] where the input has captions; what
  `python -m vwt_jax.evaluate_captions --task hal` reads.
- with --score, Vript-HAL against the ground truth in `hal_scores.json`
  (also printed, with the scorer's configuration).
"""

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from vwt_jax import cli
from vwt_jax.core import files
from vwt_jax.core import hub
from vwt_jax.data.vript import captioner_text
from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import formats
from vwt_jax.data.vript import frames as frames_lib
from vwt_jax.data.vript import schema
from vwt_jax.evaluation import vript_hal
from vwt_jax.families import captioner as captioner_family
from vwt_jax.families import common
from vwt_jax.families import pretrained
from vwt_jax.families import st_llm as st_llm_family

FLAGS = flags.FLAGS
CAPTION_FORMATS = ("single_scene", "multi_scene")
# The files of a folder taken as videos (any container PyAV opens; Vript's clips are mp4).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
PREDICTIONS_FILE = "predictions.jsonl"
# A folder of videos' reference captions (module docstring).
CAPTIONS_FILE = "captions.jsonl"
CAPTION_FIELDS = ("video", "caption", "voiceover")
HAL_FILE = "hal_scores.json"
CAPTIONER_RELEASES = sorted(n for n, r in pretrained.RELEASES.items() if r.kind == "captioner")
# The caption group of clips that are not under a '{group}_clips' folder.
DEFAULT_GROUP = "captioned"


@dataclasses.dataclass(frozen=True)
class ClipInput:
  """One clip to caption."""
  clip: schema.Clip  # `asr`: its ASR record (segments emptied without voice-over), or None
  gt: Optional[str]  # its ground-truth caption content, if the input has one


@dataclasses.dataclass(frozen=True)
class VideoInput:
  """A video's clips to caption, in scene order."""
  video_id: str
  group: str  # the Vript group its captions are written under
  title: str
  clips: tuple[ClipInput, ...]


def clip_duration(path: str) -> float:
  """Seconds of an mp4: its frame count / the video stream's average frame rate."""
  media = frames_lib.read_media(path)
  num_frames = frames_lib.count_frames(path, media)
  with frames_lib.open_clip(path, media) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
  if not rate:
    raise frames_lib.CorruptClipError(path, "the video stream states no frame rate")
  return num_frames / float(rate)


def _scene(clip_id: str) -> int:
  try:
    return schema.scene_number(clip_id)
  except ValueError:
    return 1


def _video_id(clip_id: str) -> str:
  return clip_id.rsplit(schema.SCENE_MARK, 1)[0]


def timed(clip: schema.Clip) -> schema.Clip:
  """The clip with an ASR record of its file's duration (`clip_duration`) and
  its voice-over segments (none without ASR), the way `formats` reads clips."""
  asr = clip.asr
  return dataclasses.replace(clip, asr=schema.AsrRecord(
      clip_id=clip.clip_id, duration=clip_duration(clip.path), lang=asr.lang if asr else "",
      segments=asr.segments if asr else (), full_text=asr.full_text if asr else ""))


def _group(clips_root: str) -> str:
  """The group of a '{group}_clips' folder; DEFAULT_GROUP for any other folder."""
  name = os.path.basename(os.path.normpath(clips_root))
  return name[:-len("_clips")] if name.endswith("_clips") and name != "_clips" else DEFAULT_GROUP


def _bare_clip(path: str) -> schema.Clip:
  clip_id = os.path.splitext(os.path.basename(path))[0]
  return schema.Clip(video_id=_video_id(clip_id), clip_id=clip_id, scene=_scene(clip_id),
                     caption=schema.Caption("", "", "", ""), voiceover="", asr=None,
                     path=files.absolute(path), relpath=os.path.basename(path))


def _voiceover_lines(value: Any, where: str) -> list[tuple[float, float, str]]:
  """A `voiceover` field as timed lines ((0, -1, text) spans the whole clip)."""
  if isinstance(value, str):
    return [(0.0, -1.0, value)] if value.strip() else []
  ok = isinstance(value, list) and all(
      isinstance(v, list) and len(v) == 3 and all(isinstance(t, (int, float)) for t in v[:2])
      and 0 <= v[0] <= v[1] and isinstance(v[2], str) for v in value)
  if not ok:
    raise cli.SettingsError(f"{where}: field 'voiceover': expected a string or "
                            f"[[start, end, text], ...] with 0 <= start <= end, got {value!r}")
  return [(float(a), float(b), text) for a, b, text in value]


def read_captions(folder: str, names: Sequence[str]
                  ) -> dict[str, tuple[str, list[tuple[float, float, str]]]]:
  """The folder's `captions.jsonl` (module docstring) as {file name: (caption,
  voice-over lines (start, end, text), end -1 meaning the clip's end)}; {}
  without one.

  Args:
    folder: the folder of videos.
    names: its video file names, the values `video` may take.

  Raises:
    cli.SettingsError: a line is not such an object; the message names the
      file, the line number and the field.
  """
  path = os.path.join(folder, CAPTIONS_FILE)
  if not epath.Path(path).is_file():
    return {}
  captions = {}
  with files.open_text(path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}: line {n}"
      try:
        record = json.loads(line)
      except ValueError as e:
        raise cli.SettingsError(f"{where}: expected a JSON object ({e})") from e
      if not isinstance(record, dict):
        raise cli.SettingsError(f"{where}: expected a JSON object, got {line.strip()[:60]}")
      for key in record:
        if key not in CAPTION_FIELDS:
          raise cli.SettingsError(
              f"{where}: field {key!r}: expected only {', '.join(CAPTION_FIELDS)} (a clip is a "
              "whole file: cut a part of a video into a file of its own)")
      for key in ("video", "caption"):
        if not isinstance(record.get(key), str):
          raise cli.SettingsError(
              f"{where}: field {key!r}: expected a string, got {record.get(key)!r}")
      name = os.path.normpath(record["video"])
      if name not in names:
        raise cli.SettingsError(f"{where}: field 'video': expected a video file in {folder}, "
                                f"got {record['video']!r}")
      if name in captions:
        raise cli.SettingsError(f"{where}: field 'video': {name} has a caption on an earlier line")
      captions[name] = (record["caption"],
                        _voiceover_lines(record.get("voiceover", ""), where))
  return captions


def _voiceover_asr(clip: schema.Clip,
                   lines: Sequence[tuple[float, float, str]]) -> Optional[schema.AsrRecord]:
  """The ASR record of a clip's voice-over lines (an end of -1 is the clip's);
  None when the file cannot be read (the clip is reported when it is captioned)."""
  try:
    duration = clip_duration(clip.path)
  except frames_lib.CorruptClipError:
    return None
  # Whisper's segment texts, which the prompts print, start with a space.
  segments = tuple(schema.AsrSegment(start, duration if end < 0 else end, " " + text.strip())
                   for start, end, text in lines)
  return schema.AsrRecord(clip_id=clip.clip_id, duration=duration, lang="", segments=segments,
                          full_text=" ".join(text.strip() for _, _, text in lines))


def find_videos(path: str, *, voiceover: Optional[str] = None, use_voiceover: bool = True,
                cache_dir: str = "") -> list[VideoInput]:
  """The videos of `path`: a Vript root, a folder of videos or one video file.

  Args:
    path: see the module docstring.
    voiceover: an `_asr.jsonl` whose lines replace the input's own ASR for the
      clips they name.
    use_voiceover: False leaves every prompt without voice-over lines.
    cache_dir: `clip_source.load_videos`' fallback index folder for a
      read-only Vript root.

  Raises:
    FileNotFoundError: `path` is none of the three, or holds no clip.
    cli.SettingsError: a malformed `captions.jsonl` (`read_captions`).
  """
  problems = schema.Problems()
  extra = schema.read_asr_file(voiceover, problems) if voiceover else {}
  videos = []
  is_dir = epath.Path(path).is_dir()
  loose = sorted(p.name for p in epath.Path(path).iterdir()
                 if p.name.lower().endswith(VIDEO_EXTENSIONS)) if is_dir else []
  if epath.Path(path).is_file():
    clips = [_bare_clip(path)]
    folder = os.path.dirname(os.path.dirname(files.absolute(path)))
    videos.append((clips[0].video_id, _group(folder), "", clips, {}, {}))
  elif loose:
    group = _group(os.path.dirname(files.absolute(path).rstrip("/")))
    references = read_captions(path, loose)
    # '{video_id}-Scene-NNN' files are the scenes of their video (a Vript clip
    # folder holds one); any other file is a video of one clip.
    by_video = {}
    for name in loose:
      clip = _bare_clip(os.path.join(path, name))
      key = clip.video_id if schema.SCENE_MARK in clip.clip_id else clip.clip_id
      by_video.setdefault(key, []).append(clip)
    for video_id, clips in by_video.items():
      clips.sort(key=lambda c: c.scene)
      asr_path = os.path.join(path, video_id + "_asr.jsonl")
      own = schema.read_asr_file(asr_path, problems) if epath.Path(asr_path).is_file() else {}
      gts = {}
      for c in clips:
        if c.relpath in references:
          gts[c.clip_id], voiceover = references[c.relpath]
          asr = _voiceover_asr(c, voiceover) if voiceover else None
          if asr is not None:
            own[c.clip_id] = asr
      videos.append((video_id, group, "", clips, own, gts))
  elif is_dir:
    for video in clip_source.load_videos(path, cache_dir=cache_dir):
      clips = [c for c in video.clips if c.path is not None]
      if len(clips) < len(video.clips):
        logging.warning("%s: %d clips without an mp4 skipped", video.video_id,
                        len(video.clips) - len(clips))
      if clips:
        videos.append((video.video_id, video.group, video.title, clips,
                       {c.clip_id: c.asr for c in clips if c.asr is not None},
                       {c.clip_id: c.caption.content for c in clips}))
  else:
    raise FileNotFoundError(f"{path} is neither an mp4 nor a folder")
  for where, reason in problems.items:
    logging.warning("%s: %s", where, reason)
  out = []
  for video_id, group, title, clips, asr, gts in videos:
    asr = dict(asr, **{k: v for k, v in extra.items() if k in {c.clip_id for c in clips}})
    if not use_voiceover:
      asr = {k: dataclasses.replace(v, segments=()) for k, v in asr.items()}
    out.append(VideoInput(video_id, group, title, tuple(
        ClipInput(dataclasses.replace(c, asr=asr.get(c.clip_id)), gts.get(c.clip_id) or None)
        for c in clips)))
  if not out:
    raise FileNotFoundError(f"{path}: no clip to caption")
  return out


def single_prompt(clip: schema.Clip, stage: str) -> str:
  """The single-scene model input of a `ClipInput.clip` (the voice-over format
  when it has voice-over segments)."""
  asr = timed(clip).asr
  segments = asr.segments
  # As the single builder: a span ending after the clip extends the duration.
  duration = max([asr.duration] + [s.end for s in segments])
  fmt = "single_scene_voiceover" if segments else "single_scene"
  return formats.model_input(captioner_text.caption_prompt(
      fmt, duration, stage=stage, voiceover_lines=segments or None))


def window_prompt(clips: Sequence[schema.Clip], stage: str) -> str:
  """The multi-scene model input of a video's `ClipInput.clip`s, as
  `formats.build_window` words it (cumulative scene times, offset and, at
  stage 2, merged voice-over)."""
  text = formats.window_text([timed(c) for c in clips], stage=stage)
  return formats.model_input(formats.request_prompt(
      "multi_scene", stage, text.total, text.voiceover or None))


def _batches(items: Sequence[Any], size: int):
  for start in range(0, len(items), size):
    yield items[start:start + size]


def _run_batch(gen: Any, params: Any, frames: list[np.ndarray], prompts: list[str],
               key: jax.Array, batch_size: int, sampling: dict[str, Any]) -> list[str]:
  """Captions of a batch of windows, padded to `batch_size` rows by repeating
  the last one so that every batch compiles alike; windows of other frame
  counts (a video shorter than the released Vriptor's 64 frames) run apart."""
  captions = [""] * len(frames)
  for shape in dict.fromkeys(f.shape for f in frames):
    rows = [i for i, f in enumerate(frames) if f.shape == shape]
    group, texts = [frames[i] for i in rows], [prompts[i] for i in rows]
    pad = batch_size - len(rows)
    answers = gen.caption(params, np.stack(group + group[-1:] * pad),
                          texts + texts[-1:] * pad, key=key, **sampling)
    for i, answer in zip(rows, answers):
      captions[i] = answer
  return captions


def caption_videos(gen: Any, params: Any,
                   videos: Sequence[VideoInput], *, fmt: str = "single_scene",
                   batch_size: int = 8, seed: int = 0, **sampling
                   ) -> tuple[list[tuple[VideoInput, list[dict[str, Any]]]], list[tuple[str, str]]]:
  """Per video, one record per clip ({'scene', 'content', 'scene_title', 'voiceover'}).

  Args:
    gen, params: from `load_captioner`.
    videos: from `find_videos`.
    fmt: 'single_scene' (a batch row per clip) or 'multi_scene' (per video).
    batch_size: rows per generation call.
    seed: batch i draws from fold_in(key(seed), i) (greedy ignores it).
    **sampling: max_new_tokens, temperature, top_k, top_p, prompt_bucket for
      `families.captioner.CaptionGenerator.caption`.

  Returns:
    (results, skipped): the videos with the clips captioned (each
    `VideoInput` holding those clips only; a video none of whose clips could
    be read is left out) and their records; (path, reason) of every file that
    could not be read, whose window (its clip, or in multi_scene its video)
    was skipped.
  """
  if fmt not in CAPTION_FORMATS:
    raise ValueError(f"format {fmt!r}: expected one of {CAPTION_FORMATS}")
  if fmt == "single_scene":
    windows = [(v, (c,)) for v in videos for c in v.clips]
    prompt = lambda clips: single_prompt(clips[0], gen.stage)
  else:
    windows = [(v, v.clips) for v in videos]
    prompt = lambda clips: window_prompt(clips, gen.stage)
  key = jax.random.key(seed)
  answers, skipped = {}, []
  with tqdm(total=sum(len(v.clips) for v in videos), desc="caption", unit="clip") as bar:
    for i, batch in enumerate(_batches(range(len(windows)), batch_size)):
      ready = []
      for w in batch:
        clips = [c.clip for c in windows[w][1]]
        try:
          ready.append((w, gen.read_frames([c.path for c in clips]), prompt(clips)))
        except frames_lib.CorruptClipError as e:
          logging.warning("skipped (unreadable): %s", e)
          skipped.append((e.path, e.reason))
      if ready:
        captions = _run_batch(gen, params, [f for _, f, _ in ready], [p for _, _, p in ready],
                              jax.random.fold_in(key, i), batch_size, sampling)
        answers.update(zip((w for w, _, _ in ready), captions))
      bar.update(sum(len(windows[w][1]) for w in batch))
  results = []
  if fmt == "multi_scene":
    for w, (video, _) in enumerate(windows):
      if w in answers:
        results.append((video, window_records(video, answers[w])))
    return results, skipped
  w = 0
  for video in videos:
    kept = []
    for c in video.clips:
      if w in answers:
        kept.append((c, _record(c, answers[w])))
      w += 1
    if kept:
      results.append((dataclasses.replace(video, clips=tuple(c for c, _ in kept)),
                      [r for _, r in kept]))
  return results, skipped


def _record(c: ClipInput, content: str, scene_title: str = "") -> dict[str, Any]:
  return {"scene": c.clip.scene, "content": content, "scene_title": scene_title,
          "voiceover": c.clip.asr.full_text if c.clip.asr else ""}


def window_records(video: VideoInput, answer: str) -> list[dict[str, Any]]:
  """The k-th parsed scene of the answer captions the window's k-th clip;
  clips without one get '', extra or unnumbered scenes are dropped (logged)."""
  problems = schema.Problems()
  parsed = {}
  for r in captioner_text.parse_scene_captions(answer, problems=problems,
                                               source=video.video_id):
    if r["scene"] is None or not 1 <= r["scene"] <= len(video.clips) or r["scene"] in parsed:
      problems.add(video.video_id, f"scene {r['scene']} of the answer dropped")
      continue
    parsed[r["scene"]] = r
  for where, reason in problems.items:
    logging.warning("%s: %s", where, reason)
  return [_record(c, parsed[k]["content"], parsed[k]["scene_title"]) if k in parsed
          else _record(c, "") for k, c in enumerate(video.clips, start=1)]


def caption_path(output: str, video: VideoInput) -> str:
  """Where a video's caption file goes: Vript's layout, so `output` reads back
  as a (captions-only) Vript root with `schema.load_dataset`."""
  return os.path.join(output, schema.CAPTIONS_DIR, f"{video.group}_captions",
                      f"{video.video_id}_caption.json")


def write_outputs(results, output: str) -> list[dict[str, Any]]:
  """Writes the caption files and predictions.jsonl; returns the prediction rows."""
  files.makedirs(output)
  rows = []
  for video, records in results:
    data = captioner_text.to_caption_schema(video.video_id, records, video.title)
    path = caption_path(output, video)
    files.makedirs(os.path.dirname(path))
    with files.write_file(path) as f:
      json.dump(data, f, indent=2, ensure_ascii=False)
    for c, record in zip(video.clips, records):
      row = {"id": c.clip.clip_id, "pred": record["content"]}
      if c.gt is not None:
        row["gt"] = [c.gt]
      rows.append(row)
  with files.write_file(os.path.join(output, PREDICTIONS_FILE)) as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  return rows


def score(rows: Sequence[dict[str, Any]], scorer: vript_hal.HalScorer) -> dict[str, Any]:
  """Vript-HAL of the rows with ground truth: {'config', 'metrics'}."""
  scored = [r for r in rows if "gt" in r]
  if not scored:
    raise ValueError("--score needs ground truth: caption a Vript root with captions, or "
                     f"a folder of videos with a {CAPTIONS_FILE}")
  results = scorer.score_many([(r["pred"], r["gt"]) for r in scored], progress=True)
  return {"config": scorer.description, "metrics": vript_hal.aggregate(results)}


def load_captioner(config: Optional[ml_collections.ConfigDict], checkpoint: str):
  """(generator, params): a captioner run folder, a run fine-tuning ST-LLM,
  or Vriptor weights in the released ST-LLM layout (a folder or `hf://`,
  `families.st_llm`)."""
  if hub.is_hub(checkpoint) or st_llm_family.is_released_layout(checkpoint):
    return st_llm_family.load(checkpoint)
  config = config or common.run_config(checkpoint)
  if config.family == "st_llm":
    return st_llm_family.load_run(config, checkpoint)
  return captioner_family.load_run(config, checkpoint)


def run(input_path: str, checkpoint: str, *, config: Optional[ml_collections.ConfigDict] = None,
        output_dir: str = "captions", fmt: str = "single_scene", voiceover: Optional[str] = None,
        use_voiceover: bool = True, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
        seed: int = 0, batch_size: int = 8, max_new_tokens: int = 0,
        prompt_bucket: int = captioner_family.PROMPT_BUCKET, cache_dir: str = "",
        score_hal: bool = False, hal_config: str = "minilm_sm",
        encoder_dir: Optional[str] = None) -> dict[str, Any]:
  """Captions the input and writes the outputs (module docstring); returns
  {'predictions', 'num_videos', 'num_clips', 'format', 'skipped', 'hal'?}
  ('skipped': (path, reason) of the files that could not be read).

  `checkpoint` is a captioner run or the released Vriptor (`load_captioner`).
  `max_new_tokens` 0 takes the run's `config.text.max_answer_length` (if
  unset: as many as the LM's max_positions leave; the released Vriptor: the
  demo's 2048).

  Raises:
    cli.SettingsError: the input does not exist, its `captions.jsonl` is malformed, or
      `score_hal` without ground truth.
  """
  if not epath.Path(input_path).exists():
    raise cli.SettingsError(f"{input_path} not found")
  gen, params = load_captioner(config, checkpoint)
  videos = find_videos(input_path, voiceover=voiceover, use_voiceover=use_voiceover,
                       cache_dir=cache_dir)
  if score_hal and not any(c.gt for v in videos for c in v.clips):
    raise cli.SettingsError("--score needs ground truth: caption a Vript root with captions, "
                            f"or a folder of videos with a {CAPTIONS_FILE}")
  # `caption` cuts this to what max_positions leaves after each batch's prompts.
  max_new = max_new_tokens or gen.default_max_new_tokens()
  results, skipped = caption_videos(
      gen, params, videos, fmt=fmt, batch_size=batch_size, seed=seed, max_new_tokens=max_new,
      temperature=temperature, top_k=top_k, top_p=top_p, prompt_bucket=prompt_bucket)
  rows = write_outputs(results, output_dir)
  out = {"predictions": os.path.join(output_dir, PREDICTIONS_FILE), "num_videos": len(results),
         "num_clips": len(rows), "format": fmt, "skipped": skipped}
  print(f"wrote {len(results)} caption files and {len(rows)} predictions to {output_dir}")
  if skipped:
    print(f"skipped {len(skipped)} unreadable file(s):\n" +
          "\n".join(f"  {path}: {reason}" for path, reason in skipped))
  if score_hal:
    hal = score(rows, vript_hal.HalScorer(hal_config, encoder_dir=encoder_dir))
    with files.write_file(os.path.join(output_dir, HAL_FILE)) as f:
      json.dump(dict(hal, checkpoint=checkpoint, format=fmt, temperature=temperature,
                     top_k=top_k, top_p=top_p, max_new_tokens=max_new), f, indent=2)
    m = hal["metrics"]
    print(f"configuration {hal['config']}\n{vript_hal.format_official(m)}\nclips "
          f"{m['num_clips']}, empty predictions (scored 0) {m['num_empty_predictions']}")
    out["hal"] = hal
  return out


def define_flags():
  cli.define_config_flag("The captioner run's config with overrides (a run folder or config "
                         "file); default: the --checkpoint run's.")
  flags.DEFINE_string("checkpoint", None, "A captioner run folder (the trainer's workdir), or "
                      "the released Vriptor's folder (ST-LLM layout, local or hf://).")
  flags.DEFINE_enum("pretrained", None, CAPTIONER_RELEASES, "Released captioner weights by "
                    "name (docs/pretrained.md).")
  flags.DEFINE_string("voiceover", None, "An _asr.jsonl for the input's clips.")
  flags.DEFINE_bool("no_voiceover", False,
                    "Prompt without voice-over lines even where ASR exists.")
  flags.DEFINE_enum("format", "single_scene", CAPTION_FORMATS, "One caption per clip, or one "
                    "multi-scene answer per video.")
  cli.define_sampling_flags(batch_size=8)
  flags.DEFINE_integer("max_new_tokens", 0, "0 = the run's config.text.max_answer_length "
                       "(if unset: as many as the LM's max_positions leave).")
  flags.DEFINE_integer("prompt_bucket", captioner_family.PROMPT_BUCKET,
                       "Prompts are left-padded to a multiple of this many tokens.")
  flags.DEFINE_string("output_dir", "captions", "Where the caption files, predictions.jsonl "
                      "and hal_scores.json go.")
  flags.DEFINE_string("cache_dir", "", "Index cache folder for a read-only Vript root.")
  flags.DEFINE_bool("score", False, "Vript-HAL against the ground truth.")
  flags.DEFINE_enum("hal_config", "minilm_sm", sorted(vript_hal.CONFIGS), "Vript-HAL scorer.")
  flags.DEFINE_string("encoder_dir", None,
                      "HAL sentence-transformers directory (overrides the config's).")
  flags.register_multi_flags_validator(
      ["checkpoint", "pretrained"], lambda f: bool(f["checkpoint"]) != bool(f["pretrained"]),
      "give --checkpoint or --pretrained")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("expected one INPUT: a Vript root, a folder of videos or one video")
  try:
    checkpoint = FLAGS.checkpoint or pretrained.get(FLAGS.pretrained).checkpoint
    run(argv[1], checkpoint, config=FLAGS.config, output_dir=FLAGS.output_dir,
        fmt=FLAGS.format, voiceover=FLAGS.voiceover, use_voiceover=not FLAGS.no_voiceover,
        temperature=FLAGS.temperature or 0.0, top_k=FLAGS.top_k or 0,
        top_p=1.0 if FLAGS.top_p is None else FLAGS.top_p, seed=FLAGS.seed,
        batch_size=FLAGS.batch_size, max_new_tokens=FLAGS.max_new_tokens,
        prompt_bucket=FLAGS.prompt_bucket, cache_dir=FLAGS.cache_dir, score_hal=FLAGS.score,
        hal_config=FLAGS.hal_config, encoder_dir=FLAGS.encoder_dir)
  except cli.SettingsError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  app.run(main)
