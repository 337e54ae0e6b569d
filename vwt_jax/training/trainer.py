"""The trainer every family shares: train state, its shardings and the jitted step.

A family's trainer subclasses `Trainer` and supplies what is its own: the
boxed parameters (`init_params`), the loss, optional extra state (a
discriminator, code-usage statistics) with its update, frozen networks that
enter the step as arguments, weights to start from, data and evaluation.

The whole train state is built once under `jax.eval_shape` with its
parameters and optimizer moments still carrying their logical axis names;
`sharding.logical_to_sharding` and the config's rules turn that one abstract
state into the `NamedSharding`s of every entry (moments shard like their
parameters, counters and statistics are replicated, a dimension its mesh axis
does not divide stays whole on that axis). `train_step` is one
pure, module-level function, jitted with those shardings and the state
donated.
"""

import abc
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vwt_jax.core import sharding as sharding_lib
from vwt_jax.training import optimizer as optimizer_lib
from vwt_jax.training import train_state


def train_step(state: dict[str, Any], batch: Any, rng: jax.Array, frozen: Any, *,
               trainer: "Trainer") -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimizer update: accumulate -> update -> EMA -> extra state -> finite check.

  A step whose loss or gradients (or whose extra update) are not finite
  leaves the state as it was but for the step counter, and reports
  `nonfinite` = 1 in its metrics.
  """
  step = state["step"]
  context = trainer.context(state, batch)

  def loss_and_grad(params, micro_batch, r):
    return jax.value_and_grad(trainer.loss, has_aux=True)(params, micro_batch, r, context,
                                                           frozen)

  (loss, (metrics, extras)), grads = train_state.accumulate_gradients(
      loss_and_grad, state["params"], batch, rng, trainer.config.grad_accum_steps)
  updates, opt_state = trainer.tx.update(grads, state["opt_state"], state["params"])
  params = jax.tree.map(jnp.add, state["params"], updates)
  new = dict(state, step=step + 1, params=params, opt_state=opt_state)
  if "ema_params" in state:
    decay = optimizer_lib.ema_decay(step, trainer.config.ema_decay)
    new["ema_params"] = optimizer_lib.update_ema(state["ema_params"], params, decay)
  ok = jnp.isfinite(loss) & train_state.all_finite(grads)
  extra_metrics, extra_ok = trainer.update_extra(state, new, batch, rng, extras, frozen)
  metrics.update(extra_metrics)
  ok &= extra_ok
  new = train_state.keep_if(ok, new, dict(state, step=step + 1))
  metrics.update(grad_norm=optax.tree.norm(grads), lr=trainer.schedule(step),
                 nonfinite=jnp.logical_not(ok).astype(jnp.int32))
  return new, metrics


class Trainer(abc.ABC):
  """State, shardings and the compiled step of one run; subclasses add the family's parts.

  Subclasses call `setup_state(frozen_patterns)` at the end of their
  `__init__`, once everything `init_params`, `init_extra` and `loss` read
  exists.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    self.config = config
    self.workdir = workdir
    self.mesh = mesh or sharding_lib.create_mesh(config.mesh_shape)
    self.rules = sharding_lib.normalize_rules(config.logical_axis_rules)
    self.data_parallel = sharding_lib.data_parallel_size(self.mesh)
    if config.global_batch_size % self.data_parallel:
      raise ValueError(f"global_batch_size={config.global_batch_size} must divide evenly over "
                       f"the {self.data_parallel} data-parallel devices")
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self.replicated = sharding_lib.replicated(self.mesh)
    # Networks the step reads but never trains (a teacher, a perceptual
    # loss): arguments of the compiled step, not constants baked into it.
    self.frozen = {}

  # -- what a family supplies ---------------------------------------------------

  @abc.abstractmethod
  def init_params(self, rng) -> Any:
    """The model's boxed (logically named) parameters."""

  def init_extra(self, rng) -> dict[str, Any]:
    """Extra state entries (boxed where they have logical names)."""
    del rng
    return {}

  def context(self, state, batch) -> dict[str, Any]:
    """What the loss reads besides params and batch, computed once per step."""
    del state, batch
    return {}

  @abc.abstractmethod
  def loss(self, params, batch, rng, context, frozen):
    """(loss, (metrics, extras)) of one (micro-)batch."""

  def update_extra(self, state, new, batch, rng, extras, frozen):
    """Updates extra state entries in `new`; returns (metrics, all finite)."""
    del state, new, batch, rng, extras, frozen
    return {}, jnp.array(True)

  def pretrained_params(self) -> Optional[Any]:
    """Host parameters (all or some) the run starts from, or None."""
    return None

  @abc.abstractmethod
  def train_iterator(self):
    """A checkpointable grain iterator of host-local batches."""

  @abc.abstractmethod
  def evaluate(self, state, step: int, writer) -> dict[str, float]:
    """Periodic evaluation; may write pictures into the workdir."""

  @abc.abstractmethod
  def title(self) -> str:
    """What trains, for the run summary."""

  def summary_notes(self, result: dict[str, Any]) -> list[str]:
    """Lines the run summary adds about `result` (what `loop.train_and_evaluate` returns)."""
    del result
    return []

  # -- the state and the step ---------------------------------------------------

  def setup_state(self, frozen_patterns=()) -> None:
    """Builds the optimizer, the state shardings and the jitted step."""
    abstract_params = nn.meta.unbox(jax.eval_shape(self.init_params, jax.random.key(0)))
    self.tx, self.schedule = optimizer_lib.make_optimizer(
        self.config.optimizer, abstract_params, self.config.total_steps, frozen_patterns)
    boxed = jax.eval_shape(self._boxed_state, jax.random.key(0))
    self.state_shardings = sharding_lib.logical_to_sharding(boxed, self.mesh, self.rules)
    self.param_shardings = self.state_shardings["params"]
    self._abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.meta.unbox(boxed), self.state_shardings)
    repl = self.replicated
    self._train_step = jax.jit(
        functools.partial(train_step, trainer=self),
        in_shardings=(self.state_shardings, self.batch_sharding, repl, repl),
        out_shardings=(self.state_shardings, repl), donate_argnums=(0,))

  def _boxed_state(self, rng) -> dict[str, Any]:
    params = self.init_params(rng)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": self.tx.init(params)}
    if self.config.ema_decay:
      state["ema_params"] = params
    state.update(self.init_extra(rng))
    return state

  def abstract_state(self) -> Any:
    """ShapeDtypeStructs of the state, each carrying its sharding (for restore)."""
    return self._abstract_state

  def init_state(self, rng) -> dict[str, Any]:
    """A fresh state, each device holding only its shards, then `pretrained_params`."""
    state = jax.jit(lambda r: nn.meta.unbox(self._boxed_state(r)),
                    out_shardings=self.state_shardings)(rng)
    loaded = self.pretrained_params()
    if loaded:
      params = train_state.merge_params(state["params"], loaded, self.param_shardings,
                                        self.config.init_from or "pretrained weights")
      state = train_state.restart_from(state, params, self.tx, self.state_shardings)
    return state

  def train_step(self, state, batch, rng):
    return self._train_step(state, batch, rng, self.frozen)

  def compile_train_step(self, state, batch, rng):
    """AOT-compiles the step; returns (step function, compiled for cost analysis)."""
    compiled = self._train_step.lower(state, batch, rng, self.frozen).compile()
    return (lambda s, b, r: compiled(s, b, r, self.frozen)), compiled

  def eval_sums(self, eval_step, params, batches, num_batches: int
                ) -> tuple[dict[str, float], int]:
    """Sums of `eval_step(params, batch)`'s metrics over the first `num_batches`
    host batches (0 = all), each made one global batch; and how many were read."""
    totals, count = {}, 0
    for batch in batches:
      if num_batches and count >= num_batches:
        break
      batch = sharding_lib.host_batch_to_global(batch, self.mesh)
      for k, v in jax.device_get(eval_step(params, batch)).items():
        totals[k] = totals.get(k, 0.0) + float(v)
      count += 1
    return totals, count

  def eval_params(self, state):
    return state["ema_params"] if "ema_params" in state else state["params"]
