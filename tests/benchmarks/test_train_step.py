"""benchmarks/train_step.py: its JSON for tiny GPT and TiTok steps, and its FLOP counts."""

import functools
import importlib.util
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from helpers import load_config, tiny_titok_config
from vwt_jax.families import common
from vwt_jax.families import gpt as gpt_family
from vwt_jax.families import titok as titok_family
from vwt_jax.models import maskgit_vqgan
from vwt_jax.training import generator
from vwt_jax.training import titok
from vwt_jax.training import trainer as trainer_lib


def _load_benchmark():
  path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "train_step.py")
  spec = importlib.util.spec_from_file_location("train_step", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


train_step = _load_benchmark()


def _tiny_gpt(arg="tiny", **model):
  config = load_config("llamagen.py", arg)
  config.model.update(dict(dict(n_layer=2, n_head=4, dim=64, vocab_size=256, block_size=16,
                                rope_2d=True), **model))
  config.global_batch_size = 8
  return config


def _tiny_titok(shapes_dir, **overrides):
  # Wider than the trainer tests' model so that matmuls, not elementwise ops,
  # dominate the step; no GAN, whose convolutions the analytic count leaves
  # out; no EMA or code restarts, which only cost compile time here.
  overrides = {"model.enc_width": 64, "model.dec_width": 64, "train.dead_code_threshold": 0.0,
               "losses.discriminator_weight": 0.0, "ema_decay": 0.0, **overrides}
  return tiny_titok_config(shapes_dir, **overrides)


def _check_consistent(result, config):
  median = result["step_time_s"]["median"]
  assert result["step_time_s"]["min"] <= median <= result["step_time_s"]["max"]
  assert result["timed_steps"] == 2 and result["warmup_steps"] == 1
  assert result["num_devices"] == jax.device_count()
  assert int(np.prod(list(result["mesh_shape"].values()))) == jax.device_count()
  assert result["global_batch_size"] == config.global_batch_size
  assert result["per_device_batch"] == config.global_batch_size / jax.device_count()
  assert result["compute_dtype"] == config.compute_dtype
  assert result["tokens_per_step"] == config.global_batch_size * result["tokens_per_example"]
  # float64 quotients of the same numbers (perhaps in another order): a few
  # 2^-53 apart, far inside approx's default rel 1e-6.
  assert result["tokens_per_sec"] == pytest.approx(result["tokens_per_step"] / median)
  assert result["examples_per_sec"] == pytest.approx(config.global_batch_size / median)
  for kind, flops in result["flops_per_step"].items():
    assert result["tflops_per_sec_per_device"][kind] == pytest.approx(
        flops / median / jax.device_count() / 1e12)
  assert np.isfinite(result["final_loss"]) and result["nonfinite_steps"] == 0


def test_gpt_step_json(tmp_path):
  # 128 positions per device, so the matmuls outweigh the replicated AdamW update.
  config = _tiny_gpt(block_size=64)
  config.global_batch_size = 16
  result = train_step.benchmark(config, steps=2, warmup=1, profile_dir=str(tmp_path),
                                profile_steps=1)
  _check_consistent(result, config)
  assert result["tokens_per_example"] == 64 and result["token"] == "image code"
  assert result["model"]["params"] > 0 and result["model"]["attention"] == "xla"
  flops = result["flops_per_step"]
  assert flops["analytic"] == train_step.gpt_train_flops(
      gpt_family.model_config(config), config.global_batch_size)
  # XLA also counts the softmax over 16-wide heads, norms, the loss and (on
  # every device) the AdamW update: 1.10x the matmuls here.
  assert flops["analytic"] <= flops["compiled"] <= 1.15 * flops["analytic"]
  assert result["device_kind"] == "cpu" and result["peak_flops_per_device"] is None
  assert result["mfu"] == {"compiled": None, "analytic": None}
  assert "'cpu' unknown" in result["mfu_null_reason"]
  traces = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".xplane.pb")]
  assert len(traces) == 1 and result["profile_dir"] == str(tmp_path)


def test_titok_step_json(shapes_dir):
  # 8 images per device, so the matmuls outweigh the replicated AdamW update.
  config = _tiny_titok(shapes_dir, global_batch_size=64)
  result = train_step.benchmark(config, steps=2, warmup=1, peak_tflops=2.0)
  _check_consistent(result, config)
  assert result["tokens_per_example"] == 8 and result["token"] == "latent token"
  assert result["analytic_excludes"] == []
  flops = result["flops_per_step"]
  # Layer norms, GELU, softmax, the losses and the AdamW update add 12 % at
  # width 64.
  assert flops["analytic"] <= flops["compiled"] <= 1.2 * flops["analytic"]
  assert result["peak_flops_per_device"] == 2e12 and result["mfu_null_reason"] is None
  for kind, mfu in result["mfu"].items():
    # float64 quotients, as in _check_consistent.
    assert mfu == pytest.approx(result["tflops_per_sec_per_device"][kind] / 2.0)


def _matmul_flops(jaxpr, skip: tuple[str, ...]) -> int:
  """2 x MACs of every dot_general / convolution in a traced program.

  Sub-programs count once per call (a scan's body once per iteration);
  equations whose name stack contains a `skip` entry are left out.
  """
  total = 0
  for eqn in jaxpr.eqns:
    if any(s in str(eqn.source_info.name_stack) for s in skip):
      continue
    out = int(np.prod(eqn.outvars[0].aval.shape)) if eqn.outvars else 0
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * out * int(np.prod([lhs[i] for i in contracting]))
    elif eqn.primitive.name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2 * out * int(np.prod(kernel)) // out_features
    times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += times * _matmul_flops(sub.jaxpr, skip)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += times * _matmul_flops(sub, skip)
  return total


def _traced_flops(trainer, setup_fn, config, skip=()):
  setup = setup_fn(config, np.random.default_rng(0))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in setup.batch.items()}
  step = functools.partial(trainer_lib.train_step, trainer=trainer)
  jaxpr = jax.make_jaxpr(step)(trainer.abstract_state(), batch, jax.random.key(0),
                               trainer.frozen).jaxpr
  return _matmul_flops(jaxpr, skip), setup


@pytest.mark.parametrize("arg,model", [
    ("tiny", {}),
    ("tiny,cond=t2i", dict(n_kv_head=2, caption_dim=24, cls_token_num=5)),
])
def test_gpt_analytic_flops_equal_the_traced_matmuls(arg, model):
  config = _tiny_gpt(arg, **model)
  trainer = generator.GeneratorTrainer(config, workdir="")
  traced, setup = _traced_flops(trainer, train_step._generator_setup, config)
  assert setup.analytic == traced


def _zero_teacher(section, image_size):
  """`titok_family.load_vqgan` without a file: zero weights of the right shapes."""
  cfg = common.from_fields(maskgit_vqgan.MaskGitVQGANConfig,
                           {k: v for k, v in section.items() if k != "checkpoint"})
  abstract = jax.eval_shape(maskgit_vqgan.MaskGitVQGAN(cfg).init, jax.random.key(0),
                            np.zeros((1, image_size, image_size, 3), np.float32))["params"]
  return cfg, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nn.meta.unbox(abstract))


@pytest.mark.parametrize("arg,overrides,excludes", [
    ("tiny", {}, []),  # single-stage VQ
    ("tiny", {"model.quantize_mode": "vae"}, []),
    ("tiny,recipe=stage1", {"teacher.checkpoint": "teacher.bin"}, ["stage-1 teacher"]),
    ("tiny,recipe=stage2", {"losses.discriminator_weight": 0.01},  # frozen encoder
     ["pixel decoder convolutions", "discriminator"]),
])
def test_titok_analytic_flops_equal_the_traced_matmuls(shapes_dir, monkeypatch, arg, overrides,
                                                       excludes):
  monkeypatch.setattr(titok_family, "load_vqgan", _zero_teacher)
  config = _tiny_titok(shapes_dir, arg=arg, **overrides)
  trainer = titok.TiTokTrainer(config, workdir="")
  traced, setup = _traced_flops(trainer, train_step._titok_setup, config,
                                skip=("pixel_decoder", "NLayerDiscriminator", "MaskGitVQGAN"))
  assert setup.analytic == traced
  assert setup.analytic_excludes == excludes


def test_gpt_sizes_default_to_llamagen_imagenet():
  config = load_config("llamagen.py", "B")
  assert train_step._fill_gpt_sizes(config) == {"vocab_size": 16384, "block_size": 256,
                                               "rope_2d": True}
  cfg = gpt_family.model_config(config)
  assert (cfg.vocab_size, cfg.block_size, cfg.rope_2d, cfg.num_classes) == (16384, 256, True,
                                                                            1000)
  t2i = load_config("llamagen.py", "tiny,cond=t2i")
  assert train_step._fill_gpt_sizes(t2i)["cls_token_num"] == 120
  given = load_config("llamagen.py", "B")
  given.data.dir = "/codes"
  assert train_step._fill_gpt_sizes(given) == {}


def test_maskgit_generator_gets_a_batch_but_no_analytic_count():
  config = load_config("maskgit.py", "tiny")
  config.model.update(dict(num_hidden_layers=1, num_attention_heads=2, hidden_size=32,
                           intermediate_size=64, image_seq_len=8, codebook_size=64,
                           condition_num_classes=10))
  config.global_batch_size = 8
  setup = train_step._generator_setup(config, np.random.default_rng(0))
  assert setup.batch["codes"].shape == (8, 8) and setup.batch["codes"].max() < 64
  assert setup.batch["labels"].shape == (8,) and setup.batch["labels"].max() < 10
  assert setup.analytic is None and setup.analytic_excludes == [
      "no analytic count for family 'maskgit'"]
