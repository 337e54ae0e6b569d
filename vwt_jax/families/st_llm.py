"""ST-LLM, the released Vriptor's architecture: fine-tuning runs and captioning.

`model_config(config)` is the `STLLMConfig` of a run config (`configs/vriptor.py`
with `arch=st_llm`, trained by `training/st_llm.py`).

`load(checkpoint)` reads a folder in the released layout (`Mutonix/Vriptor-STLLM`,
`conversion.st_llm.load_vriptor`), its Vicuna tokenizer (`tokenizer.model`
with the added '[PAD]') and the Q-Former's bert-base-uncased vocabulary, and
places the parameters split over the devices. `STLLMCaptionGenerator` then
captions frames as `python -m vwt_jax.caption` asks any captioner to
(`stage`, `read_frames`, `caption`, `default_max_new_tokens`):

* frames: one video file gives ST-LLM's inference frames
  (`frames.seq_frame_indices`, 64 at most: a shorter video gives all of its
  frames); the clips of a multi-scene window are read as in training
  ('middle' frames split over the clips). Each frame: shorter side to 224
  (bicubic), centre crop, CLIP normalisation, as the demo's transform.
* input: the video tokens, then '</s>' (ST-LLM makes it the BOS) and the
  prompt as ST-LLM trained it (`formats.model_input` after '<ImageHere>');
  the Q-Former reads `captioner_text.qformer_instruction` of it, the request
  without its voice-over, as in training. (The demo's prompt differs by a
  space and says 'Sample Rate'; it also gives the Q-Former the raw prompt.)
  A batch's prompts are left-padded in front of the video, so every row keeps
  the positions it has alone.
* decoding: greedy or sampled as asked, with the demo's repetition penalty
  1.5, which also counts the BOS transformers starts its generation from;
  stops at '###' or '</s>'; the answer is cut at '###' and after
  'Assistant:' as the demo's `Chat.answer` does.
"""

import functools
import json
import os
from typing import Any, Optional, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import st_llm as st_llm_conversion
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import files
from vwt_jax.core import hub
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import captioner_text
from vwt_jax.data.vript import frames as frames_lib
from vwt_jax.families import captioner as captioner_family
from vwt_jax.families import common
from vwt_jax.models import eva_vit
from vwt_jax.models import llama_lm
from vwt_jax.models import qformer
from vwt_jax.models import st_llm
from vwt_jax.sampling import text_generation

TRAINER = "vwt_jax.training.st_llm"
# A fine-tuning run's model config and tokenizer, next to its checkpoints.
MODEL_CONFIG_FILE = "st_llm_config.json"
TOKENIZER_FILE = captioner_family.TOKENIZER_FILE
MODEL_TYPE = "st_llm_hf"
# Where `Blip2Base.init_tokenizer` reads the Q-Former's vocabulary from.
QFORMER_TOKENIZER = "hf://google-bert/bert-base-uncased"
NUM_FRAMES = 64  # the demo's `upload_video(..., 64)`
STAGE = "stage2"  # the released model's prompts
REPETITION_PENALTY = 1.5  # what the demo's `Chat.answer` forces
MAX_NEW_TOKENS = 2048  # the demo's
# `STLLMModel.__init__` with qformer_text_input: '</s>' is the BOS, '[PAD]' is added.
BOS_TOKEN, PAD_TOKEN = "</s>", "[PAD]"


def model_config(config) -> st_llm.STLLMConfig:
  """`STLLMConfig(**config.model)`; `vision`, `qformer` and `lm` hold their
  dataclasses' fields, in the run's dtypes."""
  kw = common.dtypes(config)
  m = config.model
  parts = {"vision": eva_vit.EvaViTConfig, "qformer": qformer.QFormerConfig,
           "lm": llama_lm.LlamaLMConfig}
  return common.from_fields(
      st_llm.STLLMConfig, {k: v for k, v in m.items() if k not in parts},
      **{k: common.from_fields(cls, m[k], f"config.model.{k}", **kw)
         for k, cls in parts.items()})


def build(cfg: st_llm.STLLMConfig) -> st_llm.STLLM:
  return st_llm.STLLM(cfg)


def is_released_layout(path: str) -> bool:
  """Whether `path` is a folder whose config.json is ST-LLM's (model_type 'st_llm_hf')."""
  if not epath.Path(os.path.join(path, "config.json")).is_file():
    return False
  return hf_checkpoint.read_config(path).get("model_type") == MODEL_TYPE


@functools.lru_cache(maxsize=4)
def _embed_fn(model: st_llm.STLLM):
  """[video tokens; prompt embeddings] with each row's padding moved in front."""

  def embed(params, frames, text_ids, text_mask, ids, order):
    video = model.apply({"params": params}, frames, text_ids, text_mask,
                        method=model.encode_video)
    prompt = model.apply({"params": params}, ids, method=model.embed)
    both = jnp.concatenate([video.astype(prompt.dtype), prompt], axis=1)
    return jnp.take_along_axis(both, order[:, :, None], axis=1)

  return jax.jit(embed)


class STLLMCaptionGenerator:
  """ST-LLM as `vwt_jax.caption` drives a captioner: the released Vriptor
  (`load`, as the module docstring describes), or a fine-tuning run
  (`load_run`: its stage, frames, tokens and layout, no repetition penalty)."""

  def __init__(self, cfg: st_llm.STLLMConfig, tokenizer: tokenizers.Tokenizer,
               qformer_tokenizer: tokenizers.Tokenizer, *, stage: str = STAGE,
               num_frames: int = NUM_FRAMES, inference_frames: bool = True,
               repetition_penalty: float = REPETITION_PENALTY, bos_id: Optional[int] = 1,
               bos_token: str = BOS_TOKEN, pad_token: str = PAD_TOKEN,
               max_new_tokens: int = MAX_NEW_TOKENS):
    self.cfg = cfg
    self.model = st_llm.STLLM(cfg)
    self.tokenizer = tokenizer
    self.qformer_tokenizer = qformer_tokenizer
    self.stage = stage
    self.num_frames = num_frames
    self.inference_frames = inference_frames
    self.repetition_penalty = repetition_penalty
    # transformers' generation starts from the config's BOS, which the penalty counts.
    self.generation_bos = bos_id
    self.bos_id = text_tokenizer.special_id(tokenizer, bos_token)
    self.pad_id = text_tokenizer.special_id(tokenizer, pad_token)
    self.stops = captioner_family.stop_sequences(tokenizer)
    self.max_new_tokens = max_new_tokens

  def default_max_new_tokens(self) -> int:
    return self.max_new_tokens

  def read_frames(self, paths: Sequence[str]) -> np.ndarray:
    """float32 (T, H, W, 3): one video's inference frames (released model), or
    the 'middle' frames split over the clips as training reads them."""
    if len(paths) == 1 and self.inference_frames:
      media = frames_lib.read_media(paths[0])
      indices = frames_lib.seq_frame_indices(self.num_frames,
                                             frames_lib.count_frames(paths[0], media))
      clips = [frames_lib.decode_frames(paths[0], indices, media)]
    else:
      clips, _ = frames_lib.read_window(list(paths), self.num_frames, "middle")
    return frames_lib.normalize(frames_lib.transform_clips(
        clips, image_size=self.cfg.vision.image_size, train=False))

  def prompt_ids(self, model_input: str) -> list[int]:
    """'</s>' and the tokens of the prompt after the video."""
    text = model_input.split("<ImageHere>")[-1]
    return [self.bos_id] + self.tokenizer.encode(text, add_special_tokens=False).ids

  def caption(self, params: Any, frames: np.ndarray, model_inputs: Sequence[str], *,
              key: jax.Array, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
              top_p: float = 1.0, prompt_bucket: int = captioner_family.PROMPT_BUCKET
              ) -> list[str]:
    """Answers for frames (B, T, H, W, 3) and their prompts (`formats.model_input`)."""
    encoded = self.qformer_tokenizer.encode_batch(
        [captioner_text.qformer_instruction(m) for m in model_inputs])
    text_ids = np.array([e.ids for e in encoded], np.int32)
    text_mask = np.array([e.attention_mask for e in encoded], np.int32)
    rows = [self.prompt_ids(m) for m in model_inputs]
    longest = max(len(r) for r in rows)
    length = -(-longest // prompt_bucket) * prompt_bucket
    ids = np.array([[self.pad_id] * (length - len(r)) + r for r in rows], np.int32)
    video = self.cfg.num_video_tokens(frames.shape[1])
    if not self.cfg.lm.dynamic_rope:
      # The answer gets what max_positions leaves after the video and the prompts.
      room = self.cfg.lm.max_positions - video - length + 1
      if room < 1:
        raise ValueError(f"{video} video tokens and a prompt of {length} leave no room in "
                         f"max_positions={self.cfg.lm.max_positions}")
      max_new_tokens = min(max_new_tokens, room)
    # Row r: its padding (prompt slots 0..p-1) first, then the video, then its prompt.
    pads = [length - len(r) for r in rows]
    order = np.stack([np.concatenate([video + np.arange(p), np.arange(video),
                                      video + np.arange(p, length)]) for p in pads])
    mask = np.arange(video + length)[None, :] >= np.array(pads)[:, None]
    embeds = _embed_fn(self.model)(params, jnp.asarray(frames), jnp.asarray(text_ids),
                                   jnp.asarray(text_mask), jnp.asarray(ids),
                                   jnp.asarray(order, jnp.int32))
    cache = llama_lm.init_cache(self.cfg.lm, len(rows), video + length + max_new_tokens - 1)
    penalized = text_generation.penalty_marks(
        [[self.generation_bos] if self.generation_bos is not None else []] * len(rows),
        self.cfg.lm.vocab_size)
    tokens, lengths = text_generation.generate(
        *text_generation.module_fns(self.model), params, embeds, mask, cache=cache,
        max_new_tokens=max_new_tokens, key=key, temperature=temperature, top_k=top_k,
        top_p=top_p, stop_sequences=self.stops, pad_id=self.pad_id,
        repetition_penalty=self.repetition_penalty, penalized=penalized)
    tokens, lengths = jax.device_get((tokens, lengths))
    return [captioner_family.decode_answer(self.tokenizer, row, n, self.pad_id)
            .split("Assistant:")[-1].strip() for row, n in zip(tokens, lengths)]


def load(checkpoint: str, *, qformer_tokenizer: str = QFORMER_TOKENIZER,
         dtype: Any = None, mesh: Optional[Any] = None) -> tuple[STLLMCaptionGenerator, Any]:
  """(generator, parameters split over `mesh`) of a released-layout folder.

  `checkpoint` and `qformer_tokenizer` may be `hf://` references. The
  parameters are converted on the host in `dtype` (also the compute dtype;
  default bfloat16 on accelerators, float32 on CPUs, whose bfloat16 matrix
  products are slow) and placed with FSDP over all devices unless a mesh is
  given.
  """
  model_dir = hub.resolve(checkpoint)
  if not is_released_layout(model_dir):
    raise ValueError(f"{checkpoint}: not an ST-LLM folder (config.json with model_type "
                     f"{MODEL_TYPE!r})")
  if dtype is None:
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  cfg, params = st_llm_conversion.load_vriptor(model_dir, dtype=dtype, param_dtype=dtype)
  tokenizer = text_tokenizer.load_tokenizer(model_dir)
  # ST-LLM adds '[PAD]' after the vocabulary when it loads; a saved tokenizer may lack it.
  if tokenizer.token_to_id(PAD_TOKEN) is None:
    tokenizer.add_special_tokens([PAD_TOKEN])
  # `STLLMModel.max_bert_txt_len`.
  bert = text_tokenizer.load_qformer_tokenizer(hub.resolve(qformer_tokenizer),
                                               512 - cfg.qformer.num_query_tokens - 10)
  bos = hf_checkpoint.read_config(model_dir).get("bos_token_id", 1)
  mesh = mesh or sharding_lib.create_mesh((1, -1, 1))
  abstract = st_llm.abstract_params(cfg)
  shardings = sharding_lib.logical_to_sharding(abstract, mesh,
                                               sharding_lib.DEFAULT_LOGICAL_AXIS_RULES)
  return (STLLMCaptionGenerator(cfg, tokenizer, bert, bos_id=bos),
          jax.device_put(params, shardings))


def load_run(config, checkpoint: str) -> tuple[STLLMCaptionGenerator, Any]:
  """(generator, parameters placed as in training) of a run of `training/st_llm.py`:
  its `st_llm_config.json`, tokenizer.json and latest checkpoint, captioning
  with the run's stage, frame count, text layout and answer length."""
  cfg = st_llm.STLLMConfig.from_dict(json.loads(files.read_text(
      os.path.join(checkpoint, MODEL_CONFIG_FILE))))
  tokenizer = text_tokenizer.load_tokenizer(os.path.join(checkpoint, TOKENIZER_FILE))
  bert = text_tokenizer.load_qformer_tokenizer(hub.resolve(config.tokenizer.qformer),
                                               config.text.qformer_length)
  params = checkpoint_lib.load_state_subtree(checkpoint, "params")
  mesh = sharding_lib.create_mesh(config.mesh_shape)
  abstract = st_llm.abstract_params(cfg)
  shardings = sharding_lib.logical_to_sharding(abstract, mesh, config.logical_axis_rules)
  t = config.text
  generator = STLLMCaptionGenerator(
      cfg, tokenizer, bert, stage=config.data.stage, num_frames=config.data.num_frames,
      inference_frames=False, repetition_penalty=1.0, bos_id=None, bos_token=t.bos_token,
      pad_token=t.pad_token, max_new_tokens=t.max_answer_length or cfg.lm.max_positions)
  return generator, jax.device_put(params, shardings)
