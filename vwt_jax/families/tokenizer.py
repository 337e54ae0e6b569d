"""Trained image tokenizers behind one interface: images <-> discrete codes.

Code extraction, the generator's sample grids and `vwt_jax.sample` all go
through `load_tokenizer`, so a new tokenizer family is one family module with
a `tokenizer_fns`. A tokenizer comes from our run folder (its config.json is
read) or from an official state dict plus the config that describes it.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vwt_jax import families
from vwt_jax.core import files
from vwt_jax.core import images as images_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.families import common

TOKENIZER_FAMILIES = ("titok", "vqgan")


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
  # (codes, size=0) -> uint8 NHWC as the family's official sampler makes pictures: the
  # unclamped decoder output, resized as torch's bicubic interpolate, the family's uint8 rule.
  pictures: Callable[..., np.ndarray]


def load_tokenizer(checkpoint: str, config: ml_collections.ConfigDict | str | None = None,
                   mesh=None) -> Tokenizer:
  """Loads a tokenizer; `config` defaults to the run's own config.json."""
  if isinstance(config, str):
    config = common.load_config(config) if config else None
  config = config or common.run_config(checkpoint)
  kind = config.family
  if kind not in TOKENIZER_FAMILIES:
    raise ValueError(f"tokenizer config family={kind!r}: expected one of "
                     f"{list(TOKENIZER_FAMILIES)}")
  mesh = mesh or sharding_lib.create_mesh((-1, 1, 1))
  params, encode, decode, code_shape, vocab = families.get(kind).tokenizer_fns(
      config, checkpoint)
  repl = sharding_lib.replicated(mesh)
  batch = sharding_lib.batch_sharding(mesh)
  params = jax.device_put(params, repl)
  encode_fn = jax.jit(encode, in_shardings=(repl, batch), out_shardings=batch)
  decode_fn = jax.jit(lambda p, c: jnp.clip(decode(p, c), -1.0, 1.0),
                      in_shardings=(repl, batch), out_shardings=batch)
  raw_fn = jax.jit(decode, in_shardings=(repl, batch), out_shardings=batch)
  resize_fn = jax.jit(images_lib.resize_bicubic, static_argnums=1)
  to_uint8 = families.get(kind).PICTURE_PIXELS
  image_size = int(config.data.image_size)

  def pictures(codes, size: int = 0) -> np.ndarray:
    images = raw_fn(params, jax.device_put(codes, batch))
    if size and size != image_size:
      images = resize_fn(images, size)
    return to_uint8(jax.device_get(images))

  # Inputs committed to another layout (e.g. under a program's mesh) are moved,
  # not refused.
  return Tokenizer(kind=kind, config=config, code_shape=tuple(code_shape), vocab_size=int(vocab),
                   image_size=image_size,
                   encode=lambda images: encode_fn(params, jax.device_put(images, batch)),
                   decode=lambda codes: decode_fn(params, jax.device_put(codes, batch)),
                   pictures=pictures)


def describe(tokenizer: Tokenizer, checkpoint: str) -> dict[str, Any]:
  """What a code dataset records so that its codes can be decoded later."""
  return {"kind": tokenizer.kind, "checkpoint": files.absolute(checkpoint),
          "config": tokenizer.config.to_dict(), "code_shape": list(tokenizer.code_shape),
          "vocab_size": tokenizer.vocab_size, "image_size": tokenizer.image_size}
