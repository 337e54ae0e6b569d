"""A generator over tokenizer codes (GPT or MaskGIT) with the tokenizer that decodes them.

`Generator(config)` reads the sizes the config leaves unset from the code
dataset (`config.data.dir`) or else from the tokenizer, builds the family's
model and parameter shardings, and samples codes and images. `vwt_jax.sample`,
`vwt_jax.sample_eval` and the generator trainer's sample grids use it.
"""

import types
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np

from vwt_jax import families
from vwt_jax.core import images as images_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.data import codes as codes_lib
from vwt_jax.families import common
from vwt_jax.families import tokenizer as tokenizer_lib

GENERATOR_FAMILIES = ("gpt", "maskgit")


class Generator:
  """A generator family's model, parameter layout, sampler settings and tokenizer."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    if config.family not in GENERATOR_FAMILIES:
      raise ValueError(f"config.family={config.family!r}: expected a generator, one of "
                       f"{list(GENERATOR_FAMILIES)}")
    self.config = config
    self.mesh = mesh or sharding_lib.create_mesh(config.mesh_shape)
    self.rules = sharding_lib.normalize_rules(config.logical_axis_rules)
    self.family = families.get(config.family)
    self._tokenizer = None
    self.metadata = self._metadata()
    self.cfg = self.family.model_config(config, self.metadata)
    self.model = self.family.build(self.cfg)
    self.seq_len, self.vocab_size, self.num_classes, self.conditional_on_class = (
        self.family.sizes(self.cfg))
    self.description = self.family.description(config, self.cfg)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self.data_parallel = sharding_lib.data_parallel_size(self.mesh)

  def _metadata(self):
    """Sizes from the code dataset, or else from the tokenizer (sampling elsewhere)."""
    path = self.config.data.dir
    if path and epath.Path(codes_lib.metadata_path(path)).exists():
      return codes_lib.read_metadata(path)
    if self.config.tokenizer.checkpoint:
      tok = self.tokenizer()
      return types.SimpleNamespace(code_shape=tok.code_shape, vocab_size=tok.vocab_size,
                                   num_classes=0)
    if path:
      return codes_lib.read_metadata(path)  # Raises, naming the missing file.
    return None

  def init_args(self, batch: int):
    return self.family.init_args(self.cfg, batch)

  def load_params(self, checkpoint: str) -> Any:
    """Parameters of our run or an official file, placed on the mesh as in training."""
    args, kwargs = self.init_args(1)
    return common.place_params(
        self.model, self.family.load_params(checkpoint, self.config, self.cfg), self.mesh,
        self.rules, *args, **kwargs)

  def sampling_rules(self):
    return self.family.sampling_rules(self.cfg)

  def tokenizer(self) -> tokenizer_lib.Tokenizer:
    """The tokenizer that decodes samples (from the config, else the code metadata)."""
    if self._tokenizer is None:
      t = self.config.tokenizer
      checkpoint, config = t.checkpoint, t.config
      if not checkpoint:
        source = getattr(self.metadata, "source", None) or {}
        if "checkpoint" not in source:
          raise ValueError("no tokenizer to decode samples: set config.tokenizer.checkpoint")
        checkpoint = source["checkpoint"]
        config = config or ml_collections.ConfigDict(source["config"])
      self._tokenizer = tokenizer_lib.load_tokenizer(checkpoint, config, self.mesh)
    vocab = getattr(self, "vocab_size", None)
    if vocab is not None and self._tokenizer.vocab_size != vocab:
      raise ValueError(f"tokenizer has {self._tokenizer.vocab_size} codes, the generator "
                       f"{vocab}: set config.tokenizer to the one its codes came from")
    return self._tokenizer

  def sample_codes(self, params, cond: np.ndarray, rng, *, emb_mask=None,
                   **overrides) -> np.ndarray:
    """Codes (B, L); settings from `config.sampling` unless overridden.

    `cond`: class labels (B,), or for a t2i GPT left-padded caption features
    (B, cls_token_num, caption_dim) with their mask `emb_mask`
    (`gpt.left_pad_captions`).
    """
    settings = {**self.config.sampling.to_dict(), **overrides}
    if not self.conditional_on_class:
      cond = np.asarray(cond, np.float32)
      if emb_mask is None:
        raise ValueError("a t2i generator needs the caption mask (emb_mask)")
      emb_mask = jax.device_put(np.asarray(emb_mask, bool), self.batch_sharding)
    else:
      cond = np.asarray(cond, np.int32)
    cond = jax.device_put(cond, self.batch_sharding)
    return np.asarray(jax.device_get(self.family.sample(
        self.model, params, cond, rng, settings, self.mesh, self.rules, emb_mask=emb_mask)))

  def class_grid(self, params) -> np.ndarray:
    """uint8 grid: row r holds `sampling.per_class` samples of `sampling.classes[r]`."""
    s = self.config.sampling
    classes = np.asarray(s.classes, np.int32)
    labels = np.repeat(classes, s.per_class)
    padded = -(-len(labels) // self.data_parallel) * self.data_parallel
    labels_in = np.concatenate([labels, np.repeat(labels[-1:], padded - len(labels))])
    codes = self.sample_codes(params, labels_in, jax.random.key(s.seed))
    tok = self.tokenizer()
    images = []
    for start in range(0, padded, 64 * self.data_parallel):
      chunk = codes[start:start + 64 * self.data_parallel]
      images.append(np.asarray(jax.device_get(tok.decode(chunk))))
    images = images_lib.to_uint8(np.concatenate(images)[:len(labels)])
    rows = images.reshape(len(classes), s.per_class, *images.shape[1:])
    return images_lib.image_grid(list(rows))
