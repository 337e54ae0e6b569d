r"""Vriptor-style video captioners trained on Vript's four formats (arXiv 2406.06040).

A CLIP ViT per frame, a query resampler and a LLaMA/Vicuna decoder
(`vwt_jax/models/captioner.py`, trainer `vwt_jax/training/captioner.py`).
Vriptor itself is ST-LLM (EVA ViT-g + Q-Former + Vicuna-7B v1.1; the
released weights caption with `python -m vwt_jax.caption --pretrained
vriptor-stllm`, `models/st_llm.py`); these configs keep its training recipe
(docs/captioner.md) on the CLIP ViT-L/14-336 tower and a 32-query resampler
that load from Hugging Face directories.

  # CPU demo: tiny model on 100 embedded synthetic Vript videos, written under
  # demo_workdir/vript/train on first use (the same data as `make demo`'s)
  python -m vwt_jax.main --config configs/vriptor.py:tiny --workdir demo_workdir/captioner
  # stage 1 on 8 GPUs (FSDP over all 8): Vicuna-7B v1.1 + CLIP ViT-L/14-336, ViT frozen
  python -m vwt_jax.main --config configs/vriptor.py:stage1 --config.data.root /data/vript \
      --config.init.llm_dir /ckpt/vicuna-7b-v1.1 \
      --config.init.vision_dir /ckpt/clip-vit-large-patch14-336 --workdir /runs/vriptor_s1
  # the same with 4-way FSDP x 2-way tensor parallelism
  ... --config.mesh_shape='(1,4,2)' --config.grad_accum_steps=16
  # stage 2, initialised from stage 1 (its tokenizer.json is reused)
  python -m vwt_jax.main --config configs/vriptor.py:stage2 --config.data.root /data/vript \
      --config.init_from /runs/vriptor_s1 --workdir /runs/vriptor_s2
  # ST-LLM itself (the released Vriptor's architecture, `training/st_llm.py`):
  # stage 2 from the released weights (or ST-LLM's), ViT and Q-Former frozen
  python -m vwt_jax.main --config configs/vriptor.py:stage2,arch=st_llm \
      --config.data.root /data/vript --config.init.stllm_dir hf://Mutonix/Vriptor-STLLM \
      --config.tokenizer.path hf://Mutonix/Vriptor-STLLM --workdir /runs/stllm_s2

`arch=st_llm` trains ST-LLM instead (EVA ViT-g + Q-Former reading the
instruction + Vicuna-7B, 'residual' video input) with its own stages
(`vriptor_stllm_stage{1,2}.yaml`): stage 1 64 frames, residual size 16, answers
cut to 1024 tokens, 2048 positions; stage 2 256 frames, residual size 64,
4096-token answers, 8192 positions with dynamic NTK RoPE x4; both lr 2e-5
constant, ViT and Q-Former frozen (`llama_proj`, the residual projections and
the LLM train); `tiny` is a CPU-sized ST-LLM.

Variants:
  tiny    CPU demo: 32 px tiny ViT (patch 8), 4-query resampler, 2-layer
          LlamaLM of width 64, 4 frames, a 1024-token BPE trained on the
          captions, every part trained from scratch, 600 steps on 100
          embedded videos (~400 clips; 300 steps on 10 videos memorise them
          and caption new videos worse than a random other caption does).
  stage1  Vriptor stage 1: 64 frames, answers cut to 1024 tokens
          (max_txt_len), lr 2e-5 constant, bf16, 1 epoch, global batch 64 =
          1 per device x 8 accumulation steps x 8 devices, ViT frozen.
  stage2  Vriptor stage 2: 256 frames (the prompts' sampling rate still says
          duration / 64), answers cut to 4096 tokens, otherwise as stage 1.

Sequence lengths: 64 frames x 32 queries = 2048 visual tokens at stage 1 and
8192 at stage 2, plus the prompt (voice-over included) and the answer, give
4096 and 16384 positions; a 2048-position Vicuna gets linear RoPE scaling by
2 and 8 (the released Vriptor, ST-LLM-based, declares dynamic NTK scaling x4
over 8192 positions, `rope_dynamic_factor`, and trains on at most 8192). Both stages keep a
256-frame temporal table in the resampler so stage 2 loads stage 1 as is.

Text layout as ST-LLM's (`captioner_text`): '</s>' after the visual tokens
(ST-LLM remaps bos to eos) and '<unk>' as padding, since Vicuna's 32000-token
vocabulary has no pad token (ST-LLM adds '[PAD]' as token 32000; padding
carries no loss and is never attended to, so its id does not matter).

Optimizer: AdamW with transformers' Trainer defaults (betas 0.9/0.999, no
weight decay, clip 1.0) as ST-LLM trains through it [unverified]. On a
TPU v5p-8 (4 chips) use mesh (1,-1,1) or (1,2,2).
"""

import ml_collections

from vwt_jax import config_common
from vwt_jax.families import st_llm as st_llm_family
from vwt_jax.models.captioner import CaptionerConfig
from vwt_jax.models.clip_vision import VARIANTS as VISION_VARIANTS
from vwt_jax.models.eva_vit import EvaViTConfig
from vwt_jax.models.llama_lm import LlamaLMConfig
from vwt_jax.models.qformer import QFormerConfig
from vwt_jax.models.st_llm import STLLMConfig

VARIANTS = ("tiny", "stage1", "stage2")
ARCHS = ("captioner", "st_llm")
# ST-LLM's stages: (frames, residual_size, max_txt_len, max_model_length).
STLLM_STAGES = {
    "stage1": (64, 16, 1024, 2048),
    "stage2": (256, 64, 4096, 8192),
}
# stage: (frames, max_txt_len, sequence length, RoPE linear factor)
STAGES = {
    "stage1": (64, 1024, 4096, 2.0),
    "stage2": (256, 4096, 16384, 8.0),
}
# The embedded synthetic Vript the tiny demo trains on: what `make demo`
# writes with `synthetic --num_long_videos 80 --num_short_videos 20
# --frames_per_scene 8 16` (the t2i demo's keyframes come from it too).
DEMO_DATA = dict(num_long_videos=80, num_short_videos=20, scenes_per_video=(3, 5),
                 frames_per_scene=(8, 16), resolution=64, fps=8, seed=0, crf=23)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, options = config_common.parse_arg(arg, "configs/vriptor.py", ("arch",))
  config_common.check_variant(variant, VARIANTS, "configs/vriptor.py")
  arch = options.get("arch", "captioner")
  if arch not in ARCHS:
    raise ValueError(f"configs/vriptor.py: arch={arch!r}: expected one of {ARCHS}")
  c = config_common.base_config(arch, variant, total_steps=0, global_batch_size=64,
                                ema_decay=0.0)
  # total_steps = 0: num_epochs over the training samples.
  c.num_epochs = 1.0
  c.grad_accum_steps = 8
  c.mesh_shape = (1, -1, 1)
  c.log_every = 10
  c.checkpoint_every = 500
  # Teacher-forced loss on the first eval.num_batches batches of the samples
  # (Vript has no held-out split).
  c.eval_every = 500

  c.data = config_common.vript_data()
  c.data.update(dict(image_size=336, num_workers=8, num_threads=16))

  # `CaptionerConfig`: the CLIP tower, the projector and the LLaMA decoder
  # (Vicuna-7B's sizes). The weights of `init.vision_dir` / `init.llm_dir`
  # must have these sizes; the decoder may extend its positions
  # (`lm.max_positions`, `lm.rope_linear_factor`).
  if variant == "tiny":
    model = CaptionerConfig(
        vision=VISION_VARIANTS["tiny"], lm=LlamaLMConfig.from_variant("tiny", vocab_size=1024),
        projector="resampler", num_queries=4, projector_layers=1, projector_heads=4,
        max_frames=0, num_frames=4)
  else:
    frames, answer, length, rope = STAGES[variant]
    model = CaptionerConfig(
        vision=VISION_VARIANTS["ViT-L/14@336px"],
        lm=LlamaLMConfig.from_variant("7B", max_positions=length, rope_linear_factor=rope,
                                      scan_layers=True, remat=True),
        feature_layer=-2, drop_cls=True, projector="resampler", num_queries=32,
        projector_layers=2, projector_heads=16, temporal_embedding=True, max_frames=256,
        num_frames=frames)
  c.model = config_common.model_section(model)
  c.data.num_frames = c.model.get_ref("num_frames")
  # Hugging Face directories (config.json + safetensors/bin) of the decoder
  # (LlamaForCausalLM: LLaMA, Vicuna) and the CLIP vision tower.
  c.init = ml_collections.ConfigDict(dict(llm_dir="", vision_dir=""))
  # path: a tokenizer.json or a directory with one (or a SentencePiece
  # tokenizer.model); '' = see the trainer (init_from's, init.llm_dir's, or
  # trained with vocab_size tokens).
  c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=32000))
  c.text = ml_collections.ConfigDict(dict(
      max_length=4096, max_answer_length=1024, bos=True, bos_token="</s>", pad_token="<unk>"))
  c.train = ml_collections.ConfigDict(dict(freeze=("vision",)))
  c.optimizer = config_common.optimizer(
      lr=2e-5, end_lr=2e-5, schedule="constant", warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, grad_clip_norm=1.0, wd_exclude=())
  c.eval.update(dict(num_batches=8, batch_size=8))

  if variant == "tiny":
    c.data.update(dict(root="demo_workdir/vript/train", image_size=32,
                       num_workers=0, num_threads=4, prefetch=8))
    c.data.synthetic = ml_collections.ConfigDict(DEMO_DATA)
    # A synthetic set already under data.root with other settings is kept
    # (the run stops) unless this is True.
    c.data.synthetic_replace = False
    c.tokenizer.vocab_size = 1024
    # 16 visual tokens, prompts of at most ~120 and answers of ~400 tokens.
    c.text.update(dict(max_length=512, max_answer_length=384, bos_token="<s>",
                       pad_token="<pad>"))
    # A random tiny ViT has nothing to keep: every part learns.
    c.train.freeze = ()
    c.total_steps = 600
    c.global_batch_size = 8
    c.grad_accum_steps = 1
    c.mesh_shape = (-1, 1, 1)
    c.compute_dtype = "float32"
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 300
    c.optimizer.update(dict(lr=1e-3, end_lr=1e-4, schedule="cosine", warmup_steps=20,
                            weight_decay=0.01))
    c.eval.update(dict(num_batches=4, batch_size=8))
  else:
    c.data.stage = variant
    c.text.update(dict(max_length=length, max_answer_length=answer))
  if arch == "st_llm":
    _st_llm(c, variant)
  return c


def _st_llm(c: ml_collections.ConfigDict, variant: str) -> None:
  """ST-LLM's model, sizes and freezing in place of the captioner's."""
  if variant == "tiny":
    frames, model = 4, STLLMConfig(
        vision=EvaViTConfig(image_size=28, width=32, depth=1, num_heads=4, mlp_dim=64),
        qformer=QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=128,
                              encoder_width=32, num_query_tokens=4, llm_hidden_size=64),
        lm=LlamaLMConfig.from_variant("tiny", vocab_size=1024),
        residual_size=4, residual_hidden=16)
    c.data.image_size = 28
  else:
    frames, residual, answer, length = STLLM_STAGES[variant]
    # `STLLMForCausalLM.from_config`: max_model_length positions, dynamic
    # NTK scaling by max_model_length / 2048.
    model = STLLMConfig(
        lm=LlamaLMConfig.from_variant("7B", vocab_size=32001, max_positions=length,
                                      rope_dynamic_factor=length / 2048, scan_layers=True,
                                      remat=True),
        residual_size=residual)
    c.data.image_size = model.vision.image_size
    c.text.update(dict(max_length=length, max_answer_length=answer))
    c.train.freeze = ("vision", "qformer")
  c.model = config_common.model_section(model)
  c.data.num_frames = frames
  # A folder in the released layout (`conversion.st_llm.load_vriptor`).
  c.init = ml_collections.ConfigDict(dict(stllm_dir=""))
  c.tokenizer.qformer = st_llm_family.QFORMER_TOKENIZER
  # The Q-Former reads the request without its voice-over: well under 64 tokens.
  c.text.qformer_length = 64
