# The two quickstart commands (README.md) and their helpers.
#
#   make demo   # the main job on its embedded default: offline, CPU
#   make test   # lint, format check and the test suite
#
# Each creates (or reuses) the virtualenv in .venv and installs what it needs
# from the package registries. A stamp file per extras set skips the install
# when setup.py has not changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Tests run in two processes: the suite is dominated by single-threaded XLA
# compilation, so two workers use both cores of a small machine.
# loadfile keeps each test file on one worker, so what a file's tests share
# (a module fixture: a training run, a TFDS build) is made once; spread over
# both workers, it was made on each. (xdist's loadgroup no longer groups
# anything under pytest 9.2, which ignores the node ids xdist renames.) The
# suite shares one XLA compilation cache, kept across runs
# (tests/conftest.py). Every test runs, `slow` ones included
# (`pytest -m "not slow"` is the quick loop).
PYTEST_WORKERS ?= 2

.PHONY: demo test lint format venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# TORCH pins the PyTorch build that the export extra gets: the CPU build
# that this kind of machine keeps on disk, instead of several GB of CUDA wheels.
TORCH ?= torch==2.13.0

$(VENV)/.stamp-%: setup.py | $(BIN)/python
	$(PIP) install --quiet -e ".[$(subst +,$(comma),$*)]" \
	  $(if $(findstring export,$*),"$(TORCH)")
	touch $@

comma := ,

venv: $(VENV)/.stamp-dev+export

# One install serves both commands, so `make demo && make test` installs once.
demo: $(VENV)/.stamp-dev+export
	$(BIN)/python -m dss_jax.distill

lint: $(VENV)/.stamp-dev+export
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/shellcheck tpu_scripts/*.sh .ci/run

format: $(VENV)/.stamp-dev+export
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 \
	  --junitxml=$(VENV)/junit.xml

clean:
	rm -rf $(VENV) build *.egg-info
