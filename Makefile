# lushpo — two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
STAMP := $(VENV)/.installed

# The main job's embedded defaults: everything in the project folder .lushpo (hpo/project.py): data
# fetched into .lushpo/data unless LUSHPO_DATA_DIR points at a copy, features in .lushpo/store, the
# study in .lushpo/runs/<name>, the export in .lushpo/out/<name>; Keras' own Xception ImageNet
# weights unless LUSHPO_WEIGHTS is set. The bare `lushpo` verbs use the same folders.
LUSHPO_DATA_DIR ?= $(abspath .lushpo/data)
LUSHPO_WEIGHTS ?= imagenet
RUN_CONFIG ?= configs/quick.yaml
RUN_FLAGS ?=
LUSHPO := env LUSHPO_DATA_DIR=$(LUSHPO_DATA_DIR) LUSHPO_WEIGHTS=$(LUSHPO_WEIGHTS) $(BIN)/lushpo

.PHONY: setup lock run test test-fast lint bench k8s-render k8s-validate clean

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set (as on CI) every process,
	# each Ray worker included, would otherwise compile TensorFlow and Ray from source (~8 s).
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip sync -q --compile-bytecode $(LOCK)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install -q --no-deps -e .
	touch $@

# Re-pin every dependency (run by hand; commits the result).
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu -o $(LOCK)

# data → features (once; a second run finds them in the store) → study (resumed; RUN_FLAGS=--overwrite
# starts it anew) → export (replaced) → evaluate: `lushpo run`, the verb the RayJob and compose call.
run: setup
	$(LUSHPO) run --config $(RUN_CONFIG) $(RUN_FLAGS)

test: setup tools
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check pipeline hpo tests bench
	$(BIN)/ruff format --check pipeline hpo tests bench
	# no reaching into Ray's, Optuna's or our own private state (issue 22)
	$(BIN)/ruff check --select SLF001 hpo pipeline
	# types ([tool.mypy]), and the layers: cli → results → search → train → pipeline (issue 26)
	$(BIN)/mypy hpo pipeline
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_import_graph.py

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-tools .lushpo .pytest_cache .ruff_cache
include deploy/k8s.mk
include deploy/images.mk
