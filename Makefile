# EdgeRay: `make demo` runs the main job, `make test` the lint and test suite.
# Both create .venv on first use (Python >= 3.11 and make are all they need) and are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeray-installed
# The CPU build of torch lies on this machine's disk; installing it first keeps pip from
# resolving torch>=2.13 to a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
PY_DIRS := $(wildcard src tests benchmarks)

.PHONY: demo test lint format clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/edgeray demo --out demo_run

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

format: $(STAMP)
	$(BIN)/ruff format $(PY_DIRS)
	$(BIN)/ruff check --fix $(PY_DIRS)

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_run build dist src/*.egg-info .pytest_cache .ruff_cache
