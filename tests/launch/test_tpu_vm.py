"""launch/tpu/tpu_vm.py: every command's exact gcloud calls (dry run) and its input checks."""

import importlib.util
import io
import os
import shlex
import sys

import pytest

LAUNCH = os.path.join(os.path.dirname(__file__), "..", "..", "launch")


def _load(relative):
  spec = importlib.util.spec_from_file_location(
      os.path.basename(relative)[:-3], os.path.join(LAUNCH, relative))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu_vm = _load("tpu/tpu_vm.py")
common = sys.modules["common"]
WHERE = ["--project", "my-proj", "--zone", "us-central2-b", "--name", "vwt-v4"]
AT = ["--zone=us-central2-b", "--project=my-proj"]


def _argv(command, *rest, **where):
  where = {**dict(zip(WHERE[::2], WHERE[1::2])), **{f"--{k}": v for k, v in where.items()}}
  return [command, *[x for kv in where.items() for x in kv], "--dry_run", *rest]


def _commands(capsys, *argv):
  assert common.main_wrapper(tpu_vm.main, _argv(*argv)) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def test_create_plain_and_queued(capsys):
  assert _commands(capsys, "create", "--accelerator_type", "v4-32") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "vwt-v4", *AT,
       "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]]
  assert _commands(capsys, "create", "--accelerator_type", "v5p-8", "--queued", "--spot") == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "vwt-v4", "--node-id=vwt-v4",
       *AT, "--accelerator-type=v5p-8", "--runtime-version=v2-alpha-tpuv5", "--spot"]]
  assert _commands(capsys, "create", "--accelerator_type", "v5litepod-16")[0][-1] == (
      "--version=v2-alpha-tpuv5-lite")


def test_setup_copies_head_or_clones_then_installs_on_every_worker(capsys, tmp_path):
  archive, scp, ssh = _commands(capsys, "setup", "--tmp_dir", str(tmp_path))
  assert archive == ["git", "-C", common.REPO, "archive", "--format=tar.gz",
                     f"--output={tmp_path}/vwt_jax.tar.gz", "HEAD"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{tmp_path}/vwt_jax.tar.gz",
                 "vwt-v4:~/vwt_jax.tar.gz", "--worker=all", *AT]
  assert ssh[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vwt-v4", "--worker=all", *AT]
  remote = ssh[-1].removeprefix("--command=")
  assert "tar -xzf ~/vwt_jax.tar.gz -C ~/vwt_jax" in remote
  assert remote.endswith("cd ~/vwt_jax && ~/vwt_venv/bin/pip install -q -e '.[tpu,gcs]'")

  (ssh,) = _commands(capsys, "setup", "--git_url", "https://github.com/org/vwt_jax.git",
                     "--git_ref", "v0.1")
  assert ("git clone -q https://github.com/org/vwt_jax.git ~/vwt_jax && "
          "git -C ~/vwt_jax checkout -q v0.1") in ssh[-1]


def test_run_starts_the_trainer_on_all_workers_with_the_extra_flags(capsys):
  (ssh,) = _commands(capsys, "run", "--accelerator_type", "v4-32",
                     "--config", "configs/llamagen.py:B", "--workdir", "gs://bucket/gpt_b",
                     "--", "--config.data.dir", "gs://bucket/codes")
  assert ssh[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vwt-v4", "--worker=all", *AT]
  assert ssh[9] == (
      "--command=cd ~/vwt_jax && setsid nohup ~/vwt_venv/bin/python -m vwt_jax.main "
      "--config=configs/llamagen.py:B --workdir=gs://bucket/gpt_b --config.data.dir "
      "gs://bucket/codes > ~/vwt_jax_run.log 2>&1 < /dev/null &")
  # One host may keep its checkpoints on its own disk.
  (ssh,) = _commands(capsys, "run", "--accelerator_type", "v4-8",
                     "--config", "configs/titok.py:tiny", "--workdir", "/tmp/run")
  assert "--workdir=/tmp/run" in ssh[-1]


def test_logs_and_delete(capsys):
  assert _commands(capsys, "logs", "--worker", "3")[0][6:] == [
      "--worker=3", *AT, "--command=tail -n 100 -F ~/vwt_jax_run.log"]
  assert _commands(capsys, "delete") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", "vwt-v4", *AT, "--quiet"]]
  assert _commands(capsys, "delete", "--queued") == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "vwt-v4", *AT, "--force",
       "--quiet"]]


RUN = ["--config", "configs/llamagen.py:B", "--workdir", "gs://b/r"]


@pytest.mark.parametrize("argv,where,message", [
    (["create", "--accelerator_type", "v4-32"], {"project": "My_Project"}, "--project='My_Project'"),
    (["create", "--accelerator_type", "v4-32"], {"zone": "uscentral"}, "--zone='uscentral'"),
    (["create", "--accelerator_type", "v4-32"], {"name": "VWT"}, "--name='VWT'"),
    (["create", "--accelerator_type", "v9-8"], {}, "--accelerator_type='v9-8'"),
    (["create", "--accelerator_type", "v4"], {}, "--accelerator_type='v4'"),
    (["run", "--accelerator_type", "v4-32", *RUN[:2], "--workdir", "/tmp/run"], {}, "4 hosts"),
    (["run", "--accelerator_type", "v4-8", "--config", "configs/nope.py", *RUN[2:]], {},
     "configs/nope.py does not exist"),
    (["run", "--accelerator_type", "v4-8", "--config", "/abs/titok.py", *RUN[2:]], {},
     "--config='/abs/titok.py'"),
])
def test_bad_input_is_refused_before_any_command(capsys, argv, where, message):
  assert common.main_wrapper(tpu_vm.main, _argv(*argv, **where)) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and message in captured.err


def test_without_gcloud_says_so(capsys, monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))
  assert common.main_wrapper(tpu_vm.main, ["delete", *WHERE]) == 2
  assert "gcloud not found on PATH" in capsys.readouterr().err


def test_help_lists_every_command():
  out = io.StringIO()
  parser = tpu_vm._parser()
  parser.print_help(out)
  for command in ("create", "setup", "run", "logs", "delete"):
    assert command in out.getvalue()
