"""Vriptor configs: the stage recipes, and the 7B captioner's FSDP x tensor shardings."""

import importlib
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

import helpers
from helpers import load_config
from vwt_jax import families
from vwt_jax.conversion import hf_checkpoint
from vwt_jax.conversion import hf_llama
from vwt_jax.core import sharding
from vwt_jax.families import captioner as captioner_family
from vwt_jax.families import st_llm as st_llm_family
from vwt_jax.models import captioner as captioner_lib
from vwt_jax.models import llama_lm
from vwt_jax.training import captioner
from vwt_jax.training import st_llm

# Every LM and vision-tower matrix of at least this many elements must be split
# over both 'fsdp' and 'tensor' (the smaller ones: patch and position embeddings).
LARGE = 2 ** 20


def test_stage_recipes_follow_vriptor():
  s1, s2 = load_config("vriptor.py", "stage1"), load_config("vriptor.py", "stage2")
  assert (s1.data.stage, s2.data.stage) == ("stage1", "stage2")
  assert (s1.data.num_frames, s2.data.num_frames) == (64, 256)
  assert (s1.text.max_answer_length, s2.text.max_answer_length) == (1024, 4096)
  for c in (s1, s2):
    assert (c.optimizer.lr, c.optimizer.end_lr, c.optimizer.schedule) == (2e-5, 2e-5, "constant")
    assert (c.compute_dtype, c.num_epochs, c.total_steps) == ("bfloat16", 1.0, 0)
    # 64 = 1 per device x 8 accumulation steps x 8 devices.
    assert (c.global_batch_size, c.grad_accum_steps, c.mesh_shape) == (64, 8, (1, -1, 1))
    assert tuple(c.train.freeze) == ("vision",)
    cfg = captioner_family.model_config(c)
    assert (cfg.lm.dim, cfg.lm.n_layer, cfg.lm.vocab_size, cfg.lm.scan_layers, cfg.lm.remat) == (
        4096, 32, 32000, True, True)
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.num_queries) == (336, 14, 32)
    assert cfg.num_visual_tokens() + c.text.max_answer_length < c.text.max_length
    assert c.text.max_length == cfg.lm.max_positions
  assert captioner_family.model_config(s2).num_visual_tokens() == 256 * 32
  assert importlib.import_module(families.get(s1.family).TRAINER).train is captioner.train


def test_llm_sizes_are_vicunas_and_another_model_is_refused(tmp_path, monkeypatch):
  """The stage configs state Vicuna-7B v1.1's sizes (its config.json); the
  weights of another model are refused, naming the field."""
  (tmp_path / "config.json").write_text(json.dumps(dict(
      model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
      num_attention_heads=32, intermediate_size=11008, rms_norm_eps=1e-6,
      max_position_embeddings=2048, hidden_act="silu")))

  def config_only(model_dir, **overrides):
    # The directory's config, and weights of its shapes: 7B of them would take minutes.
    lm = llama_lm.LlamaLMConfig.from_hf_config(hf_checkpoint.read_config(model_dir),
                                               **overrides)
    return lm, nn.meta.unbox(llama_lm.abstract_params(lm))

  monkeypatch.setattr(hf_llama, "load_hf_llama", config_only)
  config = load_config("vriptor.py", "stage1")
  cfg = captioner_family.model_config(config)
  assert sorted(captioner_family.load_pretrained(cfg, str(tmp_path))) == ["lm"]
  config.model.lm.norm_eps = 1e-5  # LLaMA-2's.
  with pytest.raises(ValueError, match=r"the checkpoint has norm_eps=1e-06 \(captioner: 1e-05\)"):
    captioner_family.load_pretrained(captioner_family.model_config(config), str(tmp_path))


def test_unknown_variant_fails_clearly():
  with pytest.raises(ValueError, match="unknown variant 'stage3'"):
    load_config("vriptor.py", "stage3")


def _spec_axes(spec):
  axes = set()
  for entry in spec:
    axes.update(entry if isinstance(entry, tuple) else (entry,))
  return axes - {None}


@helpers.needs_devices(8)
def test_7b_parameters_shard_over_fsdp_and_tensor():
  config = load_config("vriptor.py", "stage1")
  cfg = captioner_family.model_config(config)
  mesh = sharding.create_mesh((1, 4, 2))
  boxed = captioner_lib.abstract_params(cfg)
  shardings = sharding.logical_to_sharding(boxed, mesh, config.logical_axis_rules)
  params = nn.meta.unbox(boxed)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  total, per_device, largest = 0, 0, None
  print(f"\n{'parameter':70s} {'shape':>24s} {'per device':>14s}  spec")
  for (path, leaf), shard in zip(leaves, jax.tree.leaves(shardings)):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    size = int(np.prod(leaf.shape))
    shard_size = int(np.prod(shard.shard_shape(leaf.shape)))
    total += size
    per_device += shard_size * leaf.dtype.itemsize
    print(f"{name:70s} {str(leaf.shape):>24s} {str(shard.shard_shape(leaf.shape)):>14s}  "
          f"{shard.spec}")
    if name.split("/")[0] in ("lm", "vision") and size >= LARGE:
      assert _spec_axes(shard.spec) == {"fsdp", "tensor"}, name
    if largest is None or size > largest[1]:
      largest = (name, size, shard_size)
  print(f"total parameters: {total:,} ({total / 1e9:.2f}B); float32 bytes per device: "
        f"{per_device / 2 ** 30:.2f} GiB of {total * 4 / 2 ** 30:.2f} GiB")
  counts = captioner_lib.count_params(cfg)
  assert total == counts["total"] and counts["lm"] == 6_738_415_616
  name, size, shard_size = largest
  # The fused q|k|v of the 32 scanned layers (1.6B), split 4 x 2 ways.
  assert name == "lm/layers/attention/wqkv/kernel" and shard_size * 8 == size
  # Only norms and biases are replicated.
  assert per_device * 8 <= total * 4 * 1.01


def test_st_llm_stages_follow_vriptors_stllm_configs():
  """`vriptor_stllm_stage{1,2}.yaml` with `STLLMForCausalLM.from_config`'s RoPE."""
  s1, s2 = (load_config("vriptor.py", f"{s},arch=st_llm") for s in ("stage1", "stage2"))
  for c, frames, residual, positions, factor, answers in (
      (s1, 64, 16, 2048, 1.0, 1024), (s2, 256, 64, 8192, 4.0, 4096)):
    cfg = st_llm_family.model_config(c)
    assert (c.family, c.data.num_frames, cfg.residual_size, cfg.video_input) == (
        "st_llm", frames, residual, "residual")
    assert (cfg.lm.max_positions, cfg.lm.rope_dynamic_factor, cfg.lm.vocab_size) == (
        positions, factor, 32001)
    assert (c.text.max_length, c.text.max_answer_length) == (positions, answers)
    assert tuple(c.train.freeze) == ("vision", "qformer")
    assert (c.optimizer.lr, c.optimizer.schedule, c.data.image_size) == (2e-5, "constant", 224)
    # The video tokens, a prompt and the longest answer fit the positions.
    assert cfg.num_video_tokens(frames) + answers < positions
  assert importlib.import_module(families.get(s1.family).TRAINER).train is st_llm.train
  with pytest.raises(ValueError, match="arch='blip2'"):
    load_config("vriptor.py", "stage1,arch=blip2")
