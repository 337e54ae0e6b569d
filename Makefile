# `make demo` and `make test` each set up their own .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_workdir
PYTEST_ARGS ?=

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
# Leaves checkpoints, metrics, reconstructions.png, samples.png and summaries
# under $(DEMO_DIR).
demo: venv
	rm -rf $(DEMO_DIR)/tokenizer $(DEMO_DIR)/codes $(DEMO_DIR)/generator
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
	@cat $(DEMO_DIR)/tokenizer/summary.txt $(DEMO_DIR)/generator/summary.txt

test: venv
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
