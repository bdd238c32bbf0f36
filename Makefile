# Garbage classifier: `make run` trains and registers a champion end to end; `make test` tests.
# Both create the virtual environment on first use.

SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# The development copy of TrashNet beside the checkout, used when no source is set explicitly.
# Elsewhere the default is the public archive (see components/config.py).
DEV_ARCHIVE := $(abspath ../shared/data/trashnet-112-dev.tar.gz)
DEV_ARCHIVE_SHA256 := cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08
ifeq ($(origin GARBAGE_DATA_SOURCE),undefined)
ifneq ($(wildcard $(DEV_ARCHIVE)),)
export GARBAGE_DATA_SOURCE := $(DEV_ARCHIVE)
export GARBAGE_DATA_SHA256 := $(DEV_ARCHIVE_SHA256)
endif
endif

# The site archive beside the checkout (RealWaste: photos from a real waste facility). Where it
# is, `make run` scores the model on it for the model card's measured limits (card.external);
# CARD_ARGS= leaves it out.
SITE_ARCHIVE := $(abspath ../shared/data/realwaste-200-dev.tar.gz)
SITE_ARCHIVE_SHA256 := 90fa32b3b38aae6d3a4cff57c8a4b823a12b6f161b5516fd3a0a6a793992a3af
ifneq ($(wildcard $(SITE_ARCHIVE)),)
CARD_ARGS ?= --set 'card.external=[{name: realwaste-200-dev, source: "$(SITE_ARCHIVE)", sha256: $(SITE_ARCHIVE_SHA256)}]'
endif

PYTEST_ARGS ?=

.PHONY: help venv run test test-unit test-integration bench-train bench-serve bench-drift bench-faults bench-adapt bench-adapt-variants clean

help:
	@echo "make run          train, evaluate, export, register and promote (kfp.local)"
	@echo "make test         all tests except 'slow' (unit + integration)"
	@echo "make test-unit    fast unit tests only"
	@echo "make bench-train  full-data training benchmark -> bench/results/train.{json,md}"
	@echo "make bench-serve  serving benchmark -> bench/results/serve.{json,md}"
	@echo "make bench-drift  drift-detection benchmark -> bench/results/drift.{json,md}"
	@echo "make bench-faults faults on serving and logging -> bench/results/faults.{json,md}"
	@echo "make bench-adapt  site adaptation, k labels a class -> bench/results/adapt.{json,md,png}"
	@echo "make bench-adapt-variants  retrain variants on its k=100 loop -> bench/results/adapt-variants.*"
	@echo "make lint         ruff (lint + format check), mypy, import contracts (lint-imports)"
	@echo "make coverage     unit tests with a coverage report -> htmlcov/"
	@echo "make docs         documentation site -> site/ (mkdocs build --strict)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@echo "data source: $${GARBAGE_DATA_SOURCE:-default public TrashNet archive}"
	$(BIN)/garbage pipeline run $(CARD_ARGS) $(RUN_ARGS)

test: $(STAMP) tools
	TQDM_DISABLE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

test-integration: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

bench-train: $(STAMP)
	$(BIN)/python bench/bench_train.py $(BENCH_ARGS)

bench-serve: $(STAMP)
	$(BIN)/python bench/bench_serve.py $(BENCH_ARGS)

bench-drift: $(STAMP)
	$(BIN)/python bench/bench_drift.py $(BENCH_ARGS)

bench-faults: $(STAMP)  ## collector outage and kills, a silent sink, client mistakes; about 5 min
	$(BIN)/python bench/bench_faults.py $(BENCH_ARGS)

bench-adapt: $(STAMP)  ## champion -> site traffic -> review, labels, retrain, gate for k = 10 25 50 100; about 1 h
	$(BIN)/python bench/bench_adapt.py $(BENCH_ARGS)

# Variants: --variant NAME [KEY=VALUE ...], each retrained on the loop's dataset version; ~10 min each.
ADAPT_VARIANTS ?= --variant retrain --variant freeze-1 train.freeze_stages=1
bench-adapt-variants: $(STAMP)  ## retrain variants side by side on bench-adapt's k = 100 loop (after bench-adapt)
	$(BIN)/python bench/bench_adapt_variants.py --k 100 $(ADAPT_VARIANTS) $(BENCH_ARGS)

clean:
	rm -rf work local_outputs .pytest_cache

# --- containers and Kubernetes (manifests/README.md) ---------------------------------------------
.PHONY: images container-setup tools kind-up kind-load kind-e2e kind-down

images:  ## build the components, serving and monitoring images (docker, else podman); IMAGES="... mlflow serving-gpu"
	scripts/build-images.sh

container-setup:  ## podman + runc + debootstrap and a local Python base image (no Docker, no registry)
	scripts/container-engine-setup.sh

tools:  ## checkov in its own virtual environment (.tools/checkov): its pins clash with the project's
	scripts/tools-venv.sh

kind-up:  ## local kind cluster with KServe, Kubeflow Pipelines, MLflow stack, monitoring
	scripts/kind/up.sh

kind-load:  ## build the images and load them into the kind cluster (SKIP_BUILD=1: load only)
	scripts/kind/load.sh

kind-e2e: $(STAMP)  ## run the pipeline on kind (CPU) and call the InferenceService it deploys
	scripts/kind/e2e.sh

kind-down:
	scripts/kind/down.sh

# --- quality gates and documentation (CONTRIBUTING.md) -------------------------------------------
.PHONY: lint format coverage docs docs-serve

lint: $(STAMP)  ## ruff (lint + format check), mypy, import contracts; .ci/run runs it before the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy docs/_hooks
	$(BIN)/lint-imports --no-cache

format: $(STAMP)  ## apply ruff's formatting and its safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

coverage: $(STAMP)  ## unit tests with a coverage report: terminal and htmlcov/index.html
	TQDM_DISABLE=1 $(BIN)/python -m pytest -m "not integration and not slow" \
	  --cov --cov-report=term --cov-report=html $(PYTEST_ARGS)

docs: $(STAMP)  ## the documentation site into site/: mkdocs build --strict, offline
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)  ## live preview of the site on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve
