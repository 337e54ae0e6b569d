"""Orbax checkpointing of the train state together with the data iterator.

Saving both in one step directory is what makes a resumed run see exactly the
batches it would have seen had it never stopped. Directories may be URLs
(`gs://bucket/run/checkpoints`): orbax writes and reads those with
tensorstore's own GCS driver, so they are passed to it unchanged.
"""

import os
from typing import Any

from absl import logging
from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vwt_jax.core import files

STATE = "state"
DATA_ITER = "data_iter"


class Checkpointer:
  """A CheckpointManager holding `state` (a pytree) and `data_iter` (grain)."""

  def __init__(self, directory: str, *, save_interval_steps: int, max_to_keep: int,
               async_save: bool = True):
    self.directory = files.absolute(directory)
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        # Orbax's default also saves the very first step; a fresh run has
        # nothing worth keeping there.
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_interval_steps),
            policies.PreemptionCheckpointingPolicy(),
        ]),
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=(STATE, DATA_ITER), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, data_iter=None, *, force: bool = False) -> bool:
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("Saving checkpoint for step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE]

  def wait(self):
    self._manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def latest_checkpoint_dir(path: str) -> tuple[str, int]:
  """Resolves a run's checkpoint folder (or one step folder) to (step dir, step)."""
  path = path.rstrip("/")
  base = os.path.basename(path)
  if base.isdigit() and epath.Path(path, STATE).is_dir():
    return path, int(base)
  for candidate in (path, os.path.join(path, "checkpoints")):
    if epath.Path(candidate).is_dir():
      steps = [int(d.name) for d in epath.Path(candidate).iterdir()
               if d.name.isdigit() and (d / STATE).is_dir()]
      if steps:
        step = max(steps)
        return os.path.join(candidate, str(step)), step
  raise FileNotFoundError(
      f"no checkpoint found under {path!r}: expected a workdir, its 'checkpoints' "
      "folder, or a step folder containing 'state/'")


def load_state_subtree(path: str, key: str = "params") -> Any:
  """Reads one entry of a saved state (e.g. `params`, `ema_params`) as numpy.

  Used by `init_from` and by inference commands: no model, optimizer or mesh is
  needed to read the arrays, which are then placed by the caller.
  """
  step_dir, _ = latest_checkpoint_dir(path)
  # orbax finds no metadata under a relative path (it returns None).
  step_dir = files.absolute(step_dir)
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(os.path.join(step_dir, STATE))
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
    if key not in tree:
      raise KeyError(f"checkpoint {step_dir} has no {key!r}; it holds {sorted(tree)}")
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                tree[key])
    restored = ckptr.restore(
        os.path.join(step_dir, STATE),
        args=ocp.args.PyTreeRestore(
            item={key: tree[key]},
            restore_args={key: restore_args},
            partial_restore=True))
  return restored[key]
