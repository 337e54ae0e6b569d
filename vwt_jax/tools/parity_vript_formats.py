"""Character-exact parity of `vwt_jax.data.vript.formats` with the official builders.

`formats.json` (tests/fixtures/README.md) holds the output of the
official `build_training_vript_stage{1,2}_{single,concat}.py` on the fixture
annotations, with the patches recorded per entry: fixed windows, stage-2 random
filters removed, and for `multi_scene` the voice-over branch forced off. Every
field of every entry is either compared character for character or declared a
description, so a new field fails until a comparison exists.
"""

import dataclasses
import json
import os

from vwt_jax.data.vript import formats
from vwt_jax.data.vript import schema
from vwt_jax.tools import parity_common

TEXT_FIELDS = ("prompt", "target", "model_input", "model_target")
LIST_FIELDS = ("clip_ids", "video")
DESCRIPTIONS = ("official_script", "patched")
# How formats.json records that the keyword rule was patched out.
_FORCED_OFF = "voiceover branch forced off"
_CONTEXT = 24


@dataclasses.dataclass
class TextResult(parity_common.Result):
  """A `parity_common.Result` for strings: `max_abs_err` counts differing characters."""

  def line(self) -> str:
    return f"{self.name}  {self.tol}  {'OK' if self.ok else 'FAIL'}"


def compare_text(name: str, ours: str, ref: str) -> TextResult:
  """Exact comparison; on mismatch names the first differing index and its context."""
  if ours == ref:
    return TextResult(name, 0.0, f"exact ({len(ref)} chars)", True)
  i = next((k for k, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
  differing = sum(a != b for a, b in zip(ours, ref)) + abs(len(ours) - len(ref))
  return TextResult(
      name, float(differing),
      f"first difference at index {i} (lengths {len(ours)} vs {len(ref)}): "
      f"ours {ours[i:i + _CONTEXT]!r} vs ref {ref[i:i + _CONTEXT]!r}", False)


def compare_entry(prefix: str, sample, entry: dict,
                  expected_format=None) -> list[parity_common.Result]:
  """One Result per field of a formats.json entry (plus the format, if given)."""
  if sample is None:
    return [TextResult.failed(prefix, "no sample built (clip without ASR?)")]
  results = []
  if expected_format is not None:
    results.append(compare_text(f"{prefix}/format", sample.format, expected_format))
  for key, ref in entry.items():
    name = f"{prefix}/{key}"
    if key in DESCRIPTIONS:
      results.append(TextResult.declared(name, "description"))
    elif key in TEXT_FIELDS:
      results.append(compare_text(name, getattr(sample, key), ref))
    elif key in LIST_FIELDS:
      refs = ref if isinstance(ref, list) else [ref]  # a one-element list may be stored bare
      results.append(compare_text(name, json.dumps(list(getattr(sample, key))), json.dumps(refs)))
    else:
      results.append(TextResult.failed(name, "no comparison known"))
  return results


def _clips(video: schema.Video, clip_ids) -> list[schema.Clip]:
  by_id = {c.clip_id: c for c in video.clips}
  missing = [c for c in clip_ids if c not in by_id]
  if missing:
    raise ValueError(f"formats.json names clips {missing} absent from the annotations")
  return [by_id[c] for c in clip_ids]


def _format_entries(video: schema.Video, fixture: dict) -> list[parity_common.Result]:
  results = []
  for fmt, stages in fixture["formats"].items():
    if fmt not in formats.FORMATS:
      results.append(TextResult.failed(f"formats/{fmt}", "unknown format"))
      continue
    for stage, entry in stages.items():
      prefix = f"formats/{fmt}/{stage}"
      if stage not in formats.STAGES:
        results.append(TextResult.failed(prefix, "unknown stage"))
        continue
      force = False if _FORCED_OFF in entry.get("patched", "") else None
      clips = _clips(video, entry["clip_ids"])
      if fmt.startswith("single"):
        sample = formats.build_single(clips[0], stage=stage, force_voiceover=force)
      else:
        sample = formats.build_window(clips, stage=stage, force_voiceover=force)
      results += compare_entry(prefix, sample, entry, expected_format=fmt)
  return results


def _keyword_rule_entries(video: schema.Video, fixture: dict) -> list[parity_common.Result]:
  results = []
  for key, entries in fixture["all_samples_keyword_rule"].items():
    prefix = f"all_samples_keyword_rule/{key}"
    stage, _, kind = key.partition("_")
    if stage not in formats.STAGES or kind not in formats.KINDS:
      results.append(TextResult.failed(prefix, "unknown stage_kind"))
      continue
    windows = [e["clip_ids"] for e in entries] if kind == "concat" else None
    samples = formats.build_samples([video], stage=stage, seed=0, kinds=[kind],
                                    official_filters=False, windows=windows)
    results.append(compare_text(f"{prefix}/count", str(len(samples)), str(len(entries))))
    for i, (sample, entry) in enumerate(zip(samples, entries)):
      results += compare_entry(f"{prefix}[{i}]", sample, entry)
  return results


def run_vript_formats(fixture_dir: str) -> list[parity_common.Result]:
  """Compares every entry of `fixture_dir/formats.json`; builds from `fixture_dir/annotations`."""
  path = os.path.join(fixture_dir, "formats.json")
  root = os.path.join(fixture_dir, "annotations")
  if not os.path.isfile(path) or not os.path.isdir(root):
    return parity_common.missing(f"{path} and {root}/")
  fixture = parity_common.load_json(fixture_dir, "formats.json")
  results = [TextResult.failed(key, "no comparison known")
             for key in sorted(set(fixture) - {"video_id", "formats", "all_samples_keyword_rule"})]
  videos = [v for v in schema.load_dataset(root) if v.video_id == fixture["video_id"]]
  if len(videos) != 1:
    return results + [TextResult.failed(f"video_id {fixture['video_id']}",
                                        f"expected once under {root}, found {len(videos)}")]
  return results + _format_entries(videos[0], fixture) + _keyword_rule_entries(videos[0], fixture)
