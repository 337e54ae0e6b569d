r"""Trains any vwt_jax model family from a config.

  python -m vwt_jax.main --config configs/titok.py:tiny --workdir /tmp/run \
      [--config.total_steps=1000 ...]

The run resumes from the newest checkpoint in --workdir when there is one.
"""

import importlib
import json

from absl import app
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags

from vwt_jax.core import distributed
from vwt_jax.core import files

FLAGS = flags.FLAGS

TRAINERS = {
    "titok": "vwt_jax.training.titok",
    "vqgan": "vwt_jax.training.vqgan",
    "generator": "vwt_jax.training.generator",
    "captioner": "vwt_jax.training.captioner",
}


def save_config(config, workdir: str) -> None:
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=list))


def run(config, workdir: str):
  """Dispatches on `config.trainer`; importable for notebooks and tests."""
  if config.trainer not in TRAINERS:
    raise ValueError(f"config.trainer={config.trainer!r}: expected one of {sorted(TRAINERS)}")
  module = importlib.import_module(TRAINERS[config.trainer])
  save_config(config, workdir)
  return module.train(config, workdir)


def define_flags():
  # Defined on demand so that importing `run` (tests, notebooks) defines no flags.
  config_flags.DEFINE_config_file(
      "config", None, "Config file, optionally with ':variant'.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  logging.info("config:\n%s", FLAGS.config)
  run(FLAGS.config, files.absolute(FLAGS.workdir))


if __name__ == "__main__":
  define_flags()
  app.run(main)
