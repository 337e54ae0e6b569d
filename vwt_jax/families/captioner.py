"""The Vriptor-style captioner: its config, weights (our runs and Hugging Face
directories) and caption generation.

A captioner run folder holds `config.json`, `tokenizer.json` (`TOKENIZER_FILE`),
`captioner_config.json` (`MODEL_CONFIG_FILE`: the resolved `CaptionerConfig`)
and `checkpoints/`.
"""

import dataclasses
import functools
import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers

from vwt_jax.conversion import hf_clip
from vwt_jax.conversion import hf_llama
from vwt_jax.conversion import torch_state
from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import files
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import text_tokenizer
from vwt_jax.data.vript import captioner_text
from vwt_jax.data.vript import frames as frames_lib
from vwt_jax.families import common
from vwt_jax.models import captioner as captioner_lib
from vwt_jax.models.clip_vision import CLIPVisionConfig
from vwt_jax.models.llama_lm import LlamaLMConfig
from vwt_jax.sampling import text_generation

TRAINER = "vwt_jax.training.captioner"
TOKENIZER_FILE = text_tokenizer.TOKENIZER_FILE
MODEL_CONFIG_FILE = "captioner_config.json"
# Prompts are left-padded to a multiple of this, so batches compile for few lengths.
PROMPT_BUCKET = 64
_EOS_TOKEN = "</s>"
# LlamaLMConfig fields a captioner may set differently from the checkpoint it
# loads: layout and precision, and the context length (a captioner's frames
# need more positions than the text model was trained on).
_LM_FREE_FIELDS = ("max_positions", "rope_linear_factor", "rope_dynamic_factor",
                   "attn_dropout", "scan_layers", "remat", "dtype", "param_dtype")


def model_config(config: ml_collections.ConfigDict) -> captioner_lib.CaptionerConfig:
  """`CaptionerConfig(**config.model)`; `vision` and `lm` hold their dataclasses' fields.

  The weights of `config.init`'s directories must fit these (`load_pretrained`
  says which field differs).
  """
  common.check_same(config, "num_frames", "num_frames")
  kw = common.dtypes(config)
  m = config.model
  return common.from_fields(
      captioner_lib.CaptionerConfig, {k: v for k, v in m.items() if k not in ("vision", "lm")},
      vision=common.from_fields(CLIPVisionConfig, m.vision, "config.model.vision", **kw),
      lm=common.from_fields(LlamaLMConfig, m.lm, "config.model.lm", **kw))


def build(cfg: captioner_lib.CaptionerConfig) -> captioner_lib.Captioner:
  return captioner_lib.Captioner(cfg)


def check_params(params: Mapping[str, Any], config: captioner_lib.CaptionerConfig,
                 source: str) -> None:
  """Raises ValueError (a `ConversionError`) listing every leaf of `params` whose
  path or shape does not match a captioner of `config`.

  `params` may hold only some of the three parts; those are checked.
  """
  expected = nn.meta.unbox(captioner_lib.abstract_params(config))
  unknown = sorted(set(params) - set(expected))
  if unknown:
    raise torch_state.ConversionError(f"{source}: unknown parts {unknown}; a captioner has "
                                      f"{sorted(expected)}")
  try:
    torch_state.check_params(dict(params), {k: expected[k] for k in params})
  except torch_state.ConversionError as e:
    raise torch_state.ConversionError(f"{source}: {e}") from None


def _differences(loaded: Any, wanted: Any, skip: tuple[str, ...] = ()) -> list[str]:
  return [f"{f.name}={getattr(loaded, f.name)!r} (captioner: {getattr(wanted, f.name)!r})"
          for f in dataclasses.fields(wanted)
          if f.name not in skip and getattr(loaded, f.name) != getattr(wanted, f.name)]


def load_pretrained(config: captioner_lib.CaptionerConfig, llm_dir: Optional[str] = None,
                    vision_dir: Optional[str] = None,
                    params: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Fills the 'lm' and/or 'vision' parts from transformers model directories.

  Args:
    config: the captioner the weights are for. Its LM must have the
      checkpoint's sizes, norm epsilon, RoPE base and tying (it may extend
      `max_positions` / the RoPE scaling and choose layout and
      precision); its vision tower must equal the checkpoint's.
    llm_dir: a `LlamaForCausalLM` directory (LLaMA, Vicuna), or None.
    vision_dir: a CLIP (vision) model directory, or None.
    params: a whole parameter tree whose parts are replaced (a new dict is
      returned); None returns only the loaded parts.

  Returns:
    {'lm': ..., 'vision': ...} (the loaded ones; host numpy arrays in
    `param_dtype`), merged into `params` when given.

  Raises:
    ValueError: a checkpoint's config or shapes do not fit `config` (the
      message names the directory and the fields).
  """
  out = dict(params) if params is not None else {}
  if not (llm_dir or vision_dir):
    return out
  if llm_dir:
    lm_config, lm_params = hf_llama.load_hf_llama(
        llm_dir, **{k: getattr(config.lm, k) for k in ("scan_layers", "remat", "dtype",
                                                         "param_dtype")})
    diff = _differences(lm_config, config.lm, _LM_FREE_FIELDS)
    if diff:
      raise ValueError(f"{llm_dir}: the checkpoint has {', '.join(diff)}")
    out["lm"] = lm_params
  if vision_dir:
    vision_config, vision_params = hf_clip.load_hf_clip_vision(
        vision_dir, dtype=config.vision.dtype, param_dtype=config.vision.param_dtype)
    diff = _differences(vision_config, config.vision)
    if diff:
      raise ValueError(f"{vision_dir}: the checkpoint has {', '.join(diff)}")
    out["vision"] = torch_state.cast_tree(vision_params, config.vision.param_dtype)
  check_params({k: v for k, v in out.items() if k in ("lm", "vision")}, config,
               " + ".join(d for d in (llm_dir, vision_dir) if d) or "params")
  return out


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
    return decode_answer(self.tokenizer, tokens, length, self.pad_id)

  def default_max_new_tokens(self) -> int:
    """The run's `text.max_answer_length`, else what max_positions allows."""
    return self.config.text.get("max_answer_length") or self.cfg.lm.max_positions


def decode_answer(tokenizer: tokenizers.Tokenizer, tokens: np.ndarray, length: int,
                  pad_id: int) -> str:
  """The text of a generated row (`text_generation.generate`), up to the end symbol.

  The stop sequence (the tokens from `length` up to the padding) is decoded
  too: a merged stop token such as '.###' holds the answer's last characters;
  the text is then cut at the symbol.
  """
  end = length
  while end < len(tokens) and tokens[end] != pad_id:
    end += 1
  text = tokenizer.decode(tokens[:end].tolist(), skip_special_tokens=True)
  return captioner_text.strip_end_symbol(text).strip()


def load_run(config: Optional[ml_collections.ConfigDict],
         checkpoint: str) -> tuple[CaptionGenerator, Any]:
  """(caption generator, its parameters placed as in training) of a captioner run.

  `checkpoint` is the run folder (the trainer's workdir): config.json,
  tokenizer.json, captioner_config.json and checkpoints/ (the latest step is
  read). `config` defaults to its config.json. The parameters are split over
  the run's mesh (`config.mesh_shape`, `config.logical_axis_rules`), so a
  captioner trained with FSDP / tensor parallelism generates without ever
  sitting whole on one device; the jitted generation then runs on the mesh.
  """
  config = config or common.run_config(checkpoint)
  if config.family != "captioner":
    raise ValueError(f"{checkpoint}: a {config.family!r} run, not a captioner run")
  model_file = os.path.join(checkpoint, MODEL_CONFIG_FILE)
  if not epath.Path(model_file).is_file():
    raise FileNotFoundError(f"{model_file} not found: --checkpoint should be the run folder")
  cfg = captioner_lib.CaptionerConfig.from_json(files.read_text(model_file))
  tokenizer = text_tokenizer.load_tokenizer(
      os.path.join(checkpoint, TOKENIZER_FILE))
  params = checkpoint_lib.load_state_subtree(checkpoint, "params")
  check_params(params, cfg, checkpoint)
  mesh = sharding_lib.create_mesh(config.mesh_shape)
  shardings = sharding_lib.logical_to_sharding(captioner_lib.abstract_params(cfg), mesh,
                                               config.logical_axis_rules)
  return CaptionGenerator(config, cfg, tokenizer), jax.device_put(params, shardings)
