r"""LlamaGen autoregressive image generators (arXiv 2406.06525) over tokenizer codes.

The generator trains on a code dataset written by `vwt_jax.tools.extract_codes`
(2D VQGAN grids or TiTok's 1D sequences; the sequence length, vocabulary,
class count and the RoPE layout come from that dataset's metadata.json).

  # extract codes with a trained tokenizer, then train a generator on them
  python -m vwt_jax.tools.extract_codes --checkpoint /tmp/vq16 --views ten_crop \
      --output gs://bucket/codes/imagenet_vq16_384
  python -m vwt_jax.main --config configs/llamagen.py:B \
      --config.data.dir gs://bucket/codes/imagenet_vq16_384 --workdir gs://bucket/gpt_b
  # the CPU demo: tiny GPT over the tiny TiTok's 32 tokens of the synthetic shapes
  python -m vwt_jax.main --config configs/llamagen.py:tiny \
      --config.data.dir demo_workdir/codes --workdir demo_workdir/generator
  # text-to-image on Vript keyframe codes (extract_codes --vript_root)
  python -m vwt_jax.main --config configs/llamagen.py:tiny,cond=t2i \
      --config.data.dir demo_workdir/vript/codes --workdir demo_workdir/t2i
  # sample from a run (or from converted official weights, see README)
  python -m vwt_jax.sample --checkpoint gs://bucket/gpt_b --classes 207,360 --cfg 4.0

The argument is `VARIANT[,cond=c2i|t2i]`. Variants: tiny (CPU demo), B (111M),
L (343M), XL (775M), XXL (1.4B), 3B (3.1B; head_dim 100), with the paper's
batch size and learning rate per size (as the LlamaGen authors give them in
FoundationVision/LlamaGen GitHub issue #8). t2i conditions
on FLAN-T5-XL features (2048-d, 120 tokens), except `tiny,cond=t2i`, whose
caption width and length are those of its code dataset's caption encoder.
"""

import ml_collections
from ml_collections import config_dict

from vwt_jax import config_common
from vwt_jax.models.gpt import GPT_VARIANTS, GPTConfig

# name: (global batch, lr) of the released c2i models (LlamaGen GitHub issue #8);
# layers, heads and width come from `models/gpt.GPT_VARIANTS`.
RECIPES = {
    "B": (256, 1e-4),
    "L": (256, 1e-4),
    "XL": (256, 2e-4),
    "XXL": (512, 2e-4),
    "3B": (512, 2e-4),
}
# The demo class labels of the official `sample_c2i.py`.
DEMO_CLASSES = (207, 360, 387, 974, 88, 979, 417, 279)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, options = config_common.parse_arg(arg, "configs/llamagen.py", ("cond",))
  config_common.check_variant(variant, ("tiny", *RECIPES), "configs/llamagen.py")
  cond = options.get("cond", "c2i")
  if cond not in ("c2i", "t2i"):
    raise ValueError(f"configs/llamagen.py: cond={cond!r}: expected c2i or t2i")

  # The official runs keep no EMA by default.
  c = config_common.base_config("gpt", variant, total_steps=1_500_000, global_batch_size=256,
                       ema_decay=0.0)

  c.data = config_common.code_data()

  # GPT architecture (`GPTConfig`: the reference's `ModelArgs` + layout). The
  # sizes left unset (None) are read from the code dataset's metadata:
  # vocab_size, block_size, num_classes, and rope_2d (2D RoPE over VQGAN
  # grids, 1D over TiTok sequences). `attention`: 'xla' (einsum + float32
  # softmax, reference parity), 'cudnn' (cuDNN flash attention: NVIDIA GPUs,
  # bfloat16) or 'dot_product' (the same jax.nn.dot_product_attention call on
  # XLA); see `models/llama.py`.
  c.model = config_common.model_section(GPTConfig(
      n_layer=12, n_head=12, dim=768, model_type=cond, cls_token_num=1 if cond == "c2i" else 120))
  for name, kind in (("n_kv_head", int), ("ffn_dim_multiplier", float), ("vocab_size", int),
                     ("block_size", int), ("num_classes", int), ("rope_2d", bool)):
    c.model[name] = config_dict.placeholder(kind)

  # AdamW, betas (0.9, 0.95), decay 0.05 on every >=2-D weight (embeddings and
  # the head included), constant lr, clip 1.0: `train_c2i.py`.
  c.optimizer = config_common.optimizer(
      lr=1e-4, end_lr=1e-4, schedule="constant", warmup_steps=0, b1=0.9, b2=0.95,
      weight_decay=0.05, grad_clip_norm=1.0, wd_exclude=())

  # Samples written at every evaluation (samples.png: one row per class).
  c.sampling = ml_collections.ConfigDict(dict(
      classes=DEMO_CLASSES, per_class=4, cfg_scale=4.0, cfg_interval=-1,
      temperature=1.0, top_k=2000, top_p=1.0, seed=0))
  # Held-out next-token loss on the code dataset's eval split.
  c.eval.update(dict(num_batches=8, batch_size=64))
  # The tokenizer that decodes samples into pixels. Empty: the one recorded in
  # the code dataset's metadata (its run folder or state dict + config).
  c.tokenizer = ml_collections.ConfigDict(dict(config="", checkpoint=""))

  if variant == "tiny":
    c.model.update(dict(n_layer=4, n_head=4, dim=128, token_dropout_p=0.0,
                        resid_dropout_p=0.0, ffn_dropout_p=0.0))
    c.total_steps = 1200
    c.global_batch_size = 32
    c.compute_dtype = "float32"
    c.log_every = 100
    c.eval_every = 400
    c.checkpoint_every = 400
    c.optimizer.update(dict(lr=1e-3, end_lr=1e-4, schedule="cosine", warmup_steps=100))
    c.sampling.update(dict(classes=tuple(range(10)), per_class=8, cfg_scale=2.0, top_k=0))
    c.eval.update(dict(num_batches=4, batch_size=64))
    if cond == "c2i":
      # `make demo`: the VQGAN's 8x8 codes of the upright synthetic shapes.
      # On 2 CPU cores this smaller model sees about 4x more images per second
      # than 4 x 128, and whether its samples show their class
      # (`vwt_jax.tools.class_accuracy`) depends on how many images it has seen.
      c.model.update(dict(n_layer=3, dim=64))
      c.total_steps = 900
      c.global_batch_size = 64
      c.eval_every = c.checkpoint_every = 900
      c.optimizer.update(dict(lr=3e-3, end_lr=3e-4))
      c.sampling.cfg_scale = 4.0
  else:
    n_layer, n_head, dim = GPT_VARIANTS[variant]
    batch, lr = RECIPES[variant]
    c.model.update(dict(n_layer=n_layer, n_head=n_head, dim=dim))
    c.global_batch_size = batch
    c.optimizer.lr = c.optimizer.end_lr = lr
    if variant in ("XXL", "3B"):
      # Released with FSDP over every block (`train_c2i_fsdp.py`).
      c.mesh_shape = (1, -1, 1)
      c.model.remat = True

  if cond == "t2i" and variant == "tiny":
    # Vript keyframes + caption features (`extract_codes --vript_root`): the
    # caption width and length (the prefix) come from the code dataset, i.e.
    # from its caption encoder; 10 % of the captions are dropped to the null
    # caption as in LlamaGen. Sample with `vwt_jax.sample --captions_from`.
    c.model.caption_dim = config_dict.placeholder(int)
    c.model.cls_token_num = config_dict.placeholder(int)
    # The demo's ~200 keyframes (x2 flips) are memorised fast: in a 600-step
    # run the held-out loss was 4.56 nats at step 400 and 4.86 at step 600.
    c.total_steps = 400
    c.eval_every = c.checkpoint_every = 200
  elif cond == "t2i":
    # The text model: FLAN-T5-XL features (2048-d, 120 tokens), cfg 7.5, top-k 1000.
    c.sampling.update(dict(cfg_scale=7.5, top_k=1000))
  return c
