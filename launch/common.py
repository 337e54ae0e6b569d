"""What the launch scripts share: input checks, and commands run or printed.

Standard library only, so the scripts work from a laptop without vwt_jax (or
jax) installed.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Mapping, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LaunchError(ValueError):
  """A bad argument, named with what was expected."""


def check(value: str, pattern: str, flag: str, expected: str) -> str:
  if not re.fullmatch(pattern, value or ""):
    raise LaunchError(f"{flag}={value!r}: expected {expected}")
  return value


def check_config(config: str) -> str:
  """`configs/NAME.py[:ARG]`, and the file exists in this checkout."""
  path = config.split(":", 1)[0]
  check(path, r"configs/[A-Za-z0-9_]+\.py", "--config",
        "configs/NAME.py[:ARG], a config file of this repository")
  if not os.path.isfile(os.path.join(REPO, path)):
    raise LaunchError(f"--config={config!r}: {path} does not exist in {REPO}")
  return config


def command_line(argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> str:
  """`argv` with its extra environment, as a shell would run it."""
  prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
  return prefix + shlex.join(argv)


class Runner:
  """Runs commands, or only prints them (dry run) exactly as they would run."""

  def __init__(self, dry_run: bool, out=None):
    self.dry_run = dry_run
    self.out = out or sys.stdout

  def require(self, program: str) -> None:
    if not self.dry_run and shutil.which(program) is None:
      raise LaunchError(f"{program} not found on PATH; install it (or use --dry_run to see "
                        "the commands)")

  def run(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> int:
    print(command_line(argv, env), file=self.out, flush=True)
    if self.dry_run:
      return 0
    return subprocess.run(list(argv), check=True,
                          env=None if env is None else {**os.environ, **env}).returncode


def main_wrapper(main, argv=None) -> int:
  """Turns a LaunchError into a one-line message and exit status 2."""
  try:
    return main(argv)
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except subprocess.CalledProcessError as e:
    print(f"error: {shlex.join(e.cmd)} exited with status {e.returncode}", file=sys.stderr)
    return e.returncode or 1
