"""State-dict files that do not hold what a converter needs: the errors name the
file, the key, the shape found and the shape expected."""

import numpy as np
import pytest
import torch

from vwt_jax.conversion import torch_state
from vwt_jax.conversion.llamagen import load_gpt
from vwt_jax.conversion.vqgan import load_vqgan
from vwt_jax.models.gpt import GPTConfig
from vwt_jax.models.vqgan import VQGANConfig

TINY_VQ = VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32,
                      codebook_size=16)
TINY_GPT = GPTConfig(dim=32, n_layer=1, n_head=2, vocab_size=16, block_size=4,
                     num_classes=10, rope_2d=False)


def test_a_conv_weight_of_the_wrong_rank_names_file_key_and_shapes(tmp_path):
  path = str(tmp_path / "vq.pt")
  # A Conv2d weight (O, I, kh, kw) saved with its 1x1 kernel squeezed away.
  torch.save({"quant_conv.weight": torch.zeros(32, 32)}, path)
  with pytest.raises(ValueError) as err:
    load_vqgan(path, TINY_VQ)
  assert str(err.value) == (f"{path}: quant_conv.weight has shape (32, 32) (2-d); "
                            "expected a 4-d array")


def test_a_linear_weight_of_the_wrong_rank_names_file_key_and_shapes(tmp_path):
  path = str(tmp_path / "gpt.pt")
  torch.save({"model": {"layers.0.attention.wqkv.weight": torch.zeros(3, 32, 32)}}, path)
  with pytest.raises(ValueError, match=rf"^{path}: layers.0.attention.wqkv.weight has shape "
                     r"\(3, 32, 32\) \(3-d\); expected a 2-d array$"):
    load_gpt(path, TINY_GPT)


def test_a_size_mismatch_names_the_file(tmp_path):
  path = str(tmp_path / "vq.npz")
  np.savez(path, **{"quant_conv.weight": np.zeros((4, 32, 1, 1), np.float32)})
  with pytest.raises(torch_state.ConversionError,
                     match=rf"^{path} does not match the model:\n") as err:
    load_vqgan(path, TINY_VQ)
  assert "shape mismatch: quant_conv/kernel converted (1, 1, 32, 4)" in str(err.value)


def test_a_bare_tensor_is_not_taken_for_a_state_dict(tmp_path):
  path = str(tmp_path / "weights.pt")
  torch.save(torch.zeros(3), path)
  with pytest.raises(ValueError) as err:
    load_vqgan(path, TINY_VQ)
  assert str(err.value) == (
      f"{path} holds a torch.Tensor; expected a state dict (a dict of parameter names to "
      "tensors), or a dict holding one under 'model' or 'state_dict'")
