"""Mesh construction and logical-axis sharding on 8 fake CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import helpers
from vwt_jax.core import sharding
from vwt_jax.models import gpt


def test_resolve_mesh_shape_fills_the_wildcard():
  assert sharding.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize("shape,message", [
    ((3, -1, 1), "not divisible"),
    ((-1, -1, 1), "at most one -1"),
    ((2, 2, 1), "needs 4 devices"),
    ((8, 1), "3 entries"),
])
def test_resolve_mesh_shape_rejects_bad_shapes(shape, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_mesh_shape(shape, 8)


@helpers.needs_devices(8)
def test_mesh_axes_and_size():
  mesh = sharding.create_mesh((2, 2, 2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


class _Mlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.normal()
    h = nn.Dense(16, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")))(x)
    return nn.Dense(8, kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")))(h)


@helpers.needs_devices(8)
def test_parameters_shard_as_the_rules_say():
  mesh = sharding.create_mesh((2, 2, 2))
  boxed = jax.eval_shape(_Mlp().init, jax.random.key(0), np.zeros((1, 8)))["params"]
  shardings = sharding.logical_to_sharding(boxed, mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES)
  assert shardings["Dense_0"]["kernel"].spec == P("fsdp", "tensor")
  assert shardings["Dense_1"]["kernel"].spec == P("tensor", "fsdp")
  # Unannotated biases are replicated.
  assert shardings["Dense_0"]["bias"].spec == P()


@helpers.needs_devices(8)
def test_a_dimension_an_axis_does_not_divide_stays_whole_on_it():
  mesh = sharding.create_mesh((2, 2, 2))
  module = nn.Dense(3, kernel_init=nn.with_logical_partitioning(nn.initializers.normal(),
                                                                ("embed", "mlp")))
  boxed = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 8)))["params"]
  # Under a program's mesh too, where unboxing would constrain the abstract values.
  with sharding.mesh_rules(mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES):
    shardings = sharding.logical_to_sharding(boxed, mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES)
  # 3 output features cannot split over tensor = 2; 8 inputs still split over fsdp.
  assert shardings["kernel"].spec == P("fsdp", None)


@helpers.needs_devices(8)
def test_host_batch_becomes_global_array_split_over_data_axes():
  mesh = sharding.create_mesh((2, 2, 2))
  batch = {"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3)}
  out = sharding.host_batch_to_global(batch, mesh)["image"]
  assert out.shape == (8, 3)
  assert out.sharding.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(np.asarray(out), batch["image"])
  # 4 data-parallel shards of 2 rows, each replicated over 'tensor'.
  assert {s.data.shape for s in out.addressable_shards} == {(2, 3)}


def test_block_outputs_are_constrained_only_under_a_program_mesh():
  """Each transformer block states its output layout once a mesh and rules are entered."""
  cfg = gpt.GPTConfig(dim=32, n_layer=3, n_head=4, vocab_size=16, block_size=9, num_classes=4)
  model = gpt.GPT(cfg)
  idx = jnp.zeros((4, 8), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), gpt.dummy_condition(cfg, 4), idx))
  forward = lambda p: model.apply(p, gpt.dummy_condition(cfg, 4), idx)[0]
  count = lambda text: text.count("sharding_constraint")
  assert count(jax.jit(forward).lower(params).as_text()) == 0
  mesh = sharding.create_mesh((-1, 1, 1))
  with sharding.mesh_rules(mesh, sharding.DEFAULT_LOGICAL_AXIS_RULES):
    text = jax.jit(forward).lower(params).as_text()
  assert count(text) == cfg.n_layer
