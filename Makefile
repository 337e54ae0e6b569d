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

# Trains the tiny TiTok on the embedded synthetic shapes (generated on the
# first run) and leaves checkpoints, metrics, reconstructions.png and
# summary.txt in $(DEMO_DIR)/run.
demo: venv
	rm -rf $(DEMO_DIR)/run
	JAX_PLATFORMS=cpu $(BIN)/python -m vwt_jax.main \
	  --config configs/titok.py:tiny \
	  --config.data.data_dir $(DEMO_DIR)/data \
	  --workdir $(DEMO_DIR)/run
	@cat $(DEMO_DIR)/run/summary.txt

test: venv
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
