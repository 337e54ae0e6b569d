"""Multi-process start-up: one JAX process per host (or per GPU)."""

import os

from absl import logging
import jax

# Set by our launchers (and usable by hand) for explicit multi-process runs.
COORDINATOR = "VWT_COORDINATOR_ADDRESS"
NUM_PROCESSES = "VWT_NUM_PROCESSES"
PROCESS_ID = "VWT_PROCESS_ID"


def initialize() -> None:
  """Starts jax.distributed when this is one process of a multi-process job.

  Explicit settings (VWT_* variables) win; otherwise JAX's own cluster
  detection covers TPU pods and SLURM. A single process needs neither.
  """
  if os.environ.get(COORDINATOR):
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
      # CPU processes exchange collectives through gloo.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[COORDINATOR],
        num_processes=int(os.environ[NUM_PROCESSES]),
        process_id=int(os.environ[PROCESS_ID]))
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                      "MEGASCALE_COORDINATOR_ADDRESS")):
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # a single-host TPU VM or one SLURM task
      logging.info("jax.distributed not started: %s", e)
  logging.info("process %d/%d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].device_kind)
