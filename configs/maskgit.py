r"""TiTok's MaskGIT generators (ImageBert / UViTBert) over TiTok's 1D codes.

Trains on a code dataset written by `vwt_jax.tools.extract_codes` from a TiTok
tokenizer (sequence length, codebook size and class count come from its
metadata.json). Recipe of `configs/training/generator/maskgit.yaml`: AdamW lr
2e-4, betas (0.9, 0.96), weight decay 0.03, 10k warm-up then cosine to 1e-5,
500k steps at batch 2048, label smoothing 0.1, unmasked-token weight 0.1,
class dropout 0.1, EMA.

  python -m vwt_jax.tools.extract_codes --checkpoint /tmp/titok_b64 --views flip \
      --output gs://bucket/codes/imagenet_titok_b64
  python -m vwt_jax.main --config configs/maskgit.py:titok_b64 \
      --config.data.dir gs://bucket/codes/imagenet_titok_b64 --workdir gs://bucket/maskgit_b64
  # CPU: the tiny ImageBert over the demo's codes
  python -m vwt_jax.main --config configs/maskgit.py:tiny \
      --config.data.dir demo_workdir/codes --workdir /tmp/maskgit_tiny

Variants: tiny, titok_l32, titok_b64 (ImageBert), titok_s128 (UViTBert), each
with the released sampling settings (steps, guidance and its decay,
randomised temperature).
"""

import ml_collections
from ml_collections import config_dict

from vwt_jax import config_common
from vwt_jax.models.maskgit_generator import GENERATOR_VARIANTS, MaskGitGeneratorConfig

# Sampling settings of the released generators (`sample_imagenet_titok.py` / yaml).
SAMPLING_PRESETS = {
    "titok_l32": dict(num_steps=8, randomize_temperature=9.5, guidance_scale=4.5,
                      guidance_decay="linear", guidance_scale_pow=3.0,
                      softmax_temperature_annealing=True),
    "titok_b64": dict(num_steps=8, randomize_temperature=11.0, guidance_scale=3.0,
                      guidance_decay="linear", guidance_scale_pow=3.0,
                      softmax_temperature_annealing=True),
    "titok_s128": dict(num_steps=64, randomize_temperature=2.8, guidance_scale=6.9,
                       guidance_decay="power-cosine", guidance_scale_pow=3.0,
                       softmax_temperature_annealing=True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, _ = config_common.parse_arg(arg, "configs/maskgit.py")
  config_common.check_variant(variant, ("tiny", *GENERATOR_VARIANTS), "configs/maskgit.py")
  c = config_common.base_config("maskgit", variant, total_steps=500_000, global_batch_size=2048,
                       ema_decay=0.999)

  c.data = config_common.code_data()

  # Sizes left unset (None) come from the code dataset's metadata; the
  # released variants state theirs (ImageNet, their TiTok's codebook and
  # length), which a code dataset must then match.
  if variant == "tiny":
    c.model = config_common.model_section(MaskGitGeneratorConfig(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
        dropout=0.0, attn_drop=0.0))
    for name in ("image_seq_len", "codebook_size", "condition_num_classes"):
      c.model[name] = config_dict.placeholder(int)
  else:
    c.model = config_common.model_section(GENERATOR_VARIANTS[variant])
  c.losses = ml_collections.ConfigDict(dict(
      label_smoothing=0.1, unmasked_weight=0.1, class_dropout=0.1))
  c.optimizer = config_common.optimizer(
      lr=2e-4, end_lr=1e-5, schedule="cosine", warmup_steps=10_000, b1=0.9, b2=0.96,
      weight_decay=0.03, grad_clip_norm=1.0)

  preset = SAMPLING_PRESETS.get(variant, SAMPLING_PRESETS["titok_l32"])
  c.sampling = ml_collections.ConfigDict(dict(
      classes=(207, 360, 387, 974, 88, 979, 417, 279), per_class=4, seed=0,
      num_steps=preset["num_steps"], cfg_scale=preset["guidance_scale"],
      guidance_decay=preset["guidance_decay"], guidance_scale_pow=preset["guidance_scale_pow"],
      randomize_temperature=preset["randomize_temperature"],
      softmax_temperature_annealing=preset["softmax_temperature_annealing"]))
  c.eval.update(dict(num_batches=8, batch_size=64))
  c.tokenizer = ml_collections.ConfigDict(dict(config="", checkpoint=""))

  if variant == "tiny":
    c.total_steps = 2000
    c.global_batch_size = 64
    c.compute_dtype = "float32"
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.ema_decay = 0.0
    c.optimizer.update(dict(lr=1e-3, end_lr=1e-4, warmup_steps=100))
    c.sampling.update(dict(classes=tuple(range(10)), per_class=8, cfg_scale=2.0,
                           randomize_temperature=2.0))
    c.eval.update(dict(num_batches=4, batch_size=64))
  return c
