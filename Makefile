# Two commands: `make demo` (set up, then run the pipeline end to end on the embedded default)
# and `make test` (set up, then run the whole test suite). Everything they need, they install.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lock: one version of every distribution the base install and all extras need (`make lock` writes it).
LOCK := requirements/constraints.txt
LOCK_VENV := build/lock-venv
PIP_TOOLS := pip-tools==7.7.0
# torch==2.13.0: its CPU wheel is on disk; an unpinned torch would pull CUDA packages.
TORCH := torch==2.13.0
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup debs demo test test-unit lint lock bench clean

# Everything at the lock's versions (torch included), so two fresh setups install the same thing.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[serving,release,dev,spark]'
	touch $@

debs:
	@scripts/install_debs.sh

setup: $(STAMP) debs

demo: setup
	$(BIN)/mlrelease demo

test: setup
	$(BIN)/pytest -n 2 --dist loadgroup -q --durations=15

test-unit: setup
	$(BIN)/pytest -q -n 2 tests/unit -m "not integration"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy mlrelease release scoring pipelines registry deploy
	$(BIN)/bandit -q -c pyproject.toml -r mlrelease release scoring pipelines registry deploy --severity-level medium

# Re-resolves the lock from pyproject.toml after a dependency changed there; pins that still fit are kept.
# `make lock LOCK_ARGS=--upgrade` moves everything to the newest versions that fit, then `make test`.
# pip-compile runs from a venv of its own (pip-tools needs a newer pip than the project's venv has). torch is
# written without the CPU wheel's local label (2.13.0, not 2.13.0+cpu): that line matches the CPU wheel on disk
# and the CPU index's wheel alike.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet '$(PIP_TOOLS)'
	CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_VENV)/bin/pip-compile --quiet --all-extras --strip-extras \
		--allow-unsafe --no-emit-index-url --no-emit-find-links --upgrade-package '$(TORCH)' $(LOCK_ARGS) \
		--output-file $(LOCK) pyproject.toml
	sed -i -E 's/^(torch==[0-9][0-9.]*)\+cpu$$/\1/' $(LOCK)
	rm -rf $(LOCK_VENV)

bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py

clean:  # stops this workspace's servers and routers first: removing .mlrelease would orphan them
	test ! -x $(BIN)/mlrelease || MLRELEASE_HOME=$(CURDIR) $(BIN)/mlrelease down --yes
	rm -rf $(VENV) mlruns .mlrelease data models .pytest_cache
