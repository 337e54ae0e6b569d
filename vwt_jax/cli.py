"""The command-line convention of the commands.

* `--config` takes a config file with its argument (`configs/titok.py:tiny`),
  or a run folder or its `config.json` (the run's saved config), and then
  `--config.x=y` overrides either way. Commands that read a run
  (`--checkpoint RUN`) use its saved config when `--config` is not given.
* `--checkpoint` names weights: one of our run (or step) folders, or
  released weights (a file, a Hugging Face model folder, or either as
  `hf://ORG/REPO[/FILE][@REV]`) with a `--config` that describes them.
  `--pretrained NAME` names released weights by their registry name
  (`families.pretrained`, docs/pretrained.md): their checkpoint and config
  (and a generator's tokenizer) at once; `--config NAME` takes that config
  with overrides.
* `--output` is always a file, `--output_dir` always a folder.
* The sampling knobs are defined here once (`define_sampling_flags`), and a
  value a model cannot use is a `SettingsError`, reported as a usage error
  before any weights are read.
"""

from typing import Any

from absl import flags
import ml_collections
from ml_collections import config_flags

from vwt_jax.families import common
from vwt_jax.families import pretrained

FLAGS = flags.FLAGS


class SettingsError(ValueError):
  """A flag value the command cannot use; reported as a usage error."""


def check_flag(ok: bool, name: str, value: Any, allowed: str) -> None:
  """Raises `SettingsError` "NAME=VALUE: expected ALLOWED" unless `ok`."""
  if not ok:
    raise SettingsError(f"{name}={value!r}: expected {allowed}")


class _ConfigParser(flags.ArgumentParser):
  """A run folder or config.json (the run's config), else what `files` parses:
  a config file `FILE.py[:ARG]`."""

  def __init__(self, files: flags.ArgumentParser):
    self._files = files

  def parse(self, argument):
    if isinstance(argument, str) and argument in pretrained.RELEASES:
      config = pretrained.config(argument)
      config.lock()
      return config
    if isinstance(argument, str) and (common.is_run(argument) or argument.endswith(".json")):
      config = (common.run_config(argument) if common.is_run(argument)
                else common.load_config(argument))
      config.lock()
      return config
    return self._files.parse(argument)

  def flag_type(self):
    return self._files.flag_type()


def define_config_flag(help_string: str) -> None:
  """`--config` (see the module docstring), with `--config.x=y` overrides."""
  config_flags.DEFINE_config_file("config", None, help_string, lock_config=True)
  FLAGS["config"].parser = _ConfigParser(FLAGS["config"].parser)


def define_checkpoint_flags(what: str) -> None:
  """`--checkpoint` (`what` it takes) and `--pretrained`; one of them is required."""
  flags.DEFINE_string("checkpoint", None, what)
  flags.DEFINE_enum("pretrained", None, sorted(pretrained.RELEASES),
                    "Released weights by name (docs/pretrained.md): their checkpoint and "
                    "config; --checkpoint and --config override either.")
  flags.register_multi_flags_validator(
      ["checkpoint", "pretrained"], lambda f: bool(f["checkpoint"] or f["pretrained"]),
      "give --checkpoint or --pretrained")


def config_and_checkpoint() -> tuple[ml_collections.ConfigDict, str]:
  """(config, checkpoint) of `define_checkpoint_flags`: --config when given,
  else the --pretrained release's, else the saved config of the --checkpoint run."""
  release = pretrained.get(FLAGS.pretrained) if FLAGS.pretrained else None
  checkpoint = FLAGS.checkpoint or release.checkpoint
  if FLAGS.config is not None:
    return FLAGS.config, checkpoint
  if release is not None:
    return pretrained.config(release.name), checkpoint
  return common.run_config(checkpoint), checkpoint


def define_sampling_flags(batch_size: int) -> None:
  """The knobs every sampler reads (None: the model's own setting)."""
  flags.DEFINE_float("temperature", None, "Softmax temperature (images: config.sampling's; "
                     "text: 0 = greedy).")
  flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens (0 = all).")
  flags.DEFINE_float("top_p", None, "Nucleus sampling threshold (1 = off).")
  flags.DEFINE_integer("seed", 0, "PRNG seed: the same seed gives the same samples.")
  flags.DEFINE_integer("batch_size", batch_size, "Rows per compiled sampling call (all "
                       "devices).")
