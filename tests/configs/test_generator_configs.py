"""Generator configs: the released sizes, recipes and dataset-given sizes."""

import types

import pytest

from helpers import load_config
from vwt_jax.families import gpt as gpt_family
from vwt_jax.models import gpt
from vwt_jax.models import maskgit_generator

# ImageNet VQ-16 codes at 256 px: 16x16 grid, 16384 codes, 1000 classes.
VQ16_256 = types.SimpleNamespace(code_shape=(16, 16), vocab_size=16384, num_classes=1000)


@pytest.mark.parametrize("variant,params,batch,lr", [
    ("B", 110_888_448, 256, 1e-4),
    ("XL", 774_699_520, 256, 2e-4),
    ("3B", 3_096_659_200, 512, 2e-4),
])
def test_llamagen_variants_are_the_papers_models(variant, params, batch, lr):
  config = load_config("llamagen.py", variant)
  cfg = gpt_family.model_config(config, VQ16_256)
  assert (cfg.block_size, cfg.rope_2d, cfg.vocab_size) == (256, True, 16384)
  assert gpt.count_params(cfg) == params
  assert (config.global_batch_size, config.optimizer.lr) == (batch, lr)
  assert (config.optimizer.b2, config.optimizer.weight_decay) == (0.95, 0.05)


def test_titok_codes_give_1d_rope_and_t2i_takes_captions():
  config = load_config("llamagen.py", "tiny")
  meta = types.SimpleNamespace(code_shape=(32,), vocab_size=4096, num_classes=1000)
  assert not gpt_family.model_config(config, meta).rope_2d
  t2i = gpt_family.model_config(load_config("llamagen.py", "XL,cond=t2i"), VQ16_256)
  assert (t2i.model_type, t2i.cls_token_num, t2i.caption_dim) == ("t2i", 120, 2048)


def test_maskgit_variants_follow_the_released_generators():
  config = load_config("maskgit.py", "titok_s128")
  released = maskgit_generator.GENERATOR_VARIANTS["titok_s128"]
  assert (config.model.model_type, config.model.hidden_size) == ("UViT", released.hidden_size)
  assert (config.sampling.num_steps, config.sampling.guidance_decay) == (64, "power-cosine")
  assert (config.optimizer.lr, config.optimizer.b2, config.optimizer.weight_decay) == (
      2e-4, 0.96, 0.03)


def test_bad_arguments_fail_clearly():
  with pytest.raises(ValueError, match="unknown variant 'XS'"):
    load_config("llamagen.py", "XS")
  with pytest.raises(ValueError, match="cond='x2i'"):
    load_config("llamagen.py", "B,cond=x2i")
  with pytest.raises(ValueError, match="unknown variant"):
    load_config("maskgit.py", "titok_q")
