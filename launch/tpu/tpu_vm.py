#!/usr/bin/env python3
r"""Cloud TPU VMs for vwt_jax: create, set up every worker, train, tail logs, delete.

  # a v4-32 slice (4 hosts); --queued asks for it through a queued resource
  python launch/tpu/tpu_vm.py create --project my-proj --zone us-central2-b \
      --name vwt-v4 --accelerator_type v4-32 [--queued] [--spot]
  # on every worker: this checkout's HEAD (git archive) or --git_url, a venv,
  # pip install -e ".[tpu,gcs]"
  python launch/tpu/tpu_vm.py setup --project my-proj --zone us-central2-b --name vwt-v4
  # the trainer on all workers at once (jax.distributed finds the slice itself);
  # everything after -- goes to `python -m vwt_jax.main`
  python launch/tpu/tpu_vm.py run --project my-proj --zone us-central2-b --name vwt-v4 \
      --accelerator_type v4-32 --config configs/llamagen.py:B \
      --workdir gs://my-bucket/runs/gpt_b -- --config.data.dir gs://my-bucket/codes
  python launch/tpu/tpu_vm.py logs --project my-proj --zone us-central2-b --name vwt-v4
  python launch/tpu/tpu_vm.py delete --project my-proj --zone us-central2-b --name vwt-v4

Every command checks its inputs before calling gcloud and takes --dry_run,
which prints the exact commands instead of running them.
"""

import argparse
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# Software images per TPU generation (Cloud TPU docs, "TPU software versions").
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e",
}
REMOTE_DIR = "vwt_jax"         # the code, under the worker's home
REMOTE_VENV = "vwt_venv"
REMOTE_LOG = "vwt_jax_run.log"


def num_hosts(accelerator_type: str) -> int:
  """Hosts of a slice: v2-v5p count TensorCores (8 per host); v5e/v6e count
  chips (one host up to 8 chips, then 4 per host)."""
  generation, size = accelerator_type.rsplit("-", 1)
  size = int(size)
  if generation in ("v5litepod", "v6e"):
    return 1 if size <= 8 else size // 4
  return max(size // 8, 1)


def _check_common(args) -> None:
  common.check(args.project, r"[a-z][a-z0-9-]{4,28}[a-z0-9]", "--project",
               "a Google Cloud project id (6-30 lowercase letters, digits, hyphens)")
  common.check(args.zone, r"[a-z]+-[a-z]+[0-9]+-[a-z]", "--zone",
               "a zone such as us-central2-b or europe-west4-a")
  common.check(args.name, r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", "--name",
               "a TPU name: lowercase letters, digits and hyphens, starting with a letter")


def _check_accelerator(value: str) -> str:
  generations = "|".join(RUNTIME_VERSIONS)
  common.check(value, rf"({generations})-[1-9][0-9]*", "--accelerator_type",
               f"GENERATION-SIZE with GENERATION one of {sorted(RUNTIME_VERSIONS)} "
               "(e.g. v4-8, v5litepod-16, v5p-128)")
  return value


def _where(args) -> list[str]:
  return [f"--zone={args.zone}", f"--project={args.project}"]


def _ssh(args, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--worker={worker}",
          *_where(args), f"--command={command}"]


def create(args, runner: common.Runner) -> None:
  accelerator = _check_accelerator(args.accelerator_type)
  version = args.version or RUNTIME_VERSIONS[accelerator.rsplit("-", 1)[0]]
  spot = ["--spot"] if args.spot else []
  if args.queued:
    runner.run(["gcloud", "compute", "tpus", "queued-resources", "create", args.name,
                f"--node-id={args.name}", *_where(args), f"--accelerator-type={accelerator}",
                f"--runtime-version={version}", *spot])
  else:
    runner.run(["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_where(args),
                f"--accelerator-type={accelerator}", f"--version={version}", *spot])


def setup(args, runner: common.Runner) -> None:
  install = (f"python3 -m venv ~/{REMOTE_VENV} && ~/{REMOTE_VENV}/bin/pip install -q --upgrade pip"
             f" && cd ~/{REMOTE_DIR} && ~/{REMOTE_VENV}/bin/pip install -q -e '.[tpu,gcs]'")
  if args.git_url:
    common.check(args.git_url, r"(https://|git@)\S+", "--git_url", "an https:// or git@ URL")
    fetch = (f"rm -rf ~/{REMOTE_DIR} && git clone -q {shlex.quote(args.git_url)} ~/{REMOTE_DIR}"
             + (f" && git -C ~/{REMOTE_DIR} checkout -q {shlex.quote(args.git_ref)}"
                if args.git_ref else ""))
  else:
    # The committed tree only: no venv, workdirs or data of this checkout.
    archive = os.path.join(args.tmp_dir or tempfile.gettempdir(), "vwt_jax.tar.gz")
    runner.run(["git", "-C", common.REPO, "archive", "--format=tar.gz", f"--output={archive}",
                args.git_ref or "HEAD"])
    runner.run(["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
                f"{args.name}:~/vwt_jax.tar.gz", "--worker=all", *_where(args)])
    fetch = (f"rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR}"
             f" && tar -xzf ~/vwt_jax.tar.gz -C ~/{REMOTE_DIR}")
  runner.run(_ssh(args, f"set -e; {fetch} && {install}"))


def run(args, runner: common.Runner) -> None:
  accelerator = _check_accelerator(args.accelerator_type)
  config = common.check_config(args.config)
  hosts = num_hosts(accelerator)
  if hosts > 1 and not args.workdir.startswith("gs://"):
    raise common.LaunchError(
        f"--workdir={args.workdir!r}: a {accelerator} slice has {hosts} hosts, which must "
        "share one checkpoint directory: expected a gs:// path")
  common.check(args.workdir, r"[^\s'\"]+", "--workdir", "a path without spaces or quotes")
  main = f"~/{REMOTE_VENV}/bin/python -m vwt_jax.main " + shlex.join(
      [f"--config={config}", f"--workdir={args.workdir}", *args.main_args])
  # setsid + nohup: the trainer outlives the ssh session; its output stays on
  # each worker in ~/vwt_jax_run.log (see `logs`).
  runner.run(_ssh(args, f"cd ~/{REMOTE_DIR} && setsid nohup {main} > ~/{REMOTE_LOG} 2>&1 "
                        "< /dev/null &"))


def logs(args, runner: common.Runner) -> None:
  common.check(args.worker, r"[0-9]+", "--worker", "a worker index (0 = the first host)")
  runner.run(_ssh(args, f"tail -n {args.lines} -F ~/{REMOTE_LOG}", worker=args.worker))


def delete(args, runner: common.Runner) -> None:
  if args.queued:
    runner.run(["gcloud", "compute", "tpus", "queued-resources", "delete", args.name,
                *_where(args), "--force", "--quiet"])
  else:
    runner.run(["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_where(args),
                "--quiet"])


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="launch/tpu/tpu_vm.py", description=__doc__.split("\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  commands = {}
  for name, fn, help_ in [
      ("create", create, "create the TPU VM or slice"),
      ("setup", setup, "copy the code to every worker, create a venv, install"),
      ("run", run, "start the trainer on every worker"),
      ("logs", logs, "follow a worker's trainer log"),
      ("delete", delete, "delete the TPU VM or slice (or its queued resource)")]:
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument("--project", required=True, help="Google Cloud project id")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b")
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(fn=fn)
    commands[name] = p
  for name in ("create", "run"):
    commands[name].add_argument("--accelerator_type", required=True,
                                help="e.g. v4-8, v4-32, v5litepod-16, v5p-8")
  for name in ("create", "delete"):
    commands[name].add_argument("--queued", action="store_true",
                                help="through a queued resource (large or spot slices)")
  commands["create"].add_argument("--spot", action="store_true", help="spot capacity")
  commands["create"].add_argument("--version", default="",
                                  help="runtime version (default: the generation's)")
  commands["setup"].add_argument("--git_url", default="",
                                 help="clone this on the workers instead of copying HEAD")
  commands["setup"].add_argument("--git_ref", default="", help="commit/branch to use")
  commands["setup"].add_argument("--tmp_dir", default="", help="where the archive is written")
  commands["run"].add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
  commands["run"].add_argument("--workdir", required=True,
                               help="gs:// run directory (checkpoints, metrics)")
  commands["run"].add_argument("main_args", nargs="*",
                               help="after --: more flags for vwt_jax.main")
  commands["logs"].add_argument("--worker", default="0", help="worker index")
  commands["logs"].add_argument("--lines", type=int, default=100)
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  _check_common(args)
  runner = common.Runner(args.dry_run)
  runner.require("gcloud")
  args.fn(args, runner)
  return 0


if __name__ == "__main__":
  sys.exit(common.main_wrapper(main))
