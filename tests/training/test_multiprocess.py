"""Four JAX processes started by launch/gpu/launch_node.py train one sharded
GPT; one is killed mid-run, the job restarts and resumes where it stopped."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from helpers import save_random_titok_run, tiny_titok_config, write_class_codes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "launch", "gpu", "launch_node.py")
TOTAL_STEPS, CHECKPOINT_EVERY, KILL_AFTER = 40, 10, 12


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(code_dir, workdir, log):
  # Each process sees one CPU device (no fake-device flag from conftest) and
  # compiles on its own: a shared compilation cache lets one process race
  # ahead of the others past gloo's 30 s rendezvous timeout.
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS",) and not k.startswith("JAX_COMPILATION_CACHE")}
  overrides = {
      "data.dir": code_dir, "data.num_workers": 0, "model.n_layer": 1, "model.n_head": 2,
      "model.dim": 32, "total_steps": TOTAL_STEPS, "global_batch_size": 8, "log_every": 1,
      "checkpoint_every": CHECKPOINT_EVERY, "eval_every": 0, "mesh_shape": "(2,2,1)"}
  argv = [sys.executable, LAUNCHER, "--platform", "cpu", "--processes_per_node", "4",
          "--coordinator", f"127.0.0.1:{_free_port()}", "--grace_s", "5", "--",
          "--config", os.path.join(ROOT, "configs", "llamagen.py:tiny"), "--workdir", workdir,
          *[f"--config.{k}={v}" for k, v in overrides.items()]]
  return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _losses(workdir):
  """[(step, loss)] in the order process 0 logged them (runs append)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]


def test_killed_process_stops_the_job_which_resumes_with_identical_losses(shapes_dir,
                                                                          tmp_path):
  titok_run, config = str(tmp_path / "titok"), tiny_titok_config(shapes_dir)
  save_random_titok_run(config, titok_run)
  code_dir = write_class_codes(str(tmp_path / "codes"), titok_run, config, num_classes=4,
                               seq_len=8, vocab=64)
  workdir, log_path = str(tmp_path / "run"), tmp_path / "launch.log"

  with open(log_path, "w", encoding="utf-8") as log:
    launcher = _start(code_dir, workdir, log)
    deadline = time.monotonic() + 400
    while not any(step >= KILL_AFTER for step, _ in _losses(workdir)):
      assert launcher.poll() is None, log_path.read_text()[-4000:]
      assert time.monotonic() < deadline, log_path.read_text()[-4000:]
      time.sleep(0.05)
    pids = dict(re.findall(r"\[launch_node\] process (\d): pid (\d+)", log_path.read_text()))
    os.kill(int(pids["1"]), signal.SIGKILL)
    # The launcher stops the other three and reports the killed one.
    assert launcher.wait(timeout=120) == 128 + signal.SIGKILL
  before = _losses(workdir)
  for pid in pids.values():
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(
        f"/proc/{pid}/status", encoding="utf-8").read()
  assert before[-1][0] < TOTAL_STEPS
  checkpoints = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                       if d.isdigit())
  assert checkpoints and checkpoints[-1] % CHECKPOINT_EVERY == 0
  # Every process holds its own grain iterator state in the checkpoint.
  data_state = os.path.join(workdir, "checkpoints", str(checkpoints[-1]), "data_iter")
  assert {f"process_{i}-of-4.json" for i in range(4)} <= set(os.listdir(data_state))

  with open(log_path, "a", encoding="utf-8") as log:
    launcher = _start(code_dir, workdir, log)
    assert launcher.wait(timeout=400) == 0, log_path.read_text()[-4000:]
  after = _losses(workdir)[len(before):]
  resumed_from = checkpoints[-1]
  assert [s for s, _ in after] == list(range(resumed_from + 1, TOTAL_STEPS + 1))
  # The steps run twice (after the checkpoint, before the kill) give the same
  # losses: same parameters, optimizer state, data order and step keys.
  replayed = {s: loss for s, loss in before if s > resumed_from}
  assert replayed, (before, resumed_from)
  assert {s: loss for s, loss in after if s in replayed} == replayed
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(TOTAL_STEPS)))
