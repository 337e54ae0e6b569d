r"""Trains any vwt_jax model family from a config.

  python -m vwt_jax.main --config configs/titok.py:tiny --workdir /tmp/run \
      [--config.total_steps=1000 ...]

The run resumes from the newest checkpoint in --workdir when there is one.
Settings of the loop (steps, learning rate, batch size, frequencies) may
change on a restart; what decides the shapes of the saved state (the model,
its tokenizer, image size, ...: `STRUCTURAL_KEYS`) may not. One job at a time
trains in a folder: it holds --workdir/lock while it runs.
"""

import contextlib
import importlib
import json
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
from flax import traverse_util
import jax

from vwt_jax import cli
from vwt_jax import families
from vwt_jax.core import distributed
from vwt_jax.core import files
from vwt_jax.families import common

FLAGS = flags.FLAGS


LOCK_FILE = "lock"
# Config keys (dotted; one ending in '.' covers its section) that decide the
# shapes or layout of a run's saved state, or what its codes mean: the model
# and the networks trained beside it, the tokenizer (vocabulary), the code
# dataset (vocabulary, code length, classes), the image size, the weights the
# model is built from, what is frozen, the parameter dtype. `ON_OFF_KEYS`
# count only when they switch a state entry (the EMA copy, code-usage
# statistics) on or off.
STRUCTURAL_KEYS = ("family", "recipe", "param_dtype", "model.", "discriminator.", "teacher.",
                   "tokenizer.", "init.", "data.dir", "data.image_size", "train.freeze")
ON_OFF_KEYS = ("ema_decay", "train.dead_code_threshold")


class ConfigChangedError(ValueError):
  """A restart of a run folder with a config of another model."""


def _is_structural(key: str, old: Any, new: Any) -> bool:
  if key in ON_OFF_KEYS:
    return bool(old) != bool(new)
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in STRUCTURAL_KEYS)


def check_restart(config, workdir: str) -> None:
  """Refuses to resume `workdir` with a config whose state has other shapes.

  Compares `config` with the `config.json` a previous start saved there (if
  any). Keys only one of them has come from another version of the code and
  are not compared. Other changes are logged: the run resumes with them.

  Raises:
    ConfigChangedError: a `STRUCTURAL_KEYS` value differs; the message lists
      every such key with its old and new value.
  """
  path = epath.Path(workdir) / common.CONFIG_FILE
  if not path.exists():
    return
  old = traverse_util.flatten_dict(json.loads(files.read_text(path)), sep=".")
  # Through JSON, as saved: tuples become lists.
  new = traverse_util.flatten_dict(json.loads(common.config_json(config)), sep=".")
  changed = {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}
  structural = {k: v for k, v in changed.items() if _is_structural(k, *v)}
  listed = lambda keys: "\n".join(f"  {k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in keys)
  if structural:
    raise ConfigChangedError(
        f"{path}: the run in this folder cannot be resumed with this config, which changes "
        f"what its checkpoints hold:\n{listed(structural)}\nTo resume the run, give it its "
        "own config (drop these overrides); to train this config, use a new --workdir (add "
        f"--config.init_from={workdir} to start from this run's weights where their shapes "
        "allow).")
  if changed:
    logging.warning("%s: resuming with changed settings:\n%s", path, listed(changed))


def run(config, workdir: str):
  """Trains `config.family` with its trainer; importable for notebooks and tests.

  Checks a restart against the saved config (`check_restart`) before writing
  anything, then holds `workdir/lock` (`files.lock`) while it trains. The
  processes of a multi-process job share the folder: process 0 takes the lock.
  """
  module = importlib.import_module(families.get(config.family).TRAINER)
  check_restart(config, workdir)
  files.makedirs(workdir)
  locked = (files.lock(os.path.join(workdir, LOCK_FILE)) if jax.process_index() == 0
            else contextlib.nullcontext())
  with locked:
    common.save_config(config, workdir)
    return module.train(config, workdir)


def define_flags():
  # Defined on demand so that importing `run` (tests, notebooks) defines no flags.
  cli.define_config_flag("Config file with its argument (configs/titok.py:tiny), or a run "
                         "folder: its saved config.")
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  logging.info("config:\n%s", FLAGS.config)
  try:
    run(FLAGS.config, files.absolute(FLAGS.workdir))
  except (ConfigChangedError, files.LockedError) as e:
    # A choice of --workdir or --config to change, not a fault to trace.
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  app.run(main)
