#!/usr/bin/env python3
r"""Starts vwt_jax trainers on one node of a GPU job (JAX multi-controller).

  # one node, all its GPUs in one process (the simplest and usually fastest)
  python launch/gpu/launch_node.py -- --config configs/llamagen.py:XL --workdir /runs/xl
  # one process per GPU on one node
  python launch/gpu/launch_node.py --processes_per_node 8 -- --config ... --workdir ...
  # two nodes, one process each: run on node 0 and node 1 with the same coordinator
  python launch/gpu/launch_node.py --num_nodes 2 --node_rank 0 --coordinator 10.0.0.1:1234 \
      -- --config configs/llamagen.py:XL --workdir /shared/runs/xl
  # SLURM: see slurm_train.sbatch (jax.distributed reads SLURM's variables)

Process k of node r gets id r * processes_per_node + k of num_nodes *
processes_per_node; the coordinator (process 0's host) and these numbers reach
`jax.distributed.initialize` through VWT_COORDINATOR_ADDRESS, VWT_NUM_PROCESSES
and VWT_PROCESS_ID (`vwt_jax/core/distributed.py`). With several processes on
one node each sees one GPU (CUDA_VISIBLE_DEVICES). If a process fails, the
node's others are stopped and the launcher exits with its status; restart the
job and the trainer resumes from its last checkpoint.

XLA flags set for GPUs (added to any XLA_FLAGS already set; --no_xla_flags
leaves XLA_FLAGS alone): the latency-hiding scheduler overlaps collectives
with compute, larger combine thresholds batch FSDP's all-gathers and
reduce-scatters, and pipelined collectives prefetch the next layer's weights
under `scan_layers`.

--platform cpu runs the same path on CPU processes (gloo collectives): the
test suite starts a multi-process run on localhost this way. --dry_run prints
each process's environment and command instead of starting it.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
)


def process_envs(args) -> list[dict]:
  """The environment of each process this node starts."""
  total = args.num_nodes * args.processes_per_node
  base = {}
  if args.platform == "gpu" and not args.no_xla_flags:
    base["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *GPU_XLA_FLAGS]).strip()
  if args.platform == "cpu":
    base["JAX_PLATFORMS"] = "cpu"
  envs = []
  for k in range(args.processes_per_node):
    env = dict(base)
    if total > 1:
      env.update({"VWT_COORDINATOR_ADDRESS": args.coordinator,
                  "VWT_NUM_PROCESSES": str(total),
                  "VWT_PROCESS_ID": str(args.node_rank * args.processes_per_node + k)})
    if args.platform == "gpu" and args.processes_per_node > 1:
      env["CUDA_VISIBLE_DEVICES"] = str(k)
    envs.append(env)
  return envs


def _check(args) -> None:
  if args.num_nodes < 1 or args.processes_per_node < 1:
    raise common.LaunchError(f"--num_nodes={args.num_nodes}, --processes_per_node="
                             f"{args.processes_per_node}: expected positive counts")
  if not 0 <= args.node_rank < args.num_nodes:
    raise common.LaunchError(f"--node_rank={args.node_rank}: expected 0 <= rank < "
                             f"--num_nodes={args.num_nodes}")
  if args.num_nodes > 1 and not args.coordinator:
    raise common.LaunchError("--coordinator is required with --num_nodes > 1 (HOST:PORT of "
                             "node 0, reachable from every node)")
  args.coordinator = args.coordinator or "127.0.0.1:12355"
  common.check(args.coordinator, r"[A-Za-z0-9.\-]+:[0-9]{2,5}", "--coordinator", "HOST:PORT")
  if not any(a.startswith("--config") for a in args.main_args):
    raise common.LaunchError("no --config for vwt_jax.main after --")


def launch(args) -> int:
  _check(args)
  command = [args.python, "-m", "vwt_jax.main", *args.main_args]
  envs = process_envs(args)
  for env in envs:
    print(common.command_line(command, env), flush=True)
  if args.dry_run:
    return 0
  procs = [subprocess.Popen(command, env={**os.environ, **env}) for env in envs]
  # The first failure stops this node's other processes (they would block in
  # collectives waiting for it).
  status = 0
  try:
    while procs and not status:
      for p in list(procs):
        code = p.poll()
        if code is not None:
          procs.remove(p)
          status = status or code
      if procs and not status:
        time.sleep(1)
  except KeyboardInterrupt:
    status = 130
  for p in procs:
    p.send_signal(signal.SIGTERM)
  for p in procs:
    p.wait()
  return status


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="launch/gpu/launch_node.py", description=__doc__.split("\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--num_nodes", type=int, default=1)
  parser.add_argument("--node_rank", type=int, default=0, help="this node's index")
  parser.add_argument("--processes_per_node", type=int, default=1,
                      help="1 = one process drives all local GPUs")
  parser.add_argument("--coordinator", default="",
                      help="HOST:PORT of node 0 (default 127.0.0.1:12355 on one node)")
  parser.add_argument("--platform", choices=("gpu", "cpu"), default="gpu")
  parser.add_argument("--no_xla_flags", action="store_true",
                      help="do not add the GPU XLA flags")
  parser.add_argument("--python", default=sys.executable, help="interpreter of the trainers")
  parser.add_argument("--dry_run", action="store_true", help="print, start nothing")
  parser.add_argument("main_args", nargs="*", help="after --: flags for vwt_jax.main")
  return launch(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(common.main_wrapper(main))
