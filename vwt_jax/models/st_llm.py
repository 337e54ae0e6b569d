"""ST-LLM, the architecture of the released Vriptor: EVA ViT-g, the
InstructBLIP Q-Former and a Vicuna-7B LLaMA.

As `STLLMModel` (vriptor/stllm/models/st_llm.py) and the demo's `Chat`
(stllm/conversation/conversation.py) compute a caption's input:

* every frame (normalised images, `data.vript.frames.normalize`) goes through
  the vision encoder and `ln_vision` (`eva_vit.EvaViT`), then the Q-Former with
  the instruction text (`qformer.QFormer`, the same text for every frame) and
  `llama_proj`: Q visual tokens per frame (`encode_img`);
* the frames' tokens (B, T, Q, D) become the video's by `video_input`:
  'residual' (the released model's): the frames at `residual_index` plus the
  mean over all frames passed through `up_proj(relu(down_proj(.)))`, i.e.
  residual_size * Q tokens; 'mean': the mean frame, Q tokens; 'all': every
  frame, T * Q tokens;
* the LLaMA (`llama_lm.LlamaLM`, dynamic NTK RoPE in the released config)
  reads the video tokens, then the prompt's embeddings.

The residual projections default to the official 4096 -> 1024 -> 4096
(`residual_hidden`); `up_proj` starts at zero there, so an untrained model adds
nothing to the frames.
"""

import dataclasses
import json
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import captioner
from vwt_jax.models import eva_vit as eva_vit_lib
from vwt_jax.models import layers
from vwt_jax.models import llama_lm
from vwt_jax.models import qformer as qformer_lib

Dtype = Any

VIDEO_INPUTS = ("residual", "mean", "all")


def residual_index(residual_size: int, num_frames: int) -> np.ndarray:
  """`get_residual_index`: int(s / 2 + round(s * i)) for i < residual_size,
  s = num_frames / residual_size (numpy rounds half to even).

  With fewer frames than residual_size some repeat, and the last index can be
  num_frames itself (64 of a 30-frame clip), where the official code stops
  with an index error; `STLLM` reads the last frame there instead.
  """
  step = num_frames / residual_size
  return np.array([int(step / 2 + np.round(step * i)) for i in range(residual_size)])


@dataclasses.dataclass(frozen=True)
class STLLMConfig:
  """Vriptor's ST-LLM: its three parts and how frames become video tokens.

  Defaults are the released stage-2 model (`vriptor_stllm_stage2.yaml`):
  EVA ViT-g at 224 px, the Q-Former of 32 queries, Vicuna-7B with the added
  '[PAD]' token (32001 ids) and dynamic NTK RoPE x4 over 8192 positions,
  'residual' video input over 64 frames.
  """
  vision: eva_vit_lib.EvaViTConfig = eva_vit_lib.EvaViTConfig()
  qformer: qformer_lib.QFormerConfig = qformer_lib.QFormerConfig()
  lm: llama_lm.LlamaLMConfig = llama_lm.LlamaLMConfig(
      vocab_size=32001, max_positions=8192, rope_dynamic_factor=4.0)
  video_input: str = "residual"
  residual_size: int = 64
  residual_hidden: int = 1024

  def __post_init__(self):
    if self.video_input not in VIDEO_INPUTS:
      raise ValueError(f"STLLMConfig: video_input={self.video_input!r}; expected one of "
                       f"{VIDEO_INPUTS}")
    if self.qformer.encoder_width != self.vision.width:
      raise ValueError(f"STLLMConfig: qformer.encoder_width={self.qformer.encoder_width} but "
                       f"the vision encoder is {self.vision.width} wide")
    if self.qformer.llm_hidden_size != self.lm.dim:
      raise ValueError(f"STLLMConfig: qformer.llm_hidden_size={self.qformer.llm_hidden_size} "
                       f"but the LLM is {self.lm.dim} wide")
    if self.residual_size < 1:
      raise ValueError(f"STLLMConfig: residual_size={self.residual_size}: expected >= 1")

  def num_video_tokens(self, num_frames: int) -> int:
    """Visual tokens the LLM reads for a video of `num_frames` frames."""
    queries = self.qformer.num_query_tokens
    return {"residual": self.residual_size * queries, "mean": queries,
            "all": num_frames * queries}[self.video_input]

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields (dtypes by name), read back by `from_dict`."""
    return layers.config_to_dict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "STLLMConfig":
    return layers.config_from_dict(cls, values)


class STLLM(nn.Module):
  """Frames and instruction -> video tokens; video tokens and prompt -> LLaMA.

  `encode_video` gives the video tokens, `embed` the prompt's embeddings;
  `__call__` scores a training sequence, `prefill`/`decode` run a [video;
  prompt] sequence through a KV cache (`sampling.text_generation`).
  """
  config: STLLMConfig

  def setup(self):
    cfg = self.config
    self.vision = eva_vit_lib.EvaViT(cfg.vision)
    self.qformer = qformer_lib.QFormer(cfg.qformer)
    self.lm = llama_lm.LlamaLM(cfg.lm)
    if cfg.video_input == "residual":
      kw = dict(dtype=cfg.lm.dtype, param_dtype=cfg.lm.param_dtype)
      self.down_proj = layers.dense(cfg.residual_hidden, ("embed", "mlp"), **kw)
      self.up_proj = nn.Dense(cfg.lm.dim, kernel_init=layers.zeros_init(("mlp", "embed")),
                              bias_init=layers.zeros_init(("embed",)),
                              dot_general=layers.flat_dot_general, **kw)

  def encode_frames(self, frames: jax.Array, text_ids: jax.Array,
                    text_mask: jax.Array) -> jax.Array:
    """Frames (B, T, H, W, C) and their instruction (B, L) -> tokens (B, T, Q, D)."""
    batch, num_frames = frames.shape[:2]
    features = self.vision(frames.reshape(batch * num_frames, *frames.shape[2:]))
    tokens, _ = self.qformer(jnp.repeat(text_ids, num_frames, axis=0),
                             jnp.repeat(text_mask, num_frames, axis=0), features)
    return tokens.reshape(batch, num_frames, *tokens.shape[1:])

  def encode_video(self, frames: jax.Array, text_ids: jax.Array,
                   text_mask: jax.Array) -> jax.Array:
    """Frames (B, T, H, W, C) and their instruction -> the video tokens (B, V, D)."""
    cfg = self.config
    tokens = self.encode_frames(frames, text_ids, text_mask)
    batch, num_frames, queries, width = tokens.shape
    if cfg.video_input == "mean":
      return tokens.mean(axis=1)
    if cfg.video_input == "all":
      return tokens.reshape(batch, num_frames * queries, width)
    mean = tokens.mean(axis=1, keepdims=True)
    shared = self.up_proj(jax.nn.relu(self.down_proj(mean)))
    kept = tokens[:, np.minimum(residual_index(cfg.residual_size, num_frames), num_frames - 1)]
    return (kept + shared).reshape(batch, cfg.residual_size * queries, width)

  def embed(self, ids: jax.Array) -> jax.Array:
    """Prompt token ids (B, S) -> the LLaMA's embeddings (B, S, D)."""
    return self.lm.embed(ids)

  def __call__(self, frames: jax.Array, ids: jax.Array, visual: jax.Array,
               text_ids: jax.Array, text_mask: jax.Array, *,
               train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Next-token logits (B, S, vocab) float32 of a training sequence, as the
    captioner lays it out (`captioner_text.encode_batch`): the video tokens in
    the `visual` (B, S) slots, the Q-Former reading `text_ids` / `text_mask`
    (B, L), the instruction. Right-padded rows need no mask beyond the causal one."""
    video = self.encode_video(frames, text_ids, text_mask)
    captioner.check_visual_slots(visual, video.shape[1])
    embeds = captioner.fill_visual_slots(self.lm.embed(ids), video, visual)
    return self.lm(inputs_embeds=embeds, train=train)

  def prefill(self, inputs_embeds: jax.Array, cache: Any, *, mask: Optional[jax.Array] = None):
    return self.lm.prefill(inputs_embeds, cache, mask=mask)

  def decode(self, token: jax.Array, position: Any, cache: Any, *,
             mask: Optional[jax.Array] = None):
    return self.lm.decode(token, position, cache, mask=mask)


def init_inputs(config: STLLMConfig) -> tuple[jax.Array, ...]:
  """Small zero (frames, ids, visual, text_ids, text_mask) for `STLLM.init`:
  one frame, its video tokens first in the sequence; the parameters depend on
  neither the frame count nor the lengths."""
  size, channels = config.vision.image_size, config.vision.num_channels
  video = config.num_video_tokens(1)
  frames = jnp.zeros((1, 1, size, size, channels), jnp.float32)
  ids = jnp.zeros((1, video + 1), jnp.int32)
  visual = jnp.arange(video + 1)[None] < video
  text = jnp.ones((1, 4), jnp.int32)
  return frames, ids, visual, text, text


def abstract_params(config: STLLMConfig) -> Any:
  """The boxed parameter tree of `STLLM(config)`, by shape only."""
  return layers.abstract_params(STLLM(config), *init_inputs(config))
