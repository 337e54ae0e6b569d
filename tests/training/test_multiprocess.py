"""Two JAX processes on localhost train, checkpoint and resume one sharded run."""

import os
import re
import socket
import subprocess
import sys

import numpy as np

from helpers import tiny_titok_config
from vwt_jax.data import pipeline

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(data_dir, workdir, steps):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.dirname(WORKER)))] + sys.path)
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(i), "2", str(port), str(data_dir), str(workdir), str(steps)],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return [re.search(r"RESULT process=(\d) step=(\d+) loss=(\S+)", out).groups()
          for out in outputs]


def test_two_processes_train_checkpoint_and_resume(shapes_dir, tmp_path):
  # Prepared once up front: preparation is not safe against concurrent writers.
  config = tiny_titok_config(shapes_dir)
  pipeline.open_source(config.data, "train")

  first = _launch(shapes_dir, tmp_path, 2)
  assert [int(step) for _, step, _ in first] == [2, 2]
  # Every process holds its own grain iterator state in the checkpoint.
  data_state = tmp_path / "checkpoints" / "2" / "data_iter"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_state))

  resumed = _launch(shapes_dir, tmp_path, 4)
  assert [int(step) for _, step, _ in resumed] == [4, 4]
  # Both processes report the same global loss.
  np.testing.assert_allclose(float(resumed[0][2]), float(resumed[1][2]), rtol=1e-6)
