# rankdistill's everyday commands. `make test` works on a fresh machine: it
# creates a virtual environment, installs torch and the test tools, builds the
# extension against that torch and runs the tests.
PYTHON ?= python3
VENV ?= .venv
# The CUDA build of torch, so that the CUDA kernels compile too (CPU-only
# alternative: make test TORCH_SPEC=torch==2.13.0).
TORCH_SPEC ?= torch==2.14.1
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
CUDA_HOME ?= /usr/local/cuda
export CUDA_HOME
endif
MAX_JOBS ?= 2
export MAX_JOBS

PY := $(VENV)/bin/python
# The build finds ninja (parallel compilation) on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h') setup.py pyproject.toml

.PHONY: build test bench demo sdist-smoke clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" "setuptools>=77" wheel numpy scipy pytest hypothesis filelock tqdm \
		ninja matplotlib expecttest optuna
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest -q

bench: build
	$(PY) benchmarks/bench_ops.py

demo: build
	$(PY) -m rankdistill demo

# The sdist as a user gets it: built, installed in a fresh virtual environment
# with torch 2.13.0 (CPU), then the ops, the command and a short demo run (CI).
sdist-smoke:
	bash .ci/sdist_smoke.sh

clean:
	rm -rf build *.egg-info rankdistill/_C*.so $(VENV)/.built
