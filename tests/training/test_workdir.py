"""`vwt_jax.main.run` on a run folder: restarts with another model are refused
before anything is written, and one job at a time holds the folder's lock."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import types

import pytest

from helpers import load_config
from vwt_jax import main
from vwt_jax.core import files
from vwt_jax.families import common
from vwt_jax.families import gpt as gpt_family

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ENV = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
# Holds the lock of argv[1] until killed, as a training job does.
HOLD_LOCK = """
import sys, time
from vwt_jax.core import files
with files.lock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(600)
"""


@pytest.fixture
def trained(monkeypatch):
  """Runs of `main.run` for generator configs, as (config, lock file text while training).

  The generator trainer is replaced by one that only records its call: what
  is tested happens before and around training.
  """
  calls = []

  def train(config, workdir):
    with open(os.path.join(workdir, main.LOCK_FILE), encoding="utf-8") as f:
      calls.append((config.to_dict(), f.read()))
    files.makedirs(os.path.join(workdir, "checkpoints", "1"))
    files.write_text(os.path.join(workdir, "checkpoints", "1", "state"), "weights")
    return {"step": 1}

  monkeypatch.setitem(sys.modules, "recording_trainer", types.SimpleNamespace(train=train))
  monkeypatch.setattr(gpt_family, "TRAINER", "recording_trainer")
  return calls


def _tiny(**changes):
  config = load_config("llamagen.py", "tiny")
  for key, value in changes.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def _snapshot(folder):
  """Every file under `folder` with its bytes and modification time."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
  return out


def test_a_restart_with_another_model_is_refused_and_leaves_the_folder_untouched(
    tmp_path, trained):
  workdir = str(tmp_path / "run")
  main.run(_tiny(), workdir)
  before = _snapshot(workdir)
  assert sorted(before) == ["checkpoints/1/state", "config.json"]
  dim = _tiny().model.dim
  changed = _tiny(**{"model.dim": 2 * dim, "tokenizer.checkpoint": "vq.pt",
                     "ema_decay": 0.999, "total_steps": 2400})
  with pytest.raises(main.ConfigChangedError) as err:
    main.run(changed, workdir)
  assert str(err.value) == (
      f"{workdir}/config.json: the run in this folder cannot be resumed with this config, "
      "which changes what its checkpoints hold:\n"
      "  ema_decay: 0.0 -> 0.999\n"
      f"  model.dim: {dim} -> {2 * dim}\n"
      "  tokenizer.checkpoint: '' -> 'vq.pt'\n"
      "To resume the run, give it its own config (drop these overrides); to train this "
      f"config, use a new --workdir (add --config.init_from={workdir} to start from this "
      "run's weights where their shapes allow).")
  assert _snapshot(workdir) == before
  assert len(trained) == 1


def test_a_restart_with_other_loop_settings_resumes_and_saves_them(tmp_path, trained, caplog):
  workdir = str(tmp_path / "run")
  main.run(_tiny(), workdir)
  changed = _tiny(**{"total_steps": 2400, "optimizer.lr": 3e-4, "global_batch_size": 64,
                     "eval_every": 800, "log_every": 50})
  main.run(changed, workdir)
  assert trained[-1][0] == changed.to_dict()
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(changed.to_dict()))
  before = _tiny()
  assert f"total_steps: {before.total_steps} -> 2400" in caplog.text
  assert f"optimizer.lr: {before.optimizer.lr} -> 0.0003" in caplog.text
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]  # no lock left


def test_the_command_line_refuses_another_model_with_one_message(tmp_path):
  workdir = tmp_path / "run"
  common.save_config(_tiny(), str(workdir))
  saved = (workdir / "config.json").read_bytes()
  result = subprocess.run(
      [sys.executable, "-m", "vwt_jax.main", "--config", "configs/llamagen.py:tiny",
       "--workdir", str(workdir), f"--config.model.dim={2 * _tiny().model.dim}"],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  dim = _tiny().model.dim
  assert result.stderr.rstrip().endswith(
      f"  model.dim: {dim} -> {2 * dim}\nTo resume the run, give it its own config (drop these "
      "overrides); to train this config, use a new --workdir (add --config.init_from="
      f"{workdir} to start from this run's weights where their shapes allow).")
  assert os.listdir(workdir) == ["config.json"]
  assert (workdir / "config.json").read_bytes() == saved


def test_a_second_job_fails_at_once_and_a_dead_jobs_lock_is_taken_over(
    tmp_path, trained, monkeypatch, caplog):
  workdir = str(tmp_path / "run")
  lock = os.path.join(workdir, main.LOCK_FILE)
  os.makedirs(workdir)
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, lock], env=ENV,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "locked\n"
    host = socket.gethostname()
    with pytest.raises(files.LockedError) as err:
      main.run(_tiny(), workdir)
    assert str(err.value) == (
        f"{workdir} is in use: host {host}, pid {holder.pid} holds its lock {lock}; wait "
        "for that job to end, stop it, or use another folder")
    assert not trained and os.listdir(workdir) == ["lock"]  # config.json not written

    # The other processes of a multi-process job share the folder: only
    # process 0 takes the lock.
    with monkeypatch.context() as m:
      m.setattr(main.jax, "process_index", lambda: 1)
      main.run(_tiny(), workdir)
    assert trained[-1][1] == f"{host} {holder.pid}\n"
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()

  # Killed, the holder left its lock file; the kernel dropped its lock.
  assert os.path.exists(lock)
  main.run(_tiny(), workdir)
  assert trained[-1][1] == f"{host} {os.getpid()}\n"
  assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
      f"{lock}: took over the stale lock of host {host}, pid {holder.pid} (that process "
      "is gone)"]
  assert not os.path.exists(lock)


def test_the_lock_is_released_when_training_fails(tmp_path, monkeypatch):
  def train(config, workdir):
    del config, workdir
    raise RuntimeError("out of memory")

  monkeypatch.setitem(sys.modules, "failing_trainer", types.SimpleNamespace(train=train))
  monkeypatch.setattr(gpt_family, "TRAINER", "failing_trainer")
  workdir = str(tmp_path / "run")
  for _ in range(2):  # the second start finds the folder free
    with pytest.raises(RuntimeError, match="out of memory"):
      main.run(_tiny(), workdir)
    assert os.listdir(workdir) == ["config.json"]


def test_a_bucket_folder_is_not_locked_and_says_so(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  with files.lock("gs://bucket/run/lock"):
    pass
  assert ("gs://bucket/run/lock: no lock on an object store; make sure no other job uses "
          "this folder") in caplog.text
