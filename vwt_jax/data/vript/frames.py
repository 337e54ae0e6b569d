"""Video frames for Vriptor training: index sampling, PyAV decoding, transforms.

Frame selection follows ST-LLM's `get_frame_indices` and
`read_frames_decord_in_list` (`vriptor/stllm/datasets/datasets/utils.py` in
mutonix/Vript): count-based, the frame budget of a window of clips split evenly
over its clips, each clip cut into equal index ranges with one frame taken per
range. The official code draws with Python's `random` and `np.random`; here
every draw comes from an explicit `np.random.Generator`, in this order: the
frame indices of each clip (clip by clip), then the crop box.

Decoding uses PyAV instead of decord (same FFmpeg decoder and swscale YUV ->
RGB). Frame i of a clip is, as in decord, the i-th frame in display order (the
packet with the i-th smallest timestamp): indices count frames whatever the
frame rate, variable rates included. A frame is decoded from the last keyframe
shown at or before it (a seek, as decord's), never from the start of a long
clip. Frames are returned upright as players show them: the rotation of the
stream's display matrix (phones store portrait video as landscape frames
turned by it) is applied. decord returns frames as stored, which changes
nothing on Vript (YouTube clips carry no rotation) but would feed a phone's
portrait clip sideways.
Mirroring in a display matrix and non-square pixels (sample aspect ratio) are
not applied: frames keep their stored pixel grid, as decord's.

Transforms are the official `train_transform` (`RandomResizedCrop(224,
scale=(0.5, 1.0), bicubic)`, one crop box for all frames of a sample, as
torchvision crops the stacked tensor at once), then /255 and the CLIP
mean/std. Resizing uses Pillow's bicubic filter, which torchvision's
antialiased bicubic resize of uint8 tensors matches; it also keeps grain
workers in numpy, without JAX.

Clip paths may be URLs (`gs://...`): such a clip is read whole into memory
once per `read_clip` and decoded from there.
"""

import bisect
import io
import itertools
import os

import av
from etils import epath
import numpy as np
from PIL import Image

from vwt_jax.core import files
from vwt_jax.data import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
SAMPLE_RULES = ('rand', 'middle')


class CorruptClipError(Exception):
  """A clip file is missing, cannot be decoded or holds no video frames."""

  def __init__(self, path, reason):
    super().__init__(f'{path}: {reason}')
    self.path = path
    self.reason = reason

  def __reduce__(self):
    # Exceptions pickle their `args` only; grain workers send errors back.
    return type(self), (self.path, self.reason)


def split_frames(num_frames, num_clips):
  """Frames per clip of a window: `num_frames // num_clips`, the remainder to
  the first clips (a clip may get 0 when num_frames < num_clips)."""
  if num_clips < 1:
    raise ValueError(f'a window needs at least one clip, got {num_clips}')
  return [num_frames // num_clips + (i < num_frames % num_clips) for i in range(num_clips)]


def sample_frame_indices(num_frames, vlen, sample, rng=None):
  """ST-LLM's count-based frame indices for one clip of `vlen` frames.

  The clip is cut into k = min(num_frames, vlen) ranges [a_i, a_{i+1}) with
  a = `np.linspace(0, vlen, k + 1).astype(int)`; the list is padded with its
  last index up to `num_frames`.

  'middle': (a_i + a_{i+1} - 1) // 2 per range.
  'rand': the official `random.choice(range(a_i, a_{i+1} - 1))`: uniform over
    the range minus its last frame (an off-by-one kept here). If a range has
    one frame (always when vlen <= num_frames), that fails and, as the
    official, k distinct frames of the whole clip are drawn instead
    (`np.random.permutation(vlen)[:k]`, sorted).

  Args:
    num_frames: frames wanted from this clip (may be 0).
    vlen: frames in the clip, >= 1.
    sample: 'rand' or 'middle'.
    rng: numpy Generator; required for 'rand'.

  Returns:
    list of `num_frames` int frame indices.
  """
  if sample not in SAMPLE_RULES:
    raise ValueError(f'frame sample rule {sample!r} is not one of {SAMPLE_RULES}')
  if vlen < 1:
    raise ValueError(f'cannot sample frames from a clip of {vlen} frames')
  if sample == 'rand' and rng is None:
    raise ValueError("sample='rand' needs a numpy Generator")
  if num_frames == 0:
    return []
  k = min(num_frames, vlen)
  bounds = np.linspace(0, vlen, k + 1).astype(int)
  starts, stops = bounds[:-1], bounds[1:]
  if sample == 'middle':
    indices = ((starts + stops - 1) // 2).tolist()
  elif np.all(stops - 1 > starts):
    indices = rng.integers(starts, stops - 1).tolist()
  else:
    indices = sorted(rng.permutation(vlen)[:k].tolist())
  return indices + [indices[-1]] * (num_frames - k)


def seq_frame_indices(num_frames, vlen):
  """ST-LLM's inference frame indices, which Vriptor's demo reads
  (`stllm/test/video_utils.py` `get_seq_frames` of k = min(num_frames, vlen)).

  Frame (a_i + a_{i+1}) // 2 of the bounds a_i = round(i * (vlen - 1) / k)
  (numpy rounds half to even), i < k: a clip shorter than `num_frames` gives
  all its frames, fewer than asked, and one of exactly k frames repeats a frame
  and skips its last, as the official.
  """
  if vlen < 1 or num_frames < 1:
    raise ValueError(f'cannot sample {num_frames} frames from a clip of {vlen} frames')
  k = min(num_frames, vlen)
  bounds = np.round((vlen - 1) / k * np.arange(k + 1)).astype(int)
  return ((bounds[:-1] + bounds[1:]) // 2).tolist()


def read_media(path):
  """What PyAV opens for the clip at `path`: a local path itself, the bytes
  of a remote one (read whole: clips are a few MB and demuxing seeks in them).

  Raises:
    CorruptClipError: there is no such file.
  """
  remote = files.is_remote(path)
  if not (epath.Path(path).is_file() if remote else os.path.isfile(path)):
    raise CorruptClipError(path, 'file not found')
  return epath.Path(path).read_bytes() if remote else path


def open_clip(path, media=None):
  """The PyAV container of the clip at `path`, checked to hold a video stream.

  Args:
    path: the clip (local path or URL), named in errors.
    media: `read_media(path)` when the caller has it already; read here
      otherwise.

  Raises:
    CorruptClipError: missing or unreadable file, or no video stream.
  """
  media = read_media(path) if media is None else media
  try:
    container = av.open(io.BytesIO(media) if isinstance(media, bytes) else media)
  except (av.FFmpegError, OSError) as e:
    raise CorruptClipError(path, f'cannot open ({type(e).__name__}: {e})') from e
  if not container.streams.video:
    container.close()
    raise CorruptClipError(path, 'no video stream')
  return container


def _frame_table(path, media):
  """(pts, is_keyframe) of the frames of the first video stream of the clip
  at `path`, in decode order, from its packets (demuxing only, no decoding).

  The demuxer's final flush packet holds no data, and packets an edit list
  cuts are marked discard and never leave the decoder: neither is a frame.

  Raises:
    CorruptClipError: missing or unreadable file, no video stream, no frames.
  """
  with open_clip(path, media) as container:
    try:
      table = [(packet.pts, packet.is_keyframe)
               for packet in container.demux(container.streams.video[0])
               if packet.size and not packet.is_discard]
    except av.FFmpegError as e:
      raise CorruptClipError(path, f'cannot read packets ({type(e).__name__}: {e})') from e
  if not table:
    raise CorruptClipError(path, 'the video stream has no frames')
  return table


def count_frames(path, media=None):
  """Frames in the first video stream, counted from its packets (demuxing
  only, no decoding). `media`: as in `open_clip`.

  Raises:
    CorruptClipError: missing or unreadable file, no video stream, no frames.
  """
  return len(_frame_table(path, media))


def _seek_runs(table, indices):
  """The seeks that reach the display `indices`: [(keyframe pts, indices)].

  Frames shown after a keyframe decode from it without the frames before it,
  so each index starts at the last keyframe shown at or before it (None: it
  is shown before every keyframe, so from the beginning); indices with no
  keyframe between them share one run of decoding.
  """
  order = sorted(pts for pts, _ in table)
  keyframes = sorted(pts for pts, is_key in table if is_key)
  runs = []
  for i in sorted(set(indices)):
    k = bisect.bisect_right(keyframes, order[i]) - 1
    start = keyframes[k] if k >= 0 else None
    if runs and (start is None or start <= order[runs[-1][1][-1]]):
      runs[-1][1].append(i)
    else:
      runs.append((start, [i]))
  return runs


def _upright_rgb(frame):
  """uint8 RGB (H, W, 3) of a decoded frame, turned by its display matrix's
  rotation (counter-clockwise degrees; phones give multiples of 90)."""
  return np.rot90(frame.to_ndarray(format='rgb24'), k=round(frame.rotation / 90) % 4)


def _decode_runs(path, media, runs, frame_index):
  """{display index: frame} of `runs` (`_seek_runs`) decoded in one opened
  clip; `frame_index` names the display index of a decoded frame (None if
  unknown). Frames a run should reach but the decoder never shows are left
  out."""
  kept = {}
  with open_clip(path, media) as container:
    stream = container.streams.video[0]
    for start, indices in runs:
      if start is not None:
        container.seek(start, stream=stream)
      wanted = set(indices)
      for frame in container.decode(stream):
        i = frame_index(frame)
        if i in wanted:
          kept[i] = _upright_rgb(frame)
          wanted.discard(i)
          if not wanted:
            break
        elif i is not None and i > indices[-1]:
          break
  return kept


def _decode_frames(path, media, table, indices):
  """`decode_frames` with the clip's `_frame_table` read already."""
  wanted = set(indices)
  outside = [i for i in sorted(wanted) if not 0 <= i < len(table)]
  if outside:
    raise CorruptClipError(path, f'frame {outside[0]} requested of a clip of {len(table)} frames')
  pts = [p for p, _ in table]
  try:
    if None in pts or len(set(pts)) < len(pts):
      # Frames without distinct timestamps are told apart by their count from
      # the beginning.
      count = itertools.count()
      kept = _decode_runs(path, media, [(None, sorted(wanted))], lambda _: next(count))
    else:
      index_of = {p: i for i, p in enumerate(sorted(pts))}

      def by_pts(frame):
        return index_of.get(frame.pts)

      kept = _decode_runs(path, media, _seek_runs(table, wanted), by_pts)
      missed = sorted(wanted - kept.keys())
      if missed:
        # A coarse demuxer index can land a seek after the keyframe asked for.
        kept.update(_decode_runs(path, media, [(None, missed)], by_pts))
  except av.FFmpegError as e:
    raise CorruptClipError(path, f'decoding failed ({type(e).__name__}: {e})') from e
  missed = wanted - kept.keys()
  if missed:
    raise CorruptClipError(path, f'frame {min(missed)} of {len(table)} could not be decoded')
  return np.stack([kept[i] for i in indices])


def decode_frames(path, indices, media=None):
  """Decodes the frames at display `indices` (any order, repeats allowed).

  Each run of requested frames is decoded from the keyframe before it and
  only the requested frames are converted and kept, so long clips are
  neither decoded from the start nor held in memory whole. `media`: as in
  `open_clip`.

  Returns:
    uint8 array (len(indices), H, W, 3), RGB, upright (module docstring).

  Raises:
    CorruptClipError: the file cannot be read, or a requested frame cannot
      be decoded.
  """
  if not indices:
    raise ValueError(f'no frame indices given for {path}')
  media = read_media(path) if media is None else media
  return _decode_frames(path, media, _frame_table(path, media), indices)


def read_clip(path, num_frames, sample, rng=None):
  """Samples and decodes `num_frames` frames of one clip.

  Returns:
    (uint8 frames (num_frames, H, W, 3), list of frame indices).
  """
  media = read_media(path)
  table = _frame_table(path, media)
  indices = sample_frame_indices(num_frames, len(table), sample, rng)
  return _decode_frames(path, media, table, indices), indices


def read_window(paths, num_frames, sample, rng=None):
  """`num_frames` frames of a window of consecutive clips, split as
  `split_frames` does.

  A clip given 0 frames is not opened (the official reader opens it anyway,
  so only its failure mode differs: a broken one is not noticed here).

  Returns:
    (frames, indices): one uint8 (n_i, H_i, W_i, 3) array and one list of
    frame indices per clip given n_i > 0 frames.
  """
  clips, indices = [], []
  for path, count in zip(paths, split_frames(num_frames, len(paths))):
    if count:
      clip_frames, clip_indices = read_clip(path, count, sample, rng)
      clips.append(clip_frames)
      indices.append(clip_indices)
  return clips, indices


def random_resized_crop_box(height, width, rng, scale=CROP_SCALE, ratio=CROP_RATIO):
  """torchvision's `RandomResizedCrop.get_params` with a numpy Generator.

  Ten tries at an area fraction in `scale` and a log-uniform aspect ratio in
  `ratio`; if none fits, the largest center crop within `ratio`.

  Returns:
    (top, left, crop_height, crop_width).
  """
  area = height * width
  log_ratio = np.log(ratio)
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(np.sqrt(target_area * aspect)))
    h = int(round(np.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _resize(image, size):
  image = Image.fromarray(np.ascontiguousarray(image))
  return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))


def _scale_box(box, from_hw, to_hw):
  """Moves a crop box drawn on one frame size onto another (the clips of a
  window normally share their size; the official reader would fail if not)."""
  if from_hw == to_hw:
    return box
  sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
  top, left, h, w = box
  return (int(round(top * sy)), int(round(left * sx)),
          max(1, int(round(h * sy))), max(1, int(round(w * sx))))


def transform_clips(clips, *, image_size, train, rng=None):
  """Crops and resizes the frames of a sample to `image_size`, as uint8.

  Train: one `random_resized_crop_box` (drawn on the first clip's frame size)
  for every frame, then bicubic resize to image_size x image_size. Eval:
  resize the shorter side to `image_size` (bicubic), center crop.

  Args:
    clips: list of uint8 (n_i, H_i, W_i, 3) arrays, in order.
    image_size: output height and width.
    train: random crop (needs `rng`) or center crop.
    rng: numpy Generator for the crop box.

  Returns:
    uint8 array (sum n_i, image_size, image_size, 3).
  """
  out = []
  if train:
    first_hw = clips[0].shape[1:3]
    box = random_resized_crop_box(*first_hw, rng)
    for frames in clips:
      top, left, h, w = _scale_box(box, first_hw, frames.shape[1:3])
      out.extend(_resize(f[top:top + h, left:left + w], image_size) for f in frames)
  else:
    for frames in clips:
      out.extend(transforms.resize_center_crop(f, image_size) for f in frames)
  return np.stack(out)


def normalize(frames):
  """uint8 RGB -> float32 (x / 255 - CLIP mean) / CLIP std."""
  mean = np.asarray(CLIP_MEAN, np.float32)
  std = np.asarray(CLIP_STD, np.float32)
  return (frames.astype(np.float32) / 255.0 - mean) / std
