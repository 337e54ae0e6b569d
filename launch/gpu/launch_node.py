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
node's others are stopped (SIGTERM, then SIGKILL after --grace_s) and the
launcher exits with its status; restart the job and the trainer resumes from
its last checkpoint. A SIGTERM to the launcher (a preempted node) reaches every
process, and the run saves a checkpoint at the next step and exits.

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


def _exit_status(code: int) -> int:
  # Popen reports death by signal N as -N; shells and schedulers expect 128 + N.
  return 128 - code if code < 0 else code


def _supervise(procs: list, ids: list, grace_s: float) -> int:
  """Waits for the processes; returns the job's exit status.

  A failed process leaves its peers blocked in collectives that can never
  complete (no checkpoint can be written without it either), so they get
  SIGTERM and, after `grace_s`, SIGKILL; the job restarts from the last
  checkpoint. A SIGTERM/SIGINT to the launcher (preemption, Ctrl-C) is passed
  on to every process, which then checkpoint together at the same step
  (jax's preemption sync) and exit: no deadline is imposed on that save.
  """
  received = []
  def forward(signum, frame):
    del frame
    received.append(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    running, status, forwarded = list(procs), 0, False
    while running and not status:
      if received and not forwarded:
        print(f"[launch_node] signal {received[0]}: passing SIGTERM to the processes",
              flush=True)
        for p in running:
          p.send_signal(signal.SIGTERM)
        forwarded = True
      for p in list(running):
        code = p.poll()
        if code is not None:
          running.remove(p)
          if code:
            status = _exit_status(code)
            print(f"[launch_node] process {ids[procs.index(p)]} (pid {p.pid}) exited with "
                  f"status {status}: stopping the others", flush=True)
      if running and not status:
        time.sleep(0.2)
    for p in running:
      p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in running:
      try:
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return status or (128 + received[0] if received else 0)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def launch(args) -> int:
  _check(args)
  command = [args.python, "-m", "vwt_jax.main", *args.main_args]
  envs = process_envs(args)
  for env in envs:
    print(common.command_line(command, env), flush=True)
  if args.dry_run:
    return 0
  procs, ids = [], [env.get("VWT_PROCESS_ID", "0") for env in envs]
  for env, i in zip(envs, ids):
    procs.append(subprocess.Popen(command, env={**os.environ, **env}))
    print(f"[launch_node] process {i}: pid {procs[-1].pid}", flush=True)
  return _supervise(procs, ids, args.grace_s)


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
  parser.add_argument("--grace_s", type=float, default=10.0,
                      help="after a process fails, seconds its peers get to exit before SIGKILL")
  parser.add_argument("--dry_run", action="store_true", help="print, start nothing")
  parser.add_argument("main_args", nargs="*", help="after --: flags for vwt_jax.main")
  return launch(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(common.main_wrapper(main))
