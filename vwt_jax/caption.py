r"""Captions videos with a trained Vriptor-style captioner run.

  # every captioned clip of an extracted Vript root, one caption per clip, scored
  python -m vwt_jax.caption --checkpoint demo_workdir/captioner demo_workdir/vript/heldout \
      --output captions --score
  # one video's clip folder as one multi-scene window; one clip; a foreign ASR file
  python -m vwt_jax.caption --checkpoint RUN vript_long_videos_clips/VIDEO_ID \
      --format multi_scene
  python -m vwt_jax.caption --checkpoint RUN clip.mp4 --voiceover clip_asr.jsonl

Input: an extracted Vript root (its captioned clips, via the cached index of
`clip_source.load_videos`, with their ground-truth captions), one video's clip
folder (`{video_id}-Scene-NNN.mp4` and an optional `{video_id}_asr.jsonl`) or
one mp4. Clip durations are frames / frame rate of the file.

Prompts are those of training (`captioner_text`, `formats`), at the run's
`config.data.stage`:
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

Output under --output:
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

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers
from tqdm import tqdm

from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import files
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import captioner_text
from vwt_jax.data.vript import clip_source
from vwt_jax.data.vript import formats
from vwt_jax.data.vript import frames as frames_lib
from vwt_jax.data.vript import schema
from vwt_jax.evaluation import vript_hal
from vwt_jax.models import captioner as captioner_lib
from vwt_jax.sampling import text_generation
from vwt_jax.training import captioner as captioner_trainer
from vwt_jax.training import tokenizers as tokenizers_lib

CAPTION_FORMATS = ("single_scene", "multi_scene")
PREDICTIONS_FILE = "predictions.jsonl"
HAL_FILE = "hal_scores.json"
# The caption group of clips that are not under a '{group}_clips' folder.
DEFAULT_GROUP = "captioned"
# Prompts are left-padded to a multiple of this, so batches compile for few lengths.
PROMPT_BUCKET = 64
_EOS_TOKEN = "</s>"


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
  return clip_id.rsplit("-Scene-", 1)[0]


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


def find_videos(path: str, *, voiceover: Optional[str] = None, use_voiceover: bool = True,
                cache_dir: str = "") -> list[VideoInput]:
  """The videos of `path`: a Vript root, one video's clip folder or one mp4.

  Args:
    path: see the module docstring.
    voiceover: an `_asr.jsonl` whose lines replace the input's own ASR for the
      clips they name.
    use_voiceover: False leaves every prompt without voice-over lines.
    cache_dir: `clip_source.load_videos`' fallback index folder for a
      read-only Vript root.

  Raises:
    FileNotFoundError: `path` is none of the three, or holds no clip.
  """
  problems = schema.Problems()
  extra = schema.read_asr_file(voiceover, problems) if voiceover else {}
  videos = []
  is_dir = epath.Path(path).is_dir()
  mp4s = sorted(p.name for p in epath.Path(path).iterdir()
                if p.name.endswith(".mp4")) if is_dir else []
  if epath.Path(path).is_file():
    clips = [_bare_clip(path)]
    folder = os.path.dirname(os.path.dirname(files.absolute(path)))
    videos.append((clips[0].video_id, _group(folder), "", clips, {}, {}))
  elif mp4s:
    clips = sorted((_bare_clip(os.path.join(path, f)) for f in mp4s), key=lambda c: c.scene)
    video_id = os.path.basename(os.path.normpath(path))
    asr_path = os.path.join(path, video_id + "_asr.jsonl")
    own = schema.read_asr_file(asr_path, problems) if epath.Path(asr_path).is_file() else {}
    videos.append((video_id, _group(os.path.dirname(files.absolute(path).rstrip("/"))), "",
                   clips, own, {}))
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


def stop_sequences(tokenizer: tokenizers.Tokenizer,
                   end_symbol: str = captioner_text.END_SYMBOL) -> list[tuple[int, ...]]:
  """Token sequences that end an answer: the end symbol on its own, every
  vocabulary token containing it (a merge such as '.###') and eos.

  A split of the symbol other than these is not caught during generation
  (the row runs on); `captioner_text.strip_end_symbol` still cuts the text.
  """
  stops = {tuple(tokenizer.encode(end_symbol, add_special_tokens=False).ids)}
  stops |= {(i,) for token, i in tokenizer.get_vocab(with_added_tokens=True).items()
            if end_symbol in token}
  eos = tokenizer.token_to_id(_EOS_TOKEN)
  if eos is not None:
    stops.add((eos,))
  return sorted(stops)


@functools.lru_cache(maxsize=8)
def _embed_fn(model: captioner_lib.Captioner):
  """`Captioner.embed_inputs`, jitted once per model config."""
  return jax.jit(lambda params, frames, ids, visual: model.apply(
      {"params": params}, frames, ids, visual, method="embed_inputs"))


class CaptionGenerator:
  """A loaded captioner run: prompt layout, frames -> captions."""

  def __init__(self, config: ml_collections.ConfigDict,
               cfg: captioner_lib.CaptionerConfig, tokenizer: tokenizers.Tokenizer):
    self.config = config
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.model = captioner_lib.Captioner(cfg)
    self.stage = config.data.stage
    t = config.text
    self.pad_id = text_tokenizer.special_id(tokenizer, t.pad_token)
    self.stops = stop_sequences(tokenizer)

  def read_frames(self, paths: Sequence[str]) -> np.ndarray:
    """float32 (num_frames, H, W, 3) of consecutive clips, as the eval pipeline
    reads them ('middle' frames split over the clips, center crop, CLIP norm)."""
    clips, _ = frames_lib.read_window(list(paths), self.cfg.num_frames, "middle")
    size = self.cfg.vision.image_size
    return frames_lib.normalize(frames_lib.transform_clips(clips, image_size=size, train=False))

  def prompt_tokens(self, model_input: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, visual) of a prompt alone, laid out as in training."""
    t = self.config.text
    example = captioner_text.encode_example(
        model_input, "", self.tokenizer, num_visual_tokens=self.cfg.num_visual_tokens(),
        max_length=self.cfg.lm.max_positions, bos=t.bos, bos_token=t.bos_token,
        pad_token=t.pad_token)
    length = int(example["attention"].sum())
    return example["ids"][:length], example["visual"][:length]

  def caption(self, params: Any, frames: np.ndarray, model_inputs: Sequence[str], *,
              key: jax.Array, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
              top_p: float = 1.0, prompt_bucket: int = PROMPT_BUCKET) -> list[str]:
    """Answers (end symbol cut, stripped) for frames (B, T, H, W, 3) and prompts.

    The prompts are left-padded to a multiple of `prompt_bucket` tokens (at
    most what max_positions leaves), so that batches of similar prompts share
    one compiled program.
    """
    rows = [self.prompt_tokens(m) for m in model_inputs]
    positions = self.cfg.lm.max_positions
    longest = max(len(ids) for ids, _ in rows)
    new = min(max_new_tokens, positions - longest + 1)
    if new < 1:
      raise ValueError(f"a prompt of {longest} tokens leaves no room in max_positions="
                       f"{positions}")
    if new < max_new_tokens:
      logging.log_first_n(logging.WARNING, "max_new_tokens %d cut to %d by max_positions=%d",
                          1, max_new_tokens, new, positions)
    # The bucket never takes positions the new tokens need.
    length = min(-(-longest // prompt_bucket) * prompt_bucket, positions - new + 1)
    ids = np.full((len(rows), length), self.pad_id, np.int32)
    visual = np.zeros(ids.shape, bool)
    mask = np.zeros(ids.shape, bool)
    for row, (row_ids, row_visual) in enumerate(rows):
      ids[row, length - len(row_ids):] = row_ids
      visual[row, length - len(row_ids):] = row_visual
      mask[row, length - len(row_ids):] = True
    captioner_lib.check_visual_slots(visual, self.cfg.num_visual_tokens())
    embeds = _embed_fn(self.model)(params, jnp.asarray(frames), jnp.asarray(ids),
                                   jnp.asarray(visual))
    cache = captioner_lib.init_cache(self.cfg, len(rows), length + new - 1)
    tokens, lengths = text_generation.generate(
        *text_generation.module_fns(self.model), params, embeds, mask, cache=cache,
        max_new_tokens=new, key=key, temperature=temperature, top_k=top_k, top_p=top_p,
        stop_sequences=self.stops, pad_id=self.pad_id)
    tokens, lengths = jax.device_get((tokens, lengths))
    return [self._answer(row, n) for row, n in zip(tokens, lengths)]

  def _answer(self, tokens: np.ndarray, length: int) -> str:
    """The text of a generated row, up to the end symbol.

    The stop sequence (the tokens from `length` up to the padding) is decoded
    too: a merged stop token such as '.###' holds the answer's last
    characters; the text is then cut at the symbol.
    """
    end = length
    while end < len(tokens) and tokens[end] != self.pad_id:
      end += 1
    text = self.tokenizer.decode(tokens[:end].tolist(), skip_special_tokens=True)
    return captioner_text.strip_end_symbol(text).strip()


def load(config: Optional[ml_collections.ConfigDict],
         checkpoint: str) -> tuple[CaptionGenerator, Any]:
  """(caption generator, its parameters placed as in training) of a captioner run.

  `checkpoint` is the run folder (the trainer's workdir): config.json,
  tokenizer.json, captioner_config.json and checkpoints/ (the latest step is
  read). `config` defaults to its config.json. The parameters are split over
  the run's mesh (`config.mesh_shape`, `config.logical_axis_rules`), so a
  captioner trained with FSDP / tensor parallelism generates without ever
  sitting whole on one device; the jitted generation then runs on the mesh.
  """
  config = config or tokenizers_lib.run_config(checkpoint)
  if config.trainer != "captioner":
    raise ValueError(f"{checkpoint}: a {config.trainer!r} run, not a captioner run")
  model_file = os.path.join(checkpoint, captioner_trainer.MODEL_CONFIG_FILE)
  if not epath.Path(model_file).is_file():
    raise FileNotFoundError(f"{model_file} not found: --checkpoint should be the run folder")
  cfg = captioner_lib.CaptionerConfig.from_json(files.read_text(model_file))
  tokenizer = text_tokenizer.load_tokenizer(
      os.path.join(checkpoint, captioner_trainer.TOKENIZER_FILE))
  params = checkpoint_lib.load_state_subtree(checkpoint, "params")
  captioner_lib.check_params(params, cfg, checkpoint)
  mesh = sharding_lib.create_mesh(config.mesh_shape)
  shardings = sharding_lib.logical_to_sharding(captioner_lib.abstract_params(cfg), mesh,
                                               config.logical_axis_rules)
  return CaptionGenerator(config, cfg, tokenizer), jax.device_put(params, shardings)


def _batches(items: Sequence[Any], size: int):
  for start in range(0, len(items), size):
    yield items[start:start + size]


def _run_batch(gen: CaptionGenerator, params: Any, windows: Sequence[Sequence[schema.Clip]],
               prompt: Callable[[Sequence[schema.Clip]], str], key: jax.Array,
               batch_size: int, sampling: dict[str, Any]) -> list[str]:
  """Captions of a batch of windows (consecutive clips), padded to `batch_size`
  rows by repeating the last one so that every batch compiles alike."""
  frames = [gen.read_frames([c.path for c in w]) for w in windows]
  prompts = [prompt(w) for w in windows]
  pad = batch_size - len(windows)
  return gen.caption(params, np.stack(frames + frames[-1:] * pad), prompts + prompts[-1:] * pad,
                     key=key, **sampling)[:len(windows)]


def caption_videos(gen: CaptionGenerator, params: Any, videos: Sequence[VideoInput], *,
                   fmt: str = "single_scene", batch_size: int = 8, seed: int = 0,
                   **sampling) -> list[tuple[VideoInput, list[dict[str, Any]]]]:
  """Per video, one record per clip ({'scene', 'content', 'scene_title', 'voiceover'}).

  Args:
    gen, params: from `load`.
    videos: from `find_videos`.
    fmt: 'single_scene' (a batch row per clip) or 'multi_scene' (per video).
    batch_size: rows per generation call.
    seed: batch i draws from fold_in(key(seed), i) (greedy ignores it).
    **sampling: max_new_tokens, temperature, top_k, top_p, prompt_bucket for
      `CaptionGenerator.caption`.
  """
  if fmt not in CAPTION_FORMATS:
    raise ValueError(f"format {fmt!r}: expected one of {CAPTION_FORMATS}")
  if fmt == "single_scene":
    windows = [(c.clip,) for v in videos for c in v.clips]
    prompt = lambda clips: single_prompt(clips[0], gen.stage)
  else:
    windows = [tuple(c.clip for c in v.clips) for v in videos]
    prompt = lambda clips: window_prompt(clips, gen.stage)
  key = jax.random.key(seed)
  answers = []
  with tqdm(total=sum(len(v.clips) for v in videos), desc="caption", unit="clip") as bar:
    for i, batch in enumerate(_batches(windows, batch_size)):
      answers += _run_batch(gen, params, batch, prompt, jax.random.fold_in(key, i),
                            batch_size, sampling)
      bar.update(sum(len(w) for w in batch))
  if fmt == "multi_scene":
    return [(v, window_records(v, answer)) for v, answer in zip(videos, answers)]
  answers = iter(answers)
  return [(v, [_record(c, next(answers)) for c in v.clips]) for v in videos]


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
    raise ValueError("--score needs ground truth: caption a Vript root with captions")
  results = scorer.score_many([(r["pred"], r["gt"]) for r in scored], progress=True)
  return {"config": scorer.description, "metrics": vript_hal.aggregate(results)}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Captions the input, writes the outputs; returns {'predictions', 'hal'?, ...}."""
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.caption", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("input", help="a Vript root, one video's clip folder or one mp4")
  parser.add_argument("--checkpoint", required=True,
                      help="a captioner run folder (the trainer's workdir)")
  parser.add_argument("--voiceover", default=None, help="an _asr.jsonl for the input's clips")
  parser.add_argument("--no_voiceover", action="store_true",
                      help="prompt without voice-over lines even where ASR exists")
  parser.add_argument("--format", default="single_scene", choices=CAPTION_FORMATS)
  parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  parser.add_argument("--top_k", type=int, default=0, help="0 = off")
  parser.add_argument("--top_p", type=float, default=1.0, help="1 = off")
  parser.add_argument("--max_new_tokens", type=int, default=0,
                      help="0 = the run's config.text.max_answer_length (if unset: as many "
                      "as the LM's max_positions leave)")
  parser.add_argument("--batch_size", type=int, default=8, help="rows per generation call")
  parser.add_argument("--prompt_bucket", type=int, default=PROMPT_BUCKET,
                      help="prompts are left-padded to a multiple of this many tokens")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default="captions", help="output folder")
  parser.add_argument("--cache_dir", default="",
                      help="index cache folder for a read-only Vript root")
  parser.add_argument("--score", action="store_true", help="Vript-HAL against the ground truth")
  parser.add_argument("--hal_config", default="minilm_sm", choices=sorted(vript_hal.CONFIGS))
  parser.add_argument("--encoder_dir", default=None,
                      help="HAL sentence-transformers directory (overrides the config's)")
  args = parser.parse_args(argv)
  if not epath.Path(args.input).exists():
    parser.error(f"{args.input} not found")
  gen, params = load(None, args.checkpoint)
  videos = find_videos(args.input, voiceover=args.voiceover,
                       use_voiceover=not args.no_voiceover, cache_dir=args.cache_dir)
  if args.score and not any(c.gt for v in videos for c in v.clips):
    parser.error("--score needs ground truth: caption a Vript root with captions")
  # `caption` cuts this to what max_positions leaves after each batch's prompts.
  max_new = (args.max_new_tokens or gen.config.text.get("max_answer_length")
             or gen.cfg.lm.max_positions)
  results = caption_videos(gen, params, videos, fmt=args.format, batch_size=args.batch_size,
                           seed=args.seed, max_new_tokens=max_new,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           prompt_bucket=args.prompt_bucket)
  rows = write_outputs(results, args.output)
  out = {"predictions": os.path.join(args.output, PREDICTIONS_FILE), "num_videos": len(videos),
         "num_clips": len(rows), "format": args.format}
  print(f"wrote {len(videos)} caption files and {len(rows)} predictions to {args.output}")
  if args.score:
    hal = score(rows, vript_hal.HalScorer(args.hal_config, encoder_dir=args.encoder_dir))
    with files.write_file(os.path.join(args.output, HAL_FILE)) as f:
      json.dump(dict(hal, checkpoint=args.checkpoint, format=args.format,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                     max_new_tokens=max_new), f, indent=2)
    m = hal["metrics"]
    print(f"configuration {hal['config']}\n{vript_hal.format_official(m)}\nclips "
          f"{m['num_clips']}, empty predictions (scored 0) {m['num_empty_predictions']}")
    out["hal"] = hal
  return out


if __name__ == "__main__":
  main(sys.argv[1:])
