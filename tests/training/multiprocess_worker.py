"""One process of the multi-process test: `python multiprocess_worker.py ID N PORT DATA WORKDIR STEPS`."""

import os
import sys

process_id, num_processes, port, data_dir, workdir, steps = sys.argv[1:]
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["VWT_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
os.environ["VWT_NUM_PROCESSES"] = num_processes
os.environ["VWT_PROCESS_ID"] = process_id
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from helpers import tiny_titok_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from vwt_jax import main as main_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vwt_jax.core import distributed  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_threefry_partitionable", False)
distributed.initialize()
assert jax.process_count() == int(num_processes) and jax.device_count() == 4
config = tiny_titok_config(data_dir, total_steps=int(steps), log_every=1, checkpoint_every=2,
                           eval_every=int(steps), mesh_shape=(2, 2, 1))
result = main_lib.run(config, workdir)
print(f"RESULT process={process_id} step={result['step']} loss={result['train']['loss']:.8f}")
