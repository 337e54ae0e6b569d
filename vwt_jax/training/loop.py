"""The training loop every trainer shares.

A trainer (`trainer.Trainer`) supplies its state layout, the jitted step, its
data and evaluation; this module owns the rest: data iterators, resume,
checkpoints (state + data iterator), preemption, non-finite losses, metrics
and periodic evaluation.
"""

import os
import signal
import time
from typing import Any, Sequence

from absl import logging
from clu import metrics as clu_metrics
import jax
import ml_collections
import numpy as np

from vwt_jax.core import checkpoint as checkpoint_lib
from vwt_jax.core import files
from vwt_jax.core import metrics as metrics_lib
from vwt_jax.core import progress as progress_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.training import trainer as trainer_lib


class NonFiniteLossError(FloatingPointError):
  pass


class _PreemptionFlag:
  """Turns SIGTERM into 'checkpoint at the next step, then exit'."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      # Processes must stop at the same step or the save deadlocks: there the
      # runtime's own SIGTERM notifier and `reached_preemption` (a sync point
      # across processes) decide, and a Python handler would replace it.
      return self

    def handler(signum, frame):
      del signum, frame
      logging.warning("SIGTERM received: saving a checkpoint and exiting")
      self.raised = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a notebook worker)
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _average(history: list[dict[str, Any]]) -> dict[str, float]:
  """Means of the step metrics since the last report, via clu metrics."""
  totals = {}
  for record in history:
    for key, value in record.items():
      metric = clu_metrics.Average.from_model_output(np.asarray(value, np.float32))
      totals[key] = totals[key].merge(metric) if key in totals else metric
  return {k: float(v.compute()) for k, v in totals.items()}


def train_and_evaluate(trainer: trainer_lib.Trainer, workdir: str) -> dict[str, Any]:
  """Trains to `config.total_steps`, resuming from `workdir` if it holds a run.

  Everything runs under the trainer's mesh and logical axis rules, entered
  here once for the whole run.
  """
  with sharding_lib.mesh_rules(trainer.mesh, trainer.rules):
    return _train_and_evaluate(trainer, workdir)


def _train_and_evaluate(trainer: trainer_lib.Trainer, workdir: str) -> dict[str, Any]:
  config = trainer.config
  files.makedirs(workdir)
  writer = metrics_lib.create_writer(workdir)
  writer.write_hparams(config.to_dict())
  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      save_interval_steps=config.checkpoint_every,
      max_to_keep=config.max_checkpoints_to_keep,
      async_save=config.async_checkpointing)

  train_iter = trainer.train_iterator()
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  latest = checkpointer.latest_step()
  if latest is not None:
    logging.info("Resuming from step %d in %s", latest, checkpointer.directory)
    state = checkpointer.restore(latest, trainer.abstract_state(), train_iter)
  else:
    state = trainer.init_state(init_rng)
  start_step = int(jax.device_get(state["step"]))

  train_step, compiled = trainer.compile_train_step(
      state, sharding_lib.host_batch_to_global(_peek(train_iter), trainer.mesh), step_rng)
  progress = progress_lib.Progress(
      config.total_steps, config.global_batch_size, start_step,
      progress_lib.compiled_flops(compiled))

  history, last_metrics, eval_metrics = [], {}, {}
  with _PreemptionFlag() as preemption, profile_window(config, workdir) as profile:
    for step in range(start_step + 1, config.total_steps + 1):
      profile.before_step(step)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding_lib.host_batch_to_global(next(train_iter), trainer.mesh)
        state, metrics = train_step(state, batch, jax.random.fold_in(step_rng, step))
      profile.after_step(step, state)
      history.append(metrics)

      is_last = step == config.total_steps
      preempted = preemption.raised or checkpointer.reached_preemption(step)
      report = step % config.log_every == 0 or is_last or preempted
      will_save = checkpointer.should_save(step) or is_last or preempted
      if report or will_save:
        host = jax.device_get(history)
        history = []
        if any(float(m["nonfinite"]) for m in host):
          bad = next(i for i, m in enumerate(host) if float(m["nonfinite"]))
          checkpointer.wait()
          raise NonFiniteLossError(
              f"non-finite loss or gradient at step {step - len(host) + 1 + bad}; the "
              f"update was skipped and the run stopped. The last good checkpoint is "
              f"step {checkpointer.latest_step()} in {checkpointer.directory}. Lower "
              "optimizer.lr, raise warmup, or use float32 (config.compute_dtype).")
        last_metrics = _average(host)
        if report:
          last_metrics.update(progress.report(step))
          if hasattr(train_iter, "stats"):
            last_metrics.update({f"data/{k}": v for k, v in train_iter.stats().items()})
          writer.write_scalars(step, {f"train/{k}": v for k, v in last_metrics.items()})
      if will_save:
        t0 = time.perf_counter()
        checkpointer.save(step, state, train_iter, force=is_last or preempted)
        progress.pause(time.perf_counter() - t0)
      if config.eval_every and (step % config.eval_every == 0 or is_last):
        t0 = time.perf_counter()
        eval_metrics = trainer.evaluate(state, step, writer)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        progress.pause(time.perf_counter() - t0)
      writer.flush()
      if preempted and not is_last:
        logging.warning("Stopped at step %d after preemption; rerun to resume", step)
        break

  checkpointer.close()
  writer.close()
  return {"state": state, "train": last_metrics, "eval": eval_metrics,
          "step": int(jax.device_get(state["step"]))}


def profile_window(config: ml_collections.ConfigDict, workdir: str) -> progress_lib.ProfileWindow:
  """The run's `jax.profiler` window (`config.profile_*`).

  Each traced process writes to its own `{workdir}/profile/process_{i}`: a
  process sees only its local devices, several processes may share a host
  (whose name the trace file takes), and TensorBoard pointed at
  `{workdir}/profile` lists them as runs. Only process 0 traces unless
  `profile_all_processes`; SPMD processes run the same program.
  """
  index = jax.process_index()
  traced = index == 0 or config.profile_all_processes
  return progress_lib.ProfileWindow(
      os.path.join(workdir, "profile", f"process_{index}"), config.profile_start_step,
      config.profile_num_steps if traced else 0)


def _peek(iterator):
  """The next batch, leaving `iterator` where it was."""
  saved = iterator.get_state()
  batch = next(iterator)
  iterator.set_state(saved)
  return batch


def run(trainer: trainer_lib.Trainer) -> dict[str, Any]:
  """Trains to the end (`train_and_evaluate`) and writes `summary.txt` in the workdir."""
  start = time.time()
  result = train_and_evaluate(trainer, trainer.workdir)
  write_summary(trainer.title(), result, trainer.workdir, start, trainer.summary_notes(result))
  return result


def write_summary(title: str, result: dict[str, Any], workdir: str, start: float,
                  notes: Sequence[str] = ()) -> str:
  """Writes `summary.txt`: what trained how long, `notes`, the last train/eval metrics."""
  lines = [f"{title} trained to step {result['step']} in {time.time() - start:.0f} s on "
           f"{jax.device_count()} {jax.devices()[0].platform} device(s)", *notes]
  lines += [f"train {k}: {v:.6g}" for k, v in sorted(result["train"].items())]
  lines += [f"eval {k}: {v:.6g}" for k, v in sorted(result["eval"].items())]
  summary = "\n".join(lines) + "\n"
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "summary.txt"), summary)
  logging.info("\n%s", summary)
  return summary
