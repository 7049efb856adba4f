# Two commands: `make demo` (set up, then run the pipeline end to end on the embedded default)
# and `make test` (set up, then run the whole test suite). Everything they need, they install.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup debs demo test test-unit lint bench clean

# torch==2.13.0 first: its CPU wheel is on disk, and an unpinned torch would pull CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[serving,release,dev]'
	touch $@

debs:
	@scripts/install_debs.sh

setup: $(STAMP) debs

demo: setup
	$(BIN)/mlrelease demo

test: setup
	$(BIN)/pytest -n 2 --dist loadgroup -q --durations=15

test-unit: setup
	$(BIN)/pytest -q tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mlrelease pipelines registry deploy
	$(BIN)/bandit -q -c pyproject.toml -r mlrelease pipelines registry deploy --severity-level medium

bench: setup
	$(BIN)/python scripts/bench_pipeline.py

clean:  # stops this workspace's servers and routers first: removing .mlrelease would orphan them
	test ! -x $(BIN)/mlrelease || MLRELEASE_HOME=$(CURDIR) $(BIN)/mlrelease down --yes
	rm -rf $(VENV) mlruns .mlrelease data models .pytest_cache
