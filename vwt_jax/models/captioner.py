"""A Vriptor-style video captioner: CLIP ViT per frame -> projector -> LLaMA decoder.

Vriptor (the Vript paper's captioner) is ST-LLM: EVA ViT-g, an InstructBLIP
Q-Former and Vicuna-7B. Here the three parts are this library's own, each
loadable from Hugging Face-format weights: `vision`, a
`clip_vision.CLIPVisionTower` run on every frame; `projector`, a
`projector.Projector` ('resampler' takes the Q-Former's role); `lm`, a
`llama_lm.LlamaLM`. The parameter tree is {'vision', 'projector', 'lm'}, so
the `conversion.hf_clip` and `conversion.hf_llama` outputs drop in.

Sequences come from `data/vript/captioner_text.encode_batch`: token ids with
`num_visual_tokens` slots marked in `visual`; `embed_inputs` puts the frames'
T * Q visual tokens into those slots, in order. Generation runs
`embed_inputs` on the prompt, then `prefill` and `decode`.
"""

import dataclasses
import json
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.models import layers, llama, llama_lm
from vwt_jax.models import projector as projector_lib
from vwt_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionTower
from vwt_jax.models.llama_lm import LlamaLMConfig


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
  """The three parts of a captioner and how frames become LLM tokens.

  Attributes:
    vision: the CLIP vision tower.
    lm: the LLaMA decoder; its `dim` is the projector's output width.
    feature_layer: which hidden state of the tower is read (-2: penultimate).
    drop_cls: drop the tower's CLS token from the features.
    projector: 'resampler', 'linear' or 'mlp' (see `projector.Projector`).
    num_queries: resampler tokens per frame (Q).
    projector_layers: resampler cross-attention blocks.
    projector_heads: resampler attention heads (divide the vision width).
    temporal_embedding: resampler queries get a learned per-frame vector.
    max_frames: size of that per-frame table (0 = num_frames); larger than
      num_frames lets a model trained on few frames continue on more
      (Vriptor's stage 2 takes 256 frames where stage 1 took 64).
    num_frames: frames per sample (T) the model is built for.
  """
  vision: CLIPVisionConfig = CLIPVisionConfig()
  lm: LlamaLMConfig = LlamaLMConfig()
  feature_layer: int = -2
  drop_cls: bool = True
  projector: str = "resampler"
  num_queries: int = 32
  projector_layers: int = 2
  projector_heads: int = 8
  temporal_embedding: bool = True
  max_frames: int = 0
  num_frames: int = 64

  def __post_init__(self):
    if self.projector not in projector_lib.KINDS:
      raise ValueError(f"CaptionerConfig.projector={self.projector!r}: expected one of "
                       f"{projector_lib.KINDS}")
    if self.num_frames < 1:
      raise ValueError(f"CaptionerConfig.num_frames={self.num_frames} must be >= 1")
    if self.max_frames and self.max_frames < self.num_frames:
      raise ValueError(f"CaptionerConfig.max_frames={self.max_frames} is below "
                       f"num_frames={self.num_frames}")
    states = self.vision.num_hidden_layers + 1
    if not -states <= self.feature_layer < states:
      raise ValueError(f"CaptionerConfig.feature_layer={self.feature_layer} is outside the "
                       f"tower's {states} hidden states")
    if self.projector == "resampler" and self.vision.hidden_size % self.projector_heads:
      raise ValueError(f"CaptionerConfig.projector_heads={self.projector_heads} does not "
                       f"divide the vision width {self.vision.hidden_size}")

  @property
  def vision_tokens(self) -> int:
    """Features per frame the tower hands to the projector (N)."""
    return self.vision.num_patches + (0 if self.drop_cls else 1)

  @property
  def tokens_per_frame(self) -> int:
    """LLM tokens per frame (Q)."""
    return self.num_queries if self.projector == "resampler" else self.vision_tokens

  def num_visual_tokens(self, num_frames: Optional[int] = None) -> int:
    """Visual slots of a sample of `num_frames` (default: `num_frames`) frames."""
    return (self.num_frames if num_frames is None else num_frames) * self.tokens_per_frame

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields (dtypes by name), read back by `from_dict`."""
    return layers.config_to_dict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "CaptionerConfig":
    return layers.config_from_dict(cls, values)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "CaptionerConfig":
    return cls.from_dict(json.loads(text))


def check_visual_slots(visual: Any, num_tokens: int) -> None:
  """Raises ValueError naming the rows of `visual` (B, S) without `num_tokens` True slots.

  Traced values pass: under jit the counts are data. `captioner_text.encode_batch`
  lays out exactly `num_visual_tokens` slots per row, and the trainer checks
  every host batch with this function.
  """
  if isinstance(visual, jax.core.Tracer):
    return
  counts = np.asarray(visual).sum(axis=1)
  bad = np.flatnonzero(counts != num_tokens)
  if bad.size:
    raise ValueError(f"rows {bad.tolist()} have {counts[bad].tolist()} visual slots; the "
                     f"frames give {num_tokens} visual tokens per row")


def fill_visual_slots(embeds: jax.Array, tokens: jax.Array, visual: jax.Array) -> jax.Array:
  """Token embeddings (B, S, D) whose k-th `visual` (B, S) slot of a row holds
  the row's k-th visual token of `tokens` (B, V, D)."""
  visual = visual.astype(bool)
  # Slot -> index of its visual token; text slots gather an unused token.
  index = jnp.clip(jnp.cumsum(visual, axis=1) - 1, 0, tokens.shape[1] - 1)
  picked = jnp.take_along_axis(tokens, index[..., None], axis=1)
  return jnp.where(visual[..., None], picked.astype(embeds.dtype), embeds)


class Captioner(nn.Module):
  """Frames + token ids with visual slots -> next-token logits (see module docstring)."""
  config: CaptionerConfig

  def setup(self):
    cfg = self.config
    self.vision = CLIPVisionTower(cfg.vision, feature_layer=cfg.feature_layer,
                                  drop_cls=cfg.drop_cls)
    self.projector = projector_lib.Projector(
        kind=cfg.projector, out_dim=cfg.lm.dim, num_queries=cfg.num_queries,
        num_layers=cfg.projector_layers, num_heads=cfg.projector_heads,
        max_frames=cfg.max_frames or cfg.num_frames, temporal_embedding=cfg.temporal_embedding,
        dtype=cfg.lm.dtype, param_dtype=cfg.lm.param_dtype)
    self.lm = llama_lm.LlamaLM(cfg.lm)

  def encode_frames(self, frames: jax.Array) -> jax.Array:
    """CLIP-normalised frames (B, T, H, W, 3) -> visual tokens (B, T * Q, lm.dim).

    Frame-major: tokens [t * Q, (t + 1) * Q) come from frame t.
    """
    if frames.ndim != 5:
      raise ValueError(f"frames {frames.shape}: expected (B, T, H, W, C)")
    batch, num_frames = frames.shape[:2]
    features, _ = self.vision(frames.reshape((batch * num_frames,) + frames.shape[2:]))
    features = features.reshape((batch, num_frames) + features.shape[1:])
    tokens, _ = self.projector(features)
    return tokens

  def embed_inputs(self, frames: jax.Array, ids: jax.Array, visual: jax.Array) -> jax.Array:
    """Token embeddings (B, S, lm.dim) with the visual slots holding the visual tokens.

    The k-th True slot of a row of `visual` (B, S) gets the row's k-th visual
    token. Each row needs exactly T * Q slots (checked when `visual` is
    concrete, see `check_visual_slots`), else it silently gets repeated or
    missing tokens.
    """
    if frames.ndim != 5:
      raise ValueError(f"frames {frames.shape}: expected (B, T, H, W, C)")
    num_tokens = self.config.num_visual_tokens(frames.shape[1])
    if visual.shape != ids.shape:
      raise ValueError(f"visual {visual.shape} and ids {ids.shape} differ in shape")
    if num_tokens > ids.shape[1]:
      raise ValueError(f"{num_tokens} visual tokens do not fit sequences of {ids.shape[1]}")
    check_visual_slots(visual, num_tokens)
    return fill_visual_slots(self.lm.embed(ids), self.encode_frames(frames), visual)

  def __call__(self, frames: jax.Array, ids: jax.Array, visual: jax.Array,
               attention: Optional[jax.Array] = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Next-token logits (B, S, vocab) float32 and the LM's aux.

    Args:
      frames: (B, T, H, W, 3) CLIP-normalised.
      ids: int (B, S) token ids (any id at the visual slots).
      visual: bool (B, S), T * Q True slots per row.
      attention: optional bool (B, S), False at padding slots, which are then
        hidden from every other position. Causal attention alone suffices
        for right-padded rows (`encode_batch`'s): real tokens never see the
        padding after them.
      train: attention dropout of the LM (rng 'dropout').
    """
    embeds = self.embed_inputs(frames, ids, visual)
    seq = ids.shape[1]
    mask = None if attention is None else llama.attention_mask(attention, jnp.arange(seq), seq)
    return self.lm(inputs_embeds=embeds, attn_mask=mask, train=train)

  def prefill(self, inputs_embeds: jax.Array, cache: Any, *,
              mask: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    """`LlamaLM.prefill` on `embed_inputs` output (B, T, dim); see there."""
    return self.lm.prefill(inputs_embeds, cache, mask=mask)

  def decode(self, token: jax.Array, position: Any, cache: Any, *,
             mask: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    """`LlamaLM.decode`: one token (B,) at `position`; see there."""
    return self.lm.decode(token, position, cache, mask=mask)


def init_cache(config: CaptionerConfig, batch: int, max_len: int,
               dtype: Optional[Any] = None) -> Any:
  """The LM's zero KV cache (`llama_lm.init_cache`) for `prefill`/`decode`."""
  return llama_lm.init_cache(config.lm, batch, max_len, dtype)


def init_inputs(config: CaptionerConfig, batch: int = 1,
                seq_len: Optional[int] = None) -> tuple[jax.Array, ...]:
  """Small zero (frames, ids, visual) for `Captioner.init`: one frame per row
  and its Q visual slots first. The parameters depend on neither the frame
  count nor the sequence length (default Q + 1), so a 7B captioner is
  initialised without its 64-frame batches."""
  v = config.vision
  q = config.tokens_per_frame
  seq_len = seq_len or q + 1
  frames = jnp.zeros((batch, 1, v.image_size, v.image_size, v.num_channels), jnp.float32)
  ids = jnp.zeros((batch, seq_len), jnp.int32)
  visual = jnp.broadcast_to(jnp.arange(seq_len) < q, (batch, seq_len))
  return frames, ids, visual


def abstract_params(config: CaptionerConfig) -> Any:
  """The boxed (logically partitioned) parameter tree, by shape only."""
  return layers.abstract_params(Captioner(config), *init_inputs(config))


def count_params(config: CaptionerConfig) -> dict[str, int]:
  """Parameters per part ('vision', 'projector', 'lm') and 'total'."""
  tree = nn.meta.unbox(abstract_params(config))
  counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in tree.items()}
  counts["total"] = sum(counts.values())
  return counts
