"""LLaMA language model: config parsing, variants, sharding of 7B, padding and the KV cache.

Outputs are checked against transformers in
tests/conversion/test_hf_llama_conversion.py.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

import helpers
from vwt_jax.core import sharding
from vwt_jax.models import llama, llama_lm

# LLaMA-7B / Vicuna-7B: 32 x (4*4096^2 + 3*4096*11008 + 2*4096) + 2*32000*4096 + 4096.
LLAMA_7B_PARAMS = 6_738_415_616
_HF_TINY = dict(model_type="llama", vocab_size=100, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                rms_norm_eps=1e-5, max_position_embeddings=128)


def test_from_hf_config_reads_v4_and_v5_files():
  v4 = dict(_HF_TINY, rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 4.0},
            tie_word_embeddings=True, head_dim=32)
  config = llama_lm.LlamaLMConfig.from_hf_config(v4, scan_layers=True)
  assert (config.vocab_size, config.dim, config.n_layer, config.n_head, config.kv_heads,
          config.attention_head_dim, config.ffn_hidden) == (100, 64, 2, 4, 2, 32, 96)
  assert (config.norm_eps, config.rope_theta, config.rope_linear_factor) == (1e-5, 500000.0, 4.0)
  assert config.max_positions == 128 and config.tie_embeddings and config.scan_layers
  # transformers 5 writes `rope_parameters` (with rope_theta inside) instead.
  v5 = transformers.LlamaConfig(**v4).to_dict()
  assert "rope_parameters" in v5
  assert llama_lm.LlamaLMConfig.from_hf_config(v5, scan_layers=True) == config
  plain = llama_lm.LlamaLMConfig.from_hf_config(_HF_TINY)
  assert (plain.rope_theta, plain.rope_linear_factor, plain.tie_embeddings) == (10000.0, 1.0,
                                                                                 False)
  # Vriptor's config.json: ST-LLM's model_type, dynamic NTK over 8192 positions.
  vriptor = llama_lm.LlamaLMConfig.from_hf_config(dict(
      _HF_TINY, model_type="st_llm_hf", max_position_embeddings=8192,
      rope_scaling={"type": "dynamic", "factor": 4.0}))
  assert (vriptor.rope_dynamic_factor, vriptor.rope_linear_factor) == (4.0, 1.0)
  assert vriptor.max_positions == 8192 and vriptor.dynamic_rope


def test_dynamic_rope_allows_lengths_past_max_positions_and_keeps_them_plain_below():
  config = llama_lm.LlamaLMConfig.from_variant("tiny", max_positions=16, rope_dynamic_factor=2.0)
  plain = llama_lm.LlamaLMConfig.from_variant("tiny", max_positions=16)
  np.testing.assert_allclose(np.asarray(llama_lm.rope_rows(config, 3, 13)),
                             llama_lm.rope_table(plain)[3:16], rtol=0, atol=1e-6)
  # Past 16 the base grows: every frequency but the first (always 1) is lower.
  grown = np.asarray(llama_lm.dynamic_frequencies(config, 40))
  base = np.asarray(llama_lm.dynamic_frequencies(config, 16))
  assert grown[0] == base[0] == 1.0 and (grown[1:] < base[1:]).all()
  assert llama.cache_length(llama_lm.init_cache(config, 1, 64)) == 64
  with pytest.raises(ValueError, match="cache of 64 positions exceeds max_positions=16"):
    llama_lm.init_cache(plain, 1, 64)
  with pytest.raises(ValueError, match="both > 1"):
    llama_lm.LlamaLMConfig.from_variant("tiny", rope_linear_factor=2.0, rope_dynamic_factor=2.0)
  with pytest.raises(ValueError, match="rope_dynamic_factor=0.5 must be >= 1"):
    llama_lm.LlamaLMConfig.from_variant("tiny", rope_dynamic_factor=0.5)


@pytest.mark.parametrize("field,value,match", [
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("attention_bias", True, "attention_bias=true"),
    ("mlp_bias", True, "mlp_bias=true"),
    ("model_type", "mistral", "model_type='mistral'"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "rope_scaling=.*'llama3'"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "rope_scaling=.*'yarn'"),
    ("partial_rotary_factor", 0.5, "partial_rotary_factor=0.5"),
])
def test_unsupported_configs_are_refused(field, value, match):
  with pytest.raises(ValueError, match=match):
    llama_lm.LlamaLMConfig.from_hf_config(dict(_HF_TINY, **{field: value}))


@pytest.fixture(scope="module")
def abstract_7b():
  config = llama_lm.LlamaLMConfig.from_variant("7B")
  return config, llama_lm.abstract_params(config)


def test_7b_variant_is_transformers_llama_default(abstract_7b):
  config, boxed = abstract_7b
  # transformers' LlamaConfig defaults are LLaMA-7B's.
  assert llama_lm.LlamaLMConfig.from_hf_config(transformers.LlamaConfig().to_dict()) == config
  with torch.device("meta"):
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig())
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(boxed)))
  assert count == LLAMA_7B_PARAMS == sum(p.numel() for p in reference.parameters())


def test_7b_matrices_are_split_over_fsdp_and_tensor(abstract_7b):
  _, boxed = abstract_7b
  mesh = sharding.create_mesh((1, -1, 2))
  shardings = sharding.logical_to_sharding(boxed, mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES)
  shapes = traverse_util.flatten_dict(nn.meta.unbox(boxed), sep="/")
  specs = traverse_util.flatten_dict(shardings, sep="/")
  large = {k: v for k, v in shapes.items() if v.ndim >= 2}
  assert len(large) == 2 + 32 * 5  # embed_tokens, lm_head; per layer wqkv, wo, w1, w2, w3.
  for name, leaf in large.items():
    used = {a for a in specs[name].spec if a is not None}
    assert used == {"fsdp", "tensor"}, (name, specs[name].spec)
  biggest = max(large, key=lambda k: large[k].size)
  per_device = np.prod(specs[biggest].shard_shape(large[biggest].shape))
  assert per_device * mesh.size <= large[biggest].size, biggest


def _random_params(config, seed=0):
  """Random values of the right shapes: compiling `init` costs seconds on CPU."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape)).astype(np.float32),
                      nn.meta.unbox(llama_lm.abstract_params(config)))


def test_param_tree_names_and_axes():
  config = llama_lm.LlamaLMConfig.from_variant("tiny")
  boxed = llama_lm.abstract_params(config)
  assert set(boxed) == {"embed_tokens", "layers_0", "layers_1", "norm", "lm_head"}
  assert boxed["embed_tokens"]["embedding"].names == ("vocab", "embed")
  assert boxed["lm_head"]["kernel"].names == ("embed", "vocab")
  # The block stack is the GPT's: same module names and fused GQA layout.
  assert boxed["layers_0"]["attention"]["wqkv"]["kernel"].value.shape == (64, 2, 4, 16)
  assert set(boxed["layers_0"]) == {"attention", "attention_norm", "feed_forward", "ffn_norm"}
  tied = llama_lm.abstract_params(llama_lm.LlamaLMConfig.from_variant("tiny",
                                                                       tie_embeddings=True))
  assert "lm_head" not in tied
  scanned = llama_lm.abstract_params(llama_lm.LlamaLMConfig.from_variant("tiny",
                                                                         scan_layers=True))
  assert set(scanned) == {"embed_tokens", "layers", "norm", "lm_head"}
  assert scanned["layers"]["feed_forward"]["w1"]["kernel"].value.shape == (2, 64, 128)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, ids, attn_mask=None):
  return model.apply({"params": params}, ids, attn_mask=attn_mask)[0]


def test_left_padded_prompts_match_unpadded():
  """A left-padded batch (key mask) gives each sequence's unpadded logits, also via the cache."""
  config = llama_lm.LlamaLMConfig.from_variant("tiny", max_positions=16)
  model = llama_lm.LlamaLM(config)
  params = _random_params(config)
  rng = np.random.default_rng(1)
  lengths, new, pad = (6, 3), 2, 0
  seqs = [rng.integers(1, config.vocab_size, n + new) for n in lengths]
  width = max(lengths) + new
  ids = np.stack([np.concatenate([np.full(width - len(s), pad), s]) for s in seqs])
  mask = np.arange(max(lengths))[None] >= (max(lengths) - np.asarray(lengths))[:, None]

  full = np.asarray(_forward(model, params, jnp.asarray(ids),
                             llama.attention_mask(mask, jnp.arange(width), width)))
  variables = {"params": params}
  embeds = model.apply(variables, jnp.asarray(ids[:, :max(lengths)]), method=model.embed)
  cache = llama_lm.init_cache(config, 2, width)
  prefill = jax.jit(functools.partial(model.apply, method=model.prefill))
  decode = jax.jit(functools.partial(model.apply, method=model.decode))
  logits, cache = prefill(variables, embeds, cache, mask=mask)
  cached = [logits]
  for pos in range(max(lengths), width - 1):
    logits, cache = decode(variables, jnp.asarray(ids[:, pos]), pos, cache, mask=mask)
    cached.append(logits)
  cached = np.stack(cached, 1)
  # Each sequence alone, right-padded (invisible to causal attention), in the same compiled call.
  right = np.stack([np.concatenate([s, np.full(width - len(s), pad)]) for s in seqs])
  causal = jnp.broadcast_to(llama.attention_mask(None, jnp.arange(width), width),
                            (2, width, width))
  unpadded = np.asarray(_forward(model, params, jnp.asarray(right), causal))
  # The same logits three ways: the longest sum is the FFN's 128; 6 dots a layer
  # for 2 layers, the final norm and the head.
  tol = dict(reduction=config.ffn_hidden, depth=2 * 6 + 2)
  for b, seq in enumerate(seqs):
    alone = unpadded[b, :len(seq)]
    start = width - len(seq)
    helpers.assert_allclose_f32(full[b, start:], alone, **tol)
    helpers.assert_allclose_f32(cached[b], alone[lengths[b] - 1:-1], **tol)


def test_input_errors():
  config = llama_lm.LlamaLMConfig.from_variant("tiny", max_positions=4)
  model = llama_lm.LlamaLM(config)
  params = _random_params(config)
  ids = jnp.zeros((1, 3), jnp.int32)
  with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
    model.apply({"params": params}, ids, inputs_embeds=jnp.zeros((1, 3, 64)))
  with pytest.raises(ValueError, match="exceeds max_positions=4"):
    model.apply({"params": params}, jnp.zeros((1, 5), jnp.int32))
  with pytest.raises(ValueError, match="exceeds max_positions=4"):
    llama_lm.init_cache(config, 1, 5)
  with pytest.raises(ValueError, match="unknown LLaMA variant"):
    llama_lm.LlamaLMConfig.from_variant("65B")
