"""Device mesh, logical-axis rules and host-batch -> global-array plumbing.

Models name every parameter axis logically ('embed', 'mlp', ...); the config's
`logical_axis_rules` decide which mesh axis each name lands on, so one model
definition serves data parallelism, FSDP and tensor parallelism alike.
"""

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Batch dimension of activations/inputs is split over every data-like axis.
BATCH_AXES = ("data", "fsdp")

DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("token", None),
    ("length", None),
    # Activations at transformer block boundaries (`layers.constrain_activations`):
    # rows over the data axes, length and width whole on each device.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces the single -1 in `mesh_shape` so the product is `num_devices`."""
  shape = [int(s) for s in mesh_shape]
  if len(shape) != len(MESH_AXES):
    raise ValueError(
        f"config.mesh_shape={tuple(mesh_shape)} must have {len(MESH_AXES)} entries "
        f"for the axes {MESH_AXES}")
  wild = [i for i, s in enumerate(shape) if s == -1]
  if len(wild) > 1:
    raise ValueError(f"config.mesh_shape={tuple(mesh_shape)} may contain at most one -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh_shape={tuple(mesh_shape)} has a non-positive size")
  known = int(np.prod([s for s in shape if s != -1]))
  if wild:
    if num_devices % known:
      raise ValueError(
          f"config.mesh_shape={tuple(mesh_shape)}: {num_devices} devices are not "
          f"divisible by {known}")
    shape[wild[0]] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
        f"config.mesh_shape={tuple(mesh_shape)} needs {int(np.prod(shape))} devices, "
        f"but {num_devices} are available")
  return tuple(shape)


def create_mesh(mesh_shape: Sequence[int], devices=None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  # create_device_mesh orders devices so the innermost axes use the fastest links.
  device_array = mesh_utils.create_device_mesh(
      shape, devices=devices, allow_split_physical_axes=True)
  return Mesh(device_array, MESH_AXES)


def normalize_rules(rules) -> tuple:
  """Rules as nested tuples, also when they come back from a JSON config."""
  def axis(a):
    return tuple(a) if isinstance(a, (list, tuple)) else a
  return tuple((str(name), axis(a)) for name, a in rules)


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, rules):
  """The mesh and logical axis rules a program traces its jitted functions under.

  Entered once per program (the training loop, an inference command), so that
  the models' logical activation constraints resolve onto `mesh`.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(normalize_rules(rules)):
    yield


def logical_to_sharding(tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a pytree of (possibly boxed) abstract parameters.

  A mesh axis that does not divide its dimension is dropped there, so that
  dimension stays whole on it rather than stopping the program: a vocabulary
  of 32001 rows (LLaMA's 32000 and an added '[PAD]') cannot split two ways.
  """
  specs = nn.get_partition_spec(tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, normalize_rules(rules))

  def fit(shape, sharding):
    spec = list(sharding.spec)
    for dim, axes in enumerate(spec):
      names = axes if isinstance(axes, tuple) else (axes,)
      if axes is not None and shape[dim] % np.prod([sharding.mesh.shape[n] for n in names]):
        spec[dim] = None
    return NamedSharding(sharding.mesh, P(*spec))

  # Shapes read from the boxes, not `nn.meta.unbox`: under a mesh context that
  # would apply the logical constraints to the abstract values.
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  shapes = [getattr(x, "value", x).shape for x in leaves]
  flat, treedef = jax.tree.flatten(shardings)
  return treedef.unflatten([fit(shape, s) for shape, s in zip(shapes, flat, strict=True)])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def host_batch_to_global(batch: Any, mesh: Mesh) -> Any:
  """Stitches each process's slice of the batch into one global jax.Array."""
  sharding = batch_sharding(mesh)

  def to_global(x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jax.make_array_from_process_local_data(replicated(mesh), x)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(to_global, batch)

