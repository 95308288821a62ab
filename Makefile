# lushpo — two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
STAMP := $(VENV)/.installed

export LUSHPO_DATA_DIR ?= $(abspath ../shared/data)
export LUSHPO_STORE ?= file://$(abspath .lushpo/store)

.PHONY: setup lock run test test-fast lint bench k8s-render k8s-validate clean

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip sync -q $(LOCK)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install -q --no-deps -e .
	touch $@

# Re-pin every dependency (run by hand; commits the result).
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu -o $(LOCK)

run: setup
	$(BIN)/python -m hpo.run_main

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check pipeline hpo tests bench
	$(BIN)/ruff format --check pipeline hpo tests bench

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .lushpo .pytest_cache .ruff_cache
