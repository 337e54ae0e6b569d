"""Every TiTok config variant builds the model the spec describes."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from helpers import titok_config
from vwt_jax.families import titok as titok_family

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

# Total parameters (millions) of the official classes, as their released checkpoints count them.
RELEASED_PARAMS_M = {
    "L-32": 641.1, "B-64": 204.8, "S-128": 83.7,
    "BL-64-VQ": 390.0, "BL-128-VQ": 390.2, "SL-256-VQ": 330.3,
    "LL-32-VAE": 606.9, "BL-64-VAE": 389.4, "BL-128-VAE": 389.6,
}


@pytest.mark.parametrize("variant", sorted(RELEASED_PARAMS_M))
def test_released_variants_match_official_parameter_counts(variant):
  # Released two-stage models are counted with their pixel decoder (stage 2).
  arg = f"{variant},recipe=stage2" if variant in ("L-32", "B-64", "S-128") else variant
  config = titok_config(arg)
  model = titok_family.build(titok_family.model_config(config))
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 256, 256, 3), np.float32))
  count = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))
  # An exact count against totals rounded to 0.1 M: half that digit.
  assert count / 1e6 == pytest.approx(RELEASED_PARAMS_M[variant], abs=0.05)


def test_unknown_variant_and_option_fail_clearly():
  with pytest.raises(ValueError, match="unknown variant 'XL-9'"):
    titok_config("XL-9")
  with pytest.raises(ValueError, match="unknown option"):
    titok_config("tiny,lr=3")


@pytest.mark.parametrize("override,message", [
    ("--config.totl_steps=5", "totl_steps"),
    ("--config.total_steps=abc", "total_steps"),
])
def test_command_line_rejects_typos_and_wrong_types(override, message, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "vwt_jax.main", "--config", "configs/titok.py:tiny",
       "--workdir", str(tmp_path), override],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.path.abspath(ROOT)))
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not os.listdir(tmp_path)
