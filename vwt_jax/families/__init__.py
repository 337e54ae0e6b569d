"""Model families: building, loading and running each model, apart from training it.

A family module (`get(config.family)`) offers

* `TRAINER`: the `vwt_jax.training` module that trains it (for `vwt_jax.main`);
* `model_config(config, ...)`: the model dataclass of a run config, whose
  `config.model` keys are exactly the dataclass's fields;
* `build(cfg)`: the Flax module;
* `load_params(path, config, ...)`: host parameters from one of our run
  folders or from the family's official checkpoint files;
* its inference functions (tokenizers: `tokenizer_fns`; generators:
  `sample`, `sampling_rules`; the captioner: `CaptionGenerator`).
"""

import importlib
import types

FAMILIES = ("titok", "vqgan", "gpt", "maskgit", "captioner", "st_llm")


def get(name: str) -> types.ModuleType:
  """The family module of `config.family`."""
  if name not in FAMILIES:
    raise ValueError(f"config.family={name!r}: expected one of {list(FAMILIES)}")
  return importlib.import_module(f"vwt_jax.families.{name}")
