"""colabs/*.ipynb run top to bottom in a fresh python3 kernel (nbclient) on tiny inputs.

The parameters cell keeps its defaults (those of `make demo`, or released
weights by name); a cell inserted after it, as papermill injects parameters,
points them at tmp runs and tiny sizes. Released weights are read by name from
a Hugging Face cache with the network off, where the releases' repositories
hold the official code's tiny models. Executed copies go to tmp_path, never
into colabs/.
"""

import base64
import io
import json
import math
import os
import re
import types

from flax import traverse_util
import nbclient
import nbformat
import numpy as np
from PIL import Image
import pytest

from helpers import official_titok_releases, save_random_generator_run
from helpers import save_random_titok_run
from helpers import tiny_titok_config, titok_config, write_class_codes
from vwt_jax.core import hub
from vwt_jax.core import images as images_lib
from vwt_jax.data import pipeline
from vwt_jax.data import transforms
from vwt_jax.families import pretrained
from vwt_jax.families import tokenizer as tokenizer_lib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = ("titok_reconstruct.ipynb", "llamagen_sample.ipynb", "titok_generate.ipynb",
             "train_tiny.ipynb")
IMAGE_SIZE, TOKENS, CODEBOOK = 16, 8, 64  # tiny_titok_config


def _kernel_env(**extra):
  # The test process has 8 fake CPU devices (conftest); a notebook runs on what
  # the machine has, here one CPU device.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  # Compiling, not running, is what costs here: the TiTok train step and its
  # random init took 65 s on 2 loaded cores, 26 s with XLA's optimisations off
  # and non-partitionable threefry (as conftest). Neither changes what a
  # notebook does; the random draws differ, and no assertion depends on them.
  # The kernel imports vwt_jax from this checkout, installed or not, as the
  # suite's other subprocesses do.
  path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags),
              JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_THREEFRY_PARTITIONABLE="0",
              PYTHONPATH=path, **extra)


def _parameters_index(nb):
  return next(i for i, cell in enumerate(nb.cells)
              if "parameters" in cell.metadata.get("tags", ()))


def execute(name, out_dir, env=None, **parameters):
  """Runs colabs/`name` with `parameters` set after its parameters cell, and
  `env` ({name: value}) added to the kernel's environment; the executed
  notebook is written to out_dir (for inspection) and returned."""
  nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
  nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(
      "\n".join(f"{key} = {value!r}" for key, value in parameters.items())))
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(out_dir)}})
  try:
    client.execute(env=_kernel_env(**(env or {})))
  finally:
    nbformat.write(nb, os.path.join(str(out_dir), name))
  return nb


def _stdout(nb):
  return "".join(out.text for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.outputs
                 if out.output_type == "stream" and out.name == "stdout")


def _shown_images(nb):
  """The PNGs the notebook displayed, decoded."""
  return [Image.open(io.BytesIO(base64.b64decode(out.data["image/png"])))
          for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
          if out.output_type in ("display_data", "execute_result")
          and "image/png" in out.data]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs_with_a_tagged_parameters_cell(name):
  nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
  assert nb.cells[0].cell_type == "markdown" and "Colab" in nb.cells[0].source
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.outputs == [] and c.execution_count is None for c in code)
  assert "REPO_URL" in nb.cells[_parameters_index(nb) - 1].source


@pytest.fixture(scope="module")
def titok_run(shapes_dir, tmp_path_factory):
  run = str(tmp_path_factory.mktemp("titok"))
  config = tiny_titok_config(shapes_dir)
  save_random_titok_run(config, run)
  return run, config


@pytest.fixture(scope="module")
def generator_run(titok_run, tmp_path_factory):
  """A random 1-layer class-conditional GPT over the random TiTok's codes."""
  code_dir = write_class_codes(str(tmp_path_factory.mktemp("codes")), *titok_run,
                               num_classes=3, seq_len=TOKENS, vocab=CODEBOOK,
                               sizes=(("train", 4),))
  run = str(tmp_path_factory.mktemp("gpt"))
  save_random_generator_run("tiny", code_dir, run)
  return run


@pytest.fixture(scope="module")
def released_titok(fixtures_dir, tmp_path_factory):
  """`titok-l32` and `titok-generator-l32` in a Hub cache, holding the official
  code's tiny TiTok tokenizer and MaskGIT generator as TiTok's releases are
  saved, and the releases' configs at the fixtures' sizes."""
  released = official_titok_releases(
      fixtures_dir, str(tmp_path_factory.mktemp("released_titok")),
      hub.parse(pretrained.get("titok-l32").checkpoint).repo_id,
      hub.parse(pretrained.get("titok-generator-l32").checkpoint).repo_id,
      pretrained.config("titok-l32"), pretrained.config("titok-generator-l32"))
  return types.SimpleNamespace(
      env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": released.cache},
      tokenizer_config=released.tokenizer_config, generator_config=released.generator_config,
      tokenizer=tokenizer_lib.load_tokenizer(released.tokenizer_folder,
                                             released.tokenizer_config),
      generations=released.generations)


def _pad(rows, n=8):
  """`rows` repeated up to `n`: a batch the test process's 8 devices divide."""
  return np.concatenate([rows, np.repeat(rows[-1:], n - len(rows), axis=0)])


def test_titok_reconstruct_prints_the_token_ids_and_shows_the_grid(titok_run, tmp_path):
  run, config = titok_run
  output = str(tmp_path / "grid.png")
  nb = execute("titok_reconstruct.ipynb", tmp_path, CHECKPOINT=run, NUM_IMAGES=3,
               OUTPUT=output)
  text = _stdout(nb)
  rows = re.findall(r"^image (\d+): ([\d ]+)$", text, re.M)
  assert [int(i) for i, _ in rows] == [0, 1, 2]
  printed = np.array([[int(t) for t in ids.split()] for _, ids in rows])
  # The ids are the tokenizer's own codes of the first eval images, and the
  # grid holds those images above the decoding of the ids.
  tok = tokenizer_lib.load_tokenizer(run, config)
  images = next(iter(pipeline.create_image_dataset(
      config.data, split=config.data.eval_split, global_batch_size=8, seed=config.seed,
      train=False)))["image"]
  codes = np.asarray(tok.encode(images))
  np.testing.assert_array_equal(printed, codes[:3])
  grid = np.asarray(Image.open(output), np.int32)
  # Each image is shown enlarged, pixel by pixel (`images_lib.upscale`).
  cell = images_lib.upscale(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))).shape[1]
  assert grid.shape == (2 * cell, 3 * cell, 3)
  expected = [images_lib.upscale(images_lib.to_uint8(x[:3])) for x in (images, tok.decode(codes))]
  np.testing.assert_array_equal(grid[:cell], np.concatenate(expected[0], axis=1))
  # One process has 8 devices, the kernel 1: the decoders may round apart, by
  # float32 reordering far below a grey level, so by at most one level once
  # quantised.
  np.testing.assert_allclose(grid[cell:], np.concatenate(expected[1], axis=1), atol=1)
  assert math.isfinite(float(re.search(r"PSNR ([-\d.]+) dB", text).group(1)))
  assert len(_shown_images(nb)) == 1


def test_titok_reconstruct_without_a_checkpoint_says_how_to_get_one(tmp_path):
  with pytest.raises(nbclient.exceptions.CellExecutionError,
                     match="does not exist. Train a tokenizer first"):
    execute("titok_reconstruct.ipynb", tmp_path, CHECKPOINT=str(tmp_path / "missing"))


def test_llamagen_sample_shows_one_row_per_class_and_the_speed(generator_run, tmp_path):
  output = str(tmp_path / "samples.png")
  nb = execute("llamagen_sample.ipynb", tmp_path, GENERATOR=generator_run, CLASSES="2,0",
               PER_CLASS=3, TOP_K=16, OUTPUT=output)
  text = _stdout(nb)
  speed = re.search(r"sampled 6 images in [\d.]+ s: ([\d.]+) images/s", text)
  assert speed and float(speed.group(1)) > 0
  cell = images_lib.upscale(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))).shape[1]
  assert Image.open(output).size == (3 * cell, 2 * cell)
  assert "2 rows x 3 images" in text and len(_shown_images(nb)) == 1


def test_llamagen_sample_by_name_reads_the_release_and_its_tokenizer_from_the_hub(tmp_path):
  # An empty cache with the network off: the release's tokenizer, read first,
  # is named with the command that fetches it.
  tokenizer = hub.parse(pretrained.get(pretrained.get("llamagen-c2i-b-256").tokenizer).checkpoint)
  with pytest.raises(nbclient.exceptions.CellExecutionError,
                     match=re.escape(f"hf download {tokenizer.repo_id} {tokenizer.filename}")):
    execute("llamagen_sample.ipynb", tmp_path, GENERATOR="llamagen-c2i-b-256",
            env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})


def test_titok_reconstruct_reads_released_weights_by_name_and_crops_your_images(
    released_titok, tmp_path):
  pictures = tmp_path / "pictures"
  pictures.mkdir()
  rng = np.random.default_rng(0)
  for name, shape in (("a.png", (40, 48, 3)), ("b.png", (64, 30, 3))):
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(pictures / name)
  (pictures / "broken.png").write_bytes(b"not a picture")
  (pictures / "notes.txt").write_text("not an image file")
  more = tmp_path / "more"
  more.mkdir()
  Image.fromarray(rng.integers(0, 256, (33, 33, 3), np.uint8)).save(more / "c.png")
  output = str(tmp_path / "grid.png")
  nb = execute("titok_reconstruct.ipynb", tmp_path, env=released_titok.env,
               CHECKPOINT="titok-l32", CONFIG=released_titok.tokenizer_config,
               IMAGES=f"{pictures}, {more}/*.png", OUTPUT=output)
  text = _stdout(nb)
  # Folders in name order, then the glob; the broken file is reported and skipped.
  assert "skipped 1 of 4 files" in text
  assert "hf://" + hub.parse(pretrained.get("titok-l32").checkpoint).repo_id in text
  paths = [str(pictures / "a.png"), str(pictures / "b.png"), str(more / "c.png")]
  assert re.findall(r"^  (\d+)  (.+)$", text, re.M) == [(str(i), p) for i, p in enumerate(paths)]
  rows = re.findall(r"^image (\d+): ([\d ]+)$", text, re.M)
  printed = np.array([[int(t) for t in ids.split()] for _, ids in rows])
  # TiTok's evaluation crop of each picture, through the released tokenizer.
  tok = released_titok.tokenizer
  crops = np.stack([transforms.resize_center_crop(np.asarray(Image.open(p)), tok.image_size)
                    for p in paths])
  codes = np.asarray(tok.encode(_pad(transforms.to_float(crops))))[:3]
  np.testing.assert_array_equal(printed, codes)
  grid = np.asarray(Image.open(output), np.int32)
  cell = images_lib.upscale(crops).shape[1]
  assert grid.shape == (2 * cell, 3 * cell, 3)
  np.testing.assert_array_equal(grid[:cell], np.concatenate(images_lib.upscale(crops), axis=1))
  decoded = images_lib.to_uint8(np.asarray(tok.decode(_pad(codes)))[:3])
  np.testing.assert_allclose(grid[cell:], np.concatenate(images_lib.upscale(decoded), axis=1),
                             atol=1)


def test_titok_generate_gives_the_official_generations_from_the_hub_cache(
    released_titok, tmp_path):
  # The release's sampling settings but for the two set here: without the
  # randomised temperature the official MaskGIT loop is deterministic, so each
  # sample is the official generation for its class (here at constant guidance).
  official = released_titok.generations
  output = str(tmp_path / "samples.png")
  nb = execute("titok_generate.ipynb", tmp_path, env=released_titok.env,
               GENERATOR="titok-generator-l32", CONFIG=released_titok.generator_config,
               CLASSES=",".join(str(c) for c in official["condition"]), PER_CLASS=2,
               GUIDANCE_DECAY="constant", RANDOMIZE_TEMPERATURE=0.0, OUTPUT=output)
  text = _stdout(nb)
  # The setup cell reports what JAX runs on: here the kernel's one CPU device.
  assert re.search(r"JAX [\w.]+ sees 1 CPU device\(s\)", text)
  assert "hf://" + hub.parse(pretrained.get("titok-generator-l32").checkpoint).repo_id in text
  assert "8 steps, guidance scale 4.5 (constant decay), randomize_temperature 0.0" in text
  speed = re.search(r"sampled 6 images in [\d.]+ s: ([\d.]+) images/s", text)
  assert speed and float(speed.group(1)) > 0
  assert "3 rows x 2 images" in text and len(_shown_images(nb)) == 1
  tok = released_titok.tokenizer
  samples = tok.pictures(_pad(official["generate_T0_constant"]))[:3]
  expected = images_lib.image_grid([[s, s] for s in samples])
  # Decoded by 1 device there and 8 here: apart by float32 reordering, at most
  # one grey level once truncated.
  np.testing.assert_allclose(np.asarray(Image.open(output), np.int32), expected, atol=1)


def test_titok_generate_with_a_tokenizer_as_generator_names_the_generators(tmp_path):
  with pytest.raises(nbclient.exceptions.CellExecutionError,
                     match="titok-l32 is a tokenizer, not a generator"):
    execute("titok_generate.ipynb", tmp_path, GENERATOR="titok-l32")


def _overrides(config, base):
  """The dotted config fields where `config` differs from `base`."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
  flat_base = traverse_util.flatten_dict(base.to_dict(), sep=".")
  return {k: v for k, v in flat.items() if flat_base.get(k) != v}


def test_train_tiny_trains_plots_the_loss_and_shows_the_reconstructions(shapes_dir, tmp_path):
  steps = 4
  overrides = _overrides(tiny_titok_config(shapes_dir, eval_every=steps, **{
      "losses.discriminator_weight": 0.0}), titok_config("tiny"))
  workdir = tmp_path / "run"
  nb = execute("train_tiny.ipynb", tmp_path, WORKDIR=str(workdir), DATA_DIR=str(shapes_dir),
               TOTAL_STEPS=steps, CONFIG_OVERRIDES=overrides)
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses) == steps // overrides["log_every"] and all(map(math.isfinite, losses))
  assert str(steps) in os.listdir(workdir / "checkpoints")
  final = re.search(rf"final train loss ([\d.]+) at step {steps}$", _stdout(nb), re.M)
  # Printed with 4 decimals: rounded by at most half (5e-5) of the last one's unit.
  assert float(final.group(1)) == pytest.approx(losses[-1], abs=1e-4)
  # The loss curve (also written as loss.png), then the run's reconstructions.png.
  shown = _shown_images(nb)
  assert len(shown) == 2 and Image.open(workdir / "loss.png").format == "PNG"
  assert shown[1].size == Image.open(workdir / "reconstructions.png").size
