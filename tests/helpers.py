"""Config builders shared by the tests."""

import importlib.util
import os


def titok_config(arg):
  """`configs/titok.py:arg`, loaded the way `--config` loads it."""
  spec = importlib.util.spec_from_file_location(
      "titok_config", os.path.join(os.path.dirname(__file__), "..", "configs", "titok.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_titok_config(data_dir, **overrides):
  """The `tiny` TiTok config shrunk so a train step compiles in seconds."""
  config = titok_config(overrides.pop("arg", "tiny"))
  config.model.update(dict(enc_width=32, enc_depth=1, enc_heads=2, dec_width=32,
                           dec_depth=1, dec_heads=2, num_latent_tokens=8,
                           codebook_size=64, token_size=8))
  config.data.update(dict(data_dir=str(data_dir), image_size=16, num_workers=0))
  config.data.synthetic.update(dict(num_train=64, num_validation=16))
  config.update(dict(total_steps=4, global_batch_size=8, log_every=2, eval_every=0,
                     checkpoint_every=2, async_checkpointing=False))
  config.eval.update(dict(num_images=8, batch_size=8, grid_images=4))
  config.discriminator.update(dict(hidden_channels=8, channel_mults=(1, 2), norm_groups=4,
                                   pool_size=2))
  config.losses.update(dict(discriminator_weight=0.01, discriminator_start=0))
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config
