"""Trained image tokenizers behind one interface: images <-> discrete codes.

Code extraction, the generator trainer's sample grids and `vwt_jax.sample`
all go through `load_tokenizer`, so a new tokenizer family is one entry in
`_FAMILIES`. A tokenizer comes from our run folder (its config.json is read)
or from an official state dict plus the config that describes it.
"""

import dataclasses
import functools
import importlib.util
import json
import os
from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections

from vwt_jax.core import files
from vwt_jax.core import sharding as sharding_lib


@dataclasses.dataclass
class Tokenizer:
  """A loaded tokenizer; `encode`/`decode` are jitted and work on global batches."""
  kind: str
  config: ml_collections.ConfigDict
  code_shape: tuple[int, ...]
  vocab_size: int
  image_size: int
  encode: Callable[[jax.Array], jax.Array]  # images (B,H,W,3) in [-1,1] -> int32 (B, L)
  decode: Callable[[jax.Array], jax.Array]  # int32 (B, L) -> images in [-1,1], clipped


def _titok(config, checkpoint, mesh):
  # pylint: disable=g-import-not-at-top
  from vwt_jax.models import titok as titok_lib
  from vwt_jax.training import titok as titok_training
  # pylint: enable=g-import-not-at-top
  cfg = titok_training.model_config(config)
  if cfg.quantize_mode != "vq":
    raise ValueError(f"tokenizer {checkpoint}: a TiTok-VAE has continuous latents, "
                     "no discrete codes for a generator")
  model = titok_lib.TiTok(cfg)
  params = titok_training.load_pretrained(checkpoint, config)

  def encode(params, images):
    _, aux = model.apply({"params": params}, images, method=titok_lib.TiTok.encode)
    return aux["indices"].astype(jnp.int32)

  def decode(params, codes):
    images, _ = model.apply({"params": params}, codes, method=titok_lib.TiTok.decode_tokens)
    if images is None:
      raise ValueError(f"tokenizer {checkpoint}: a stage-1 TiTok has no pixel decoder")
    return images

  return params, encode, decode, (cfg.num_latent_tokens,), cfg.codebook_size


def _vqgan(config, checkpoint, mesh):
  # pylint: disable=g-import-not-at-top
  from vwt_jax.models import vqgan as vqgan_lib
  from vwt_jax.training import vqgan as vqgan_training
  # pylint: enable=g-import-not-at-top
  cfg = vqgan_training.model_config(config)
  model = vqgan_lib.VQModel(cfg)
  params = vqgan_training.load_pretrained(checkpoint, config)
  grid = config.data.image_size // cfg.downsample_factor

  def encode(params, images):
    _, aux = model.apply({"params": params}, images, method=vqgan_lib.VQModel.encode)
    return aux["indices"].astype(jnp.int32)

  def decode(params, codes):
    return model.apply({"params": params}, codes, method=vqgan_lib.VQModel.decode_code)

  return params, encode, decode, (grid, grid), cfg.codebook_size


_FAMILIES = {"titok": _titok, "vqgan": _vqgan}


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` (as --config reads it) or a run's config.json."""
  if spec.endswith(".json"):
    with files.open_text(spec) as f:
      return ml_collections.ConfigDict(json.load(f))
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("tokenizer_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"tokenizer config {spec!r}: no such config file")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def run_config(checkpoint: str) -> ml_collections.ConfigDict:
  """The config.json of the run that holds `checkpoint` (a run, checkpoints or step dir)."""
  folder = checkpoint.rstrip("/")
  for _ in range(3):
    path = os.path.join(folder, "config.json")
    if epath.Path(path).exists():
      return load_config(path)
    folder = os.path.dirname(folder)
  raise FileNotFoundError(
      f"no config.json next to {checkpoint}; pass the tokenizer's config "
      "(e.g. configs/titok.py:tiny) explicitly")


def load_tokenizer(checkpoint: str, config: ml_collections.ConfigDict | str | None = None,
                   mesh=None) -> Tokenizer:
  """Loads a tokenizer; `config` defaults to the run's own config.json."""
  if isinstance(config, str):
    config = load_config(config) if config else None
  config = config or run_config(checkpoint)
  kind = config.trainer
  if kind not in _FAMILIES:
    raise ValueError(f"tokenizer config trainer={kind!r}: expected one of {sorted(_FAMILIES)}")
  mesh = mesh or sharding_lib.create_mesh((-1, 1, 1))
  params, encode, decode, code_shape, vocab = _FAMILIES[kind](config, checkpoint, mesh)
  repl = sharding_lib.replicated(mesh)
  batch = sharding_lib.batch_sharding(mesh)
  params = jax.device_put(params, repl)
  encode_fn = jax.jit(encode, in_shardings=(repl, batch), out_shardings=batch)
  decode_fn = jax.jit(lambda p, c: jnp.clip(decode(p, c), -1.0, 1.0),
                      in_shardings=(repl, batch), out_shardings=batch)
  return Tokenizer(kind=kind, config=config, code_shape=tuple(code_shape), vocab_size=int(vocab),
                   image_size=int(config.data.image_size),
                   encode=functools.partial(encode_fn, params),
                   decode=functools.partial(decode_fn, params))


def describe(tokenizer: Tokenizer, checkpoint: str) -> dict[str, Any]:
  """What a code dataset records so that its codes can be decoded later."""
  return {"kind": tokenizer.kind, "checkpoint": files.absolute(checkpoint),
          "config": tokenizer.config.to_dict(), "code_shape": list(tokenizer.code_shape),
          "vocab_size": tokenizer.vocab_size, "image_size": tokenizer.image_size}
