"""The released weights of the three papers that this library runs, by name.

Each `Release` names where its weights live on the Hugging Face Hub (an
`hf://` reference, `core.hub`), the config it implies (a file of the
repository's `configs/` folder with the sizes the weights need), the
tokenizer its codes are decoded with (and, for a text-to-image generator, the
text encoder its captions go through), its licence and its parameter count
once converted. `config(name)` is that config, ready for `families`:

  generator = Generator(pretrained.config("llamagen-c2i-xl-384"))
  params = generator.load_params(pretrained.get("llamagen-c2i-xl-384").checkpoint)

The table is in docs/pretrained.md; tests assert every count.
"""

import dataclasses
import difflib
import importlib.metadata
import os
from typing import Any

import ml_collections

from vwt_jax.families import common

LLAMAGEN = "hf://FoundationVision/LlamaGen"
LLAMAGEN_T2I = "hf://peizesun/llamagen_t2i"
MIT, APACHE = "MIT", "Apache-2.0"


@dataclasses.dataclass(frozen=True)
class Release:
  name: str
  paper: str
  kind: str  # 'tokenizer', 'generator', 'teacher', 'text encoder', 'sentence encoder',
  # 'captioner'
  checkpoint: str  # hf://ORG/REPO[/FILE]
  params_m: float  # parameters once converted, millions (one decimal)
  licence: str
  # `configs/FILE.py:ARGS`, and config fields the weights fix ('model.block_size': 576).
  config: str = ""
  fields: tuple[tuple[str, Any], ...] = ()
  tokenizer: str = ""  # the release that decodes a generator's codes
  image_size: int = 0  # the tokenizer's image size for this generator
  caption_encoder: str = ""  # the text-encoder release a t2i generator's captions go through


def _titok_tokenizer(variant: str, repo: str, params_m: float) -> Release:
  recipe = "stage2" if variant in ("L-32", "B-64", "S-128") else "single_stage"
  name = "titok-" + variant.lower().replace("-", "", 1)
  return Release(name, "TiTok", "tokenizer", f"hf://yucornetto/tokenizer_titok_{repo}_imagenet",
                 params_m, APACHE, f"titok.py:{variant},recipe={recipe}")


def _titok_generator(variant: str, params_m: float) -> Release:
  return Release(f"titok-generator-{variant}", "TiTok", "generator",
                 f"hf://yucornetto/generator_titok_{variant}_imagenet", params_m, APACHE,
                 f"maskgit.py:titok_{variant}", tokenizer=f"titok-{variant}", image_size=256)


def _c2i(size: str, image_size: int, params_m: float) -> Release:
  grid = image_size // 16
  return Release(f"llamagen-c2i-{size.lower()}-{image_size}", "LlamaGen", "generator",
                 f"{LLAMAGEN}/c2i_{size}_{image_size}.pt", params_m, MIT, f"llamagen.py:{size}",
                 (("model.vocab_size", 16384), ("model.block_size", grid * grid),
                  ("model.rope_2d", True), ("model.num_classes", 1000)),
                 tokenizer="llamagen-vq16-c2i", image_size=image_size)


def _t2i(stage: int, image_size: int) -> Release:
  grid = image_size // 16
  return Release(f"llamagen-t2i-xl-{image_size}", "LlamaGen", "generator",
                 f"{LLAMAGEN_T2I}/t2i_XL_stage{stage}_{image_size}.pt", 777.9, MIT,
                 "llamagen.py:XL,cond=t2i",
                 (("model.vocab_size", 16384), ("model.block_size", grid * grid),
                  ("model.rope_2d", True)),
                 tokenizer="llamagen-vq16-t2i", image_size=image_size,
                 caption_encoder="flan-t5-xl")


RELEASES = {r.name: r for r in (
    _titok_tokenizer("L-32", "l32", 641.1),
    _titok_tokenizer("B-64", "b64", 204.8),
    _titok_tokenizer("S-128", "s128", 83.7),
    _titok_tokenizer("BL-64-VQ", "bl64_vq8k", 390.0),
    _titok_tokenizer("BL-128-VQ", "bl128_vq8k", 390.2),
    _titok_tokenizer("SL-256-VQ", "sl256_vq8k", 330.3),
    _titok_tokenizer("LL-32-VAE", "ll32_vae_c16", 606.9),
    _titok_tokenizer("BL-64-VAE", "bl64_vae_c16", 389.4),
    _titok_tokenizer("BL-128-VAE", "bl128_vae_c16", 389.6),
    _titok_generator("l32", 177.2),
    _titok_generator("b64", 177.2),
    _titok_generator("s128", 295.0),
    Release("maskgit-vqgan", "TiTok", "teacher",
            "hf://fun-research/TiTok/maskgit-vqgan-imagenet-f16-256.bin", 54.5, APACHE),
    Release("llamagen-vq16-c2i", "LlamaGen", "tokenizer", f"{LLAMAGEN}/vq_ds16_c2i.pt", 71.9,
            MIT, "llamagen_vq.py:vq16"),
    Release("llamagen-vq8-c2i", "LlamaGen", "tokenizer", f"{LLAMAGEN}/vq_ds8_c2i.pt", 70.1,
            MIT, "llamagen_vq.py:vq8"),
    Release("llamagen-vq16-t2i", "LlamaGen", "tokenizer", f"{LLAMAGEN_T2I}/vq_ds16_t2i.pt",
            71.9, MIT, "llamagen_vq.py:vq16"),
    _c2i("B", 256, 110.9),
    _c2i("B", 384, 110.9),
    _c2i("L", 256, 342.9),
    _c2i("L", 384, 342.9),
    _c2i("XL", 384, 774.7),
    _c2i("XXL", 384, 1411.0),
    _c2i("3B", 384, 3096.7),
    _t2i(1, 256),
    _t2i(2, 512),
    Release("flan-t5-xl", "LlamaGen", "text encoder", "hf://google/flan-t5-xl", 1223.5, APACHE),
    # ST-LLM in the released layout (`families.st_llm`); its Q-Former reads
    # bert-base-uncased's vocabulary, fetched from the Hub with it.
    Release("vriptor-stllm", "Vript", "captioner", "hf://Mutonix/Vriptor-STLLM", 7921.5,
            APACHE),
    Release("all-minilm-l6-v2", "Vript", "sentence encoder",
            "hf://sentence-transformers/all-MiniLM-L6-v2", 22.6, APACHE),
    Release("all-mpnet-base-v2", "Vript", "sentence encoder",
            "hf://sentence-transformers/all-mpnet-base-v2", 108.9, APACHE),
)}


def get(name: str) -> Release:
  """The release called `name`; KeyError naming the closest names otherwise."""
  if name not in RELEASES:
    close = difflib.get_close_matches(name, RELEASES, n=3) or sorted(RELEASES)
    raise KeyError(f"no released weights called {name!r}; did you mean {', '.join(close)}? "
                   "(docs/pretrained.md lists them all)")
  return RELEASES[name]


def configs_dir() -> str:
  """The repository's configs/ folder: next to the package in a clone, else
  where an install put it (`share/vwt_jax/configs` of its prefix)."""
  clone = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "configs")
  if os.path.isdir(clone):
    return clone
  try:
    installed = importlib.metadata.files("vwt_jax") or []
  except importlib.metadata.PackageNotFoundError:
    installed = []
  for path in installed:
    if path.parts[-4:] == ("share", "vwt_jax", "configs", "titok.py"):
      return os.path.dirname(os.path.abspath(path.locate()))
  raise FileNotFoundError(f"{clone} not found, and the installed vwt_jax has no configs: "
                          "released models take their configs from the repository's "
                          "configs/ folder; install from a clone (pip install -e .)")


def _config_spec(release: Release, image_size: int = 0) -> str:
  spec = os.path.join(configs_dir(), release.config)
  return f"{spec},image_size={image_size}" if image_size and release.paper == "LlamaGen" else spec


def config(name: str) -> ml_collections.ConfigDict:
  """The config of a tokenizer or generator release; for a generator,
  `tokenizer` names the release it decodes with (weights and config), and for
  a t2i generator `caption_encoder` the text encoder of its captions
  (`text_encoders.describe`'s kind and model_dir; the caption length is the
  GPT's prefix, `model.cls_token_num`).

  Raises:
    KeyError: no such release.
    ValueError: the release is not a tokenizer or generator.
  """
  release = get(name)
  if not release.config:
    raise ValueError(f"{name} is a {release.kind}: it has no model config here; pass "
                     f"{release.checkpoint} where a {release.kind} directory is asked for")
  cfg = common.load_config(_config_spec(release))
  for key, value in release.fields:
    *parents, leaf = key.split(".")
    section = cfg
    for parent in parents:
      section = section[parent]
    section[leaf] = value
  if release.tokenizer:
    tokenizer = get(release.tokenizer)
    cfg.tokenizer.checkpoint = tokenizer.checkpoint
    cfg.tokenizer.config = _config_spec(tokenizer, release.image_size)
  if release.caption_encoder:
    # LlamaGen's text encoders are T5s (`text_encoders` kind 't5').
    cfg.caption_encoder = ml_collections.ConfigDict(dict(
        kind="t5", model_dir=get(release.caption_encoder).checkpoint))
  return cfg
