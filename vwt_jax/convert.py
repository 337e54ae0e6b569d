r"""Converts released weights once into a folder that loads without torch.

  # by name (docs/pretrained.md): the Hub file and the config it implies
  python -m vwt_jax.convert --pretrained llamagen-c2i-xl-384 --output_dir xl_384
  python -m vwt_jax.convert --pretrained llamagen-vq16-c2i --output_dir vq16
  # a local file with the config that describes it
  python -m vwt_jax.convert --config configs/titok.py:B-64,recipe=stage2 \
      --checkpoint tokenizer_titok_b64.bin --output_dir titok_b64

The folder holds `config.json` (the config, as a run folder holds it) and
`params.safetensors` (the converted parameter tree, keys joined by '/'). Any
`--checkpoint` takes it in place of the released file, with no `--config`
and no conversion: `python -m vwt_jax.sample --checkpoint xl_384 ...`. The
parameters are those converting on load gives, bit for bit. A generator's
config still names its tokenizer's released weights; convert those too and
point `--config.tokenizer.checkpoint` at that folder to skip them as well.
"""

import json
import os

from absl import app
from absl import flags
from etils import epath
import jax
import numpy as np

from vwt_jax import cli
from vwt_jax import families
from vwt_jax.core import files
from vwt_jax.families import common
from vwt_jax.families import generator as generator_lib
from vwt_jax.families import tokenizer as tokenizer_lib

FLAGS = flags.FLAGS


def convert(config, checkpoint: str, output_dir: str, overwrite: bool = False) -> dict:
  """Writes `output_dir`/config.json and params.safetensors; returns a summary.

  Raises:
    cli.SettingsError: the family has no converter here, or `output_dir`
      already holds a conversion and `overwrite` is False.
  """
  written = [os.path.join(output_dir, name) for name in (common.CONFIG_FILE,
                                                          common.CONVERTED_FILE)]
  existing = [path for path in written if epath.Path(path).exists()]
  if existing and not overwrite:
    raise cli.SettingsError(f"{existing[0]} exists: pass --overwrite to replace it, or "
                            "choose another --output_dir")
  family = families.get(config.family)
  if config.family in generator_lib.GENERATOR_FAMILIES:
    params = family.load_params(checkpoint, config, family.model_config(config))
  elif config.family in tokenizer_lib.TOKENIZER_FAMILIES:
    params = family.load_params(checkpoint, config)
  else:
    raise cli.SettingsError(f"config.family={config.family!r}: convert takes tokenizers and "
                            "generators (titok, vqgan, gpt, maskgit)")
  files.makedirs(output_dir)
  common.write_converted(params, written[1])
  common.save_config(config, output_dir)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return {"output_dir": output_dir, "family": config.family, "source": checkpoint,
          "parameters": count}


def define_flags():
  cli.define_config_flag("The model's config (a config file, a run folder or a released "
                         "name); default: the --pretrained release's.")
  cli.define_checkpoint_flags("Released weights: a file, a Hugging Face model folder or "
                              "hf://ORG/REPO[/FILE].")
  flags.DEFINE_string("output_dir", None, "The folder to write (config.json, "
                      "params.safetensors).")
  flags.DEFINE_bool("overwrite", False, "Replace a conversion already in --output_dir.")
  flags.mark_flags_as_required(["output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, checkpoint = cli.config_and_checkpoint()
  try:
    summary = convert(config, checkpoint, FLAGS.output_dir, FLAGS.overwrite)
  except cli.SettingsError as e:
    raise app.UsageError(str(e)) from e
  print(json.dumps(summary))


if __name__ == "__main__":
  define_flags()
  app.run(main)
