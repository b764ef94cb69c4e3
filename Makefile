# CareDesk. `make demo` and `make test` are each the only command a new user types:
# both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The mappers' hot modules compiled by mypyc (scripts/build_native.py); fhir_mappers uses
# the build only while it matches the sources, so an edit is never served stale.
NATIVE := $(VENV)/caredesk-native/manifest.json
PORT ?= 5000
PYTEST_ARGS ?=
# pytest-xdist processes: one more than the 2 cores, as the suite mostly waits on
# sandboxes, workers and Chromium (0 runs in one process, e.g. to debug with -x --pdb).
PYTEST_WORKERS ?= 3

.PHONY: help demo test lint typecheck pytest native services browser bench bench-quick clean migration

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "CareDesk needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(NATIVE): $(INSTALLED) scripts/build_native.py $(wildcard fhir_mappers/*.py)
	$(BIN)/python scripts/build_native.py $(VENV)/caredesk-native

native: $(NATIVE) ## Compile the mappers' hot modules with mypyc (about a minute; demo, test and bench do it)

# The demo does not need the build: without a C compiler it runs the mappers as Python.
demo: $(INSTALLED) ## Run CareDesk + the sandbox EHR on loopback (PORT=5000, sandbox PORT+1)
	@$(MAKE) --no-print-directory --silent native || echo "The native mappers did not build (is a C compiler installed?): the demo runs them as Python." >&2
	$(BIN)/caredesk demo --port $(PORT)

test: $(INSTALLED) services browser lint typecheck pytest ## Lint, type-check and run every test

lint: $(INSTALLED) ## ruff check + ruff format --check + the import-layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(INSTALLED) ## mypy --strict on every product package
	$(BIN)/mypy fhir_mappers smart_launch helpdesk jobs plugin

# PYTHONDONTWRITEBYTECODE (set in many CI images, and on the 2-core test machine) is
# unset for the tests: with it each pytest-xdist process rewrites and compiles all ~160
# test modules again (collecting took 7.2-8.2 s of CPU per process instead of 3.1-3.2),
# and every process the tests start (~90 `caredesk` commands and workers) compiles the
# product's modules again.
pytest: $(INSTALLED) $(NATIVE)
	PYTHONDONTWRITEBYTECODE= CAREDESK_NATIVE_MAPPERS=0 $(BIN)/pytest -v -n $(PYTEST_WORKERS) --durations=25 --cov --cov-report=term $(PYTEST_ARGS)

services: ## Make sure PostgreSQL, Redis and the test IMAP server (dovecot) answer; start them if needed
	@bash scripts/ensure-services.sh

browser: ## Make sure Debian's Chromium is installed for the browser tests
	@bash scripts/ensure-chromium.sh

bench: $(INSTALLED) $(NATIVE) services ## Benchmarks (not tests): prints a table, writes bench/results.json
	$(BIN)/python -m bench

bench-quick: $(INSTALLED) $(NATIVE) services ## A reduced benchmark run (< 2 minutes)
	$(BIN)/python -m bench --quick

clean: ## Remove the venv and local state
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache .coverage

migration: $(INSTALLED) ## Regenerate the baseline migration from helpdesk/models.py (pre-release only)
	@bash scripts/regen-baseline.sh
