"""launch/gpu/launch_node.py: process ids and environments, input checks, failure handling."""

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

LAUNCH = os.path.join(os.path.dirname(__file__), "..", "..", "launch")
spec = importlib.util.spec_from_file_location("launch_node",
                                              os.path.join(LAUNCH, "gpu", "launch_node.py"))
launch_node = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch_node)
common = sys.modules["common"]
MAIN = ["--", "--config", "configs/llamagen.py:XL", "--workdir", "/runs/xl"]


def _dry(capsys, *argv):
  assert common.main_wrapper(launch_node.main, [*argv, "--python", "python3", "--dry_run",
                                                *MAIN]) == 0
  processes = []
  for line in capsys.readouterr().out.splitlines():
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if "=" in w and w.split("=")[0].isupper())
    processes.append((env, [w for w in words if w.split("=")[0] not in env]))
  return processes


def test_one_process_per_node_takes_every_gpu(capsys, monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  ((env, command),) = _dry(capsys)
  assert command == ["python3", "-m", "vwt_jax.main", *MAIN[1:]]
  # A single process needs no coordinator.
  assert set(env) == {"XLA_FLAGS"}
  assert env["XLA_FLAGS"].split() == list(launch_node.GPU_XLA_FLAGS)


def test_ids_of_the_processes_of_node_one_of_two(capsys, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/dump")
  processes = _dry(capsys, "--num_nodes", "2", "--node_rank", "1", "--processes_per_node", "4",
                   "--coordinator", "node0:1234")
  assert [env["VWT_PROCESS_ID"] for env, _ in processes] == ["4", "5", "6", "7"]
  assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in processes] == ["0", "1", "2", "3"]
  for env, _ in processes:
    assert env["VWT_NUM_PROCESSES"] == "8" and env["VWT_COORDINATOR_ADDRESS"] == "node0:1234"
    assert env["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/dump --xla_gpu_")


def test_cpu_platform_runs_the_same_path_without_gpu_settings(capsys):
  processes = _dry(capsys, "--platform", "cpu", "--processes_per_node", "2")
  assert [env for env, _ in processes] == [
      {"JAX_PLATFORMS": "cpu", "VWT_COORDINATOR_ADDRESS": "127.0.0.1:12355",
       "VWT_NUM_PROCESSES": "2", "VWT_PROCESS_ID": str(i)} for i in range(2)]


@pytest.mark.parametrize("argv,message", [
    (["--num_nodes", "2"], "--coordinator is required"),
    (["--num_nodes", "2", "--node_rank", "2", "--coordinator", "h:1"], "--node_rank=2"),
    (["--processes_per_node", "0"], "expected positive counts"),
    (["--coordinator", "node0"], "--coordinator='node0': expected HOST:PORT"),
])
def test_bad_input_is_refused(capsys, argv, message):
  assert common.main_wrapper(launch_node.main, [*argv, "--dry_run", *MAIN]) == 2
  assert message in capsys.readouterr().err


def test_trainer_flags_need_a_config(capsys):
  assert common.main_wrapper(launch_node.main, ["--dry_run", "--", "--workdir", "/r"]) == 2
  assert "no --config" in capsys.readouterr().err


def test_gpu_xla_flags_are_known_to_this_jaxlib():
  # XLA aborts on an unknown flag; the CPU build parses the GPU flags too.
  env = {**os.environ, "XLA_FLAGS": " ".join(launch_node.GPU_XLA_FLAGS), "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_a_failing_process_stops_the_others_and_sets_the_status(tmp_path):
  # A stand-in interpreter: process 1 fails at once, process 0 would run for minutes.
  fake = tmp_path / "fake_python"
  fake.write_text("#!/bin/sh\n"
                  "if [ \"$VWT_PROCESS_ID\" = 1 ]; then sleep 1; exit 3; fi\n"
                  f"echo $$ > {tmp_path}/survivor.pid; exec sleep 300\n")
  fake.chmod(0o755)
  start = time.time()
  status = common.main_wrapper(launch_node.main, [
      "--platform", "cpu", "--processes_per_node", "2", "--python", str(fake), *MAIN])
  assert status == 3 and time.time() - start < 60
  pid = int((tmp_path / "survivor.pid").read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)


def test_sigterm_to_the_launcher_reaches_every_process(tmp_path):
  # Preemption: each process must get the signal to save its checkpoint.
  fake = tmp_path / "fake_python"
  fake.write_text("#!/bin/sh\n"
                  f"trap 'echo saved > {tmp_path}/$VWT_PROCESS_ID.done; exit 0' TERM\n"
                  f"touch {tmp_path}/$VWT_PROCESS_ID.started\n"
                  "while true; do sleep 0.1; done\n")
  fake.chmod(0o755)
  launcher = subprocess.Popen(
      [sys.executable, os.path.join(LAUNCH, "gpu", "launch_node.py"), "--platform", "cpu",
       "--processes_per_node", "2", "--python", str(fake), *MAIN],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60
  while not all((tmp_path / f"{i}.started").exists() for i in range(2)):
    assert time.time() < deadline and launcher.poll() is None
    time.sleep(0.05)
  launcher.send_signal(signal.SIGTERM)
  output = launcher.communicate(timeout=60)[0]
  assert launcher.returncode == 128 + signal.SIGTERM, output
  assert [(tmp_path / f"{i}.done").read_text() for i in range(2)] == ["saved\n"] * 2
  assert "passing SIGTERM to the processes" in output
