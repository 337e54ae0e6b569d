"""transformers `LlamaForCausalLM` directories -> `LlamaLM`, checked against transformers itself.

Small random GQA models (2 layers, hidden 64, 4 heads, 2 kv heads) with every
weight, norms included, randomised so that a swapped or mis-permuted tensor
changes the logits.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import helpers
from vwt_jax.conversion import hf_checkpoint, hf_llama, torch_state
from vwt_jax.models import llama_lm

SEQ = 9
PROMPT = 4
_BASE = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=96, rope_theta=500000.0,
             rms_norm_eps=1e-6, max_position_embeddings=64)
# Two float32 evaluations of the logits: the longest sum is the MLP's 96; 6 dots
# a layer for 2 layers, the final norm and the LM head.
TOL = dict(reduction=_BASE["intermediate_size"], depth=2 * 6 + 2)
CASES = {
    "gqa": {},
    "tied": dict(tie_word_embeddings=True),
    "linear_rope": dict(rope_scaling={"type": "linear", "factor": 2.0}),
}


def _save_random_llama(model_dir, max_shard_size=None, **overrides):
  """Saves a random LlamaForCausalLM; returns its logits on fixed ids."""
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(_BASE, **overrides)))
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
  kwargs = {} if max_shard_size is None else dict(max_shard_size=max_shard_size)
  model.eval().save_pretrained(str(model_dir), safe_serialization=True, **kwargs)
  ids = torch.randint(0, _BASE["vocab_size"], (2, SEQ), generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    logits = model(ids).logits.numpy()
  return ids.numpy(), logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """case -> (model dir, ids (2, SEQ), transformers logits (2, SEQ, vocab))."""
  out = {}
  for case, overrides in CASES.items():
    model_dir = tmp_path_factory.mktemp(case)
    # One case is written as shards, so the index path is exercised too.
    shard = "20KB" if case == "linear_rope" else None
    out[case] = (model_dir, *_save_random_llama(model_dir, shard, **overrides))
  return out


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, ids=None, embeds=None):
  return model.apply({"params": params}, ids, inputs_embeds=embeds)[0]


@pytest.fixture(scope="module")
def converted(saved):
  """case -> load_hf_llama(dir of case) (float32, unrolled layers)."""
  return {case: hf_llama.load_hf_llama(str(saved[case][0])) for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(saved, converted, case):
  _, ids, ref = saved[case]
  config, params = converted[case]
  assert config.tie_embeddings == (case == "tied")
  assert ("lm_head" in params) == (case != "tied")
  assert config.rope_linear_factor == (2.0 if case == "linear_rope" else 1.0)
  logits = np.asarray(_forward(llama_lm.LlamaLM(config), params, jnp.asarray(ids)))
  assert logits.dtype == np.float32
  helpers.assert_allclose_f32(logits, ref, **TOL)


def test_sharded_checkpoint_was_written(saved):
  model_dir = saved["linear_rope"][0]
  assert (model_dir / hf_checkpoint.SAFETENSORS_INDEX).is_file()


def test_params_stay_on_the_host_in_param_dtype(saved):
  # A 7B conversion must not land whole on one accelerator: the trainer shards it.
  _, params = hf_llama.load_hf_llama(str(saved["gqa"][0]), param_dtype=jnp.bfloat16)
  leaves = jax.tree.leaves(params)
  assert all(type(x) is np.ndarray and x.dtype == jnp.bfloat16 for x in leaves)


def test_kv_cache_decode_matches_full_forward(saved):
  """Prefill PROMPT tokens as embeddings, then decode the rest one at a time (scanned layers)."""
  model_dir, ids, ref = saved["gqa"]
  config, params = hf_llama.load_hf_llama(str(model_dir), scan_layers=True)
  model = llama_lm.LlamaLM(config)
  variables = {"params": params}
  embeds = model.apply(variables, jnp.asarray(ids[:, :PROMPT]), method=model.embed)
  cache = llama_lm.init_cache(config, 2, SEQ)
  logits, cache = jax.jit(functools.partial(model.apply, method=model.prefill))(
      variables, embeds, cache)
  steps = [np.asarray(logits)]
  decode = jax.jit(functools.partial(model.apply, method=model.decode))
  for pos in range(PROMPT, SEQ - 1):
    logits, cache = decode(variables, jnp.asarray(ids[:, pos]), pos, cache)
    steps.append(np.asarray(logits))
  helpers.assert_allclose_f32(np.stack(steps, 1), ref[:, PROMPT - 1:SEQ - 1], **TOL)


def test_inputs_embeds_equal_input_ids(saved, converted):
  _, ids, _ = saved["tied"]
  config, params = converted["tied"]
  model = llama_lm.LlamaLM(config)
  embeds = model.apply({"params": params}, jnp.asarray(ids), method=model.embed)
  helpers.assert_allclose_f32(np.asarray(_forward(model, params, embeds=embeds)),
                              np.asarray(_forward(model, params, jnp.asarray(ids))), **TOL)


# Dynamic NTK scaling past 8 positions (factor 4): 24-token sequences reach 3x that.
_DYNAMIC = dict(rope_scaling={"type": "dynamic", "factor": 4.0}, max_position_embeddings=8)
LONG = 24


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
  """(model dir, ids (2, LONG)) of a random LLaMA with dynamic RoPE scaling."""
  model_dir = tmp_path_factory.mktemp("dynamic_rope")
  ids, _ = _save_random_llama(model_dir, **_DYNAMIC)
  longer = torch.randint(0, _BASE["vocab_size"], (2, LONG),
                         generator=torch.Generator().manual_seed(2)).numpy()
  return model_dir, longer


def _transformers_model(model_dir):
  # A fresh model per reference: transformers keeps the grown base between calls.
  return transformers.LlamaForCausalLM.from_pretrained(str(model_dir)).eval()


@pytest.mark.parametrize("length", [6, LONG])
def test_dynamic_rope_matches_transformers_below_and_past_max_positions(dynamic, length):
  model_dir, ids = dynamic
  config, params = hf_llama.load_hf_llama(str(model_dir))
  assert (config.rope_dynamic_factor, config.max_positions) == (4.0, 8)
  with torch.no_grad():
    ref = _transformers_model(model_dir)(torch.from_numpy(ids[:, :length])).logits.numpy()
  logits = np.asarray(_forward(llama_lm.LlamaLM(config), params, jnp.asarray(ids[:, :length])))
  helpers.assert_allclose_f32(logits, ref, **TOL)
  if length > config.max_positions:
    # Plain RoPE on the same weights is far off: the scaling is what matches.
    plain = dataclasses.replace(config, rope_dynamic_factor=1.0, max_positions=LONG)
    off = np.asarray(_forward(llama_lm.LlamaLM(plain), params, jnp.asarray(ids)))
    assert np.abs(off - ref).max() > 100 * helpers.f32_atol(np.abs(ref).max(), **TOL)


def test_dynamic_rope_cached_decoding_matches_transformers(dynamic):
  """Each decoded token at the base of its own running length, the cached keys at theirs."""
  model_dir, ids = dynamic
  model = _transformers_model(model_dir)
  with torch.no_grad():
    out = model(torch.from_numpy(ids[:, :PROMPT]), use_cache=True)
    ref, past = [out.logits[:, -1].numpy()], out.past_key_values
    for pos in range(PROMPT, LONG - 1):
      out = model(torch.from_numpy(ids[:, pos:pos + 1]), cache=past, use_cache=True)
      ref.append(out.logits[:, -1].numpy())
      past = out.past_key_values
  config, params = hf_llama.load_hf_llama(str(model_dir), scan_layers=True)
  lm = llama_lm.LlamaLM(config)
  variables = {"params": params}
  embeds = lm.apply(variables, jnp.asarray(ids[:, :PROMPT]), method=lm.embed)
  logits, cache = jax.jit(functools.partial(lm.apply, method=lm.prefill))(
      variables, embeds, llama_lm.init_cache(config, 2, LONG))
  steps = [np.asarray(logits)]
  decode = jax.jit(functools.partial(lm.apply, method=lm.decode))
  for pos in range(PROMPT, LONG - 1):
    logits, cache = decode(variables, jnp.asarray(ids[:, pos]), pos, cache)
    steps.append(np.asarray(logits))
  helpers.assert_allclose_f32(np.stack(steps, 1), np.stack(ref, 1), **TOL)
  # Not the full forward over all LONG positions, which rotates every key at base(LONG).
  with torch.no_grad():
    full = _transformers_model(model_dir)(torch.from_numpy(ids)).logits.numpy()
  assert np.abs(full[:, PROMPT - 1:LONG - 1] - np.stack(ref, 1)).max() > 1e-3


def test_mismatches_are_listed(saved, converted):
  model_dir, _, _ = saved["gqa"]
  config = converted["gqa"][0]
  state_dict = hf_checkpoint.read_state_dict(str(model_dir))
  del state_dict["model.layers.1.mlp.up_proj.weight"]
  state_dict["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
  state_dict["model.norm.weight"] = np.ones(32, np.float32)
  with pytest.raises(torch_state.ConversionError) as e:
    hf_llama.convert_llama(state_dict, config)
  message = str(e.value)
  assert "missing state-dict key: model.layers.1.mlp.up_proj.weight" in message
  assert "unexpected state-dict key: model.layers.0.self_attn.q_proj.bias" in message
  assert "shape mismatch: norm/scale converted (32,) vs model (64,)" in message
  # A checkpoint of another size is reported, not mis-reshaped.
  with pytest.raises(torch_state.ConversionError, match="wqkv/kernel"):
    hf_llama.convert_llama(hf_checkpoint.read_state_dict(str(model_dir)),
                           dataclasses.replace(config, n_kv_head=4))


def test_tied_checkpoint_with_a_stored_lm_head(saved, converted):
  """A duplicate lm_head.weight is accepted only when it equals the embedding."""
  model_dir, _, _ = saved["tied"]
  config, params = converted["tied"]
  state_dict = hf_checkpoint.read_state_dict(str(model_dir))
  assert "lm_head.weight" not in state_dict
  state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"].copy()
  again = hf_llama.convert_llama(state_dict, config)
  np.testing.assert_array_equal(again["embed_tokens"]["embedding"],
                                params["embed_tokens"]["embedding"])
  state_dict["lm_head.weight"] = state_dict["lm_head.weight"] + 1
  with pytest.raises(torch_state.ConversionError, match="lm_head.weight differs"):
    hf_llama.convert_llama(state_dict, config)
