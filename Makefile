# EdgeRay: `make demo` runs the main job, `make test` the lint and test suite.
# Both create .venv on first use (Python >= 3.11 and make are all they need) and are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeray-installed
# The CPU build of torch lies on this machine's disk; installing it first keeps pip from
# resolving torch>=2.13 to a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
PY_DIRS := $(wildcard src tests benchmarks docs examples)

# Peer tools for the benchmarks live in their own environment: pty-chi needs torchvision, which does not
# import beside the CPU torch 2.13 build (both torch 2.14.1 and torchvision 0.29.1 lie on this machine's disk).
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.peers-installed

.PHONY: demo test test-loaded lint format clean venv peers bench browser slurm stress docs installed

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,tiled]'
	# ptychodus for the interoperability tests: its readers need numpy/h5py/scipy/scikit-image/pydantic only
	$(BIN)/python -m pip install --quiet --no-deps ptychodus==1.7.0
	touch $@

demo: $(STAMP)
	$(BIN)/edgeray demo --out out/demo

# The live-view test drives Debian's Chromium (no browser download): install it once if it is missing.
browser:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The flow's scheduler tests start a one-node Slurm (tests/slurm_cluster.py): Debian's packages, once.
slurm:
	@test -x /usr/sbin/slurmctld -a -x /usr/sbin/slurmd -a -x /usr/sbin/munged -a -x /usr/bin/sbatch || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }

# A CPU load for the tests that hold on a busy machine: Debian's stress-ng, once.
stress:
	@test -x /usr/bin/stress-ng || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends stress-ng >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

format: $(STAMP)
	$(BIN)/ruff format $(PY_DIRS)
	$(BIN)/ruff check --fix $(PY_DIRS)

test: lint browser slurm
	$(BIN)/python -m pytest -q

# The tests that start servers or streams (edge, Tiled, Slurm, the flow, the live view), again beside one busy
# process at normal priority, as a beamline host often has: a timing assumption fails here, not at a user's.
LOADED_TESTS := tests/test_stream.py tests/test_edge_hostile.py tests/test_stream_learn.py tests/test_tiled.py \
	tests/test_workflow.py tests/test_workflow_slurm.py tests/test_dashboard.py tests/test_pva.py
test-loaded: $(STAMP) browser slurm stress
	stress-ng --cpu 1 --cpu-method matrixprod --timeout 3600s --quiet & load=$$!; \
	  $(BIN)/python -m pytest -q $(LOADED_TESTS); status=$$?; kill $$load; wait $$load 2>/dev/null; exit $$status

# The documentation site (Sphinx, docs/ -> docs/_build/html); any warning fails the build. The gallery's pictures
# are made by running the examples first.
docs: $(STAMP)
	mkdir -p docs/_generated
	for example in examples/*.py; do echo "== $$example"; $(BIN)/python $$example docs/_generated || exit 1; done
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "site: docs/_build/html/index.html"

# EdgeRay as users install it: the wheel, in a fresh environment outside the source tree (not editable), with the
# shipped models as package data; then the command, a reconstruction and the shipped denoiser from it.
WHEEL_VENV := build/venv-wheel
installed:
	rm -rf build/wheel $(WHEEL_VENV) build/installed-check
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install --quiet $(TORCH_PIN)
	$(WHEEL_VENV)/bin/python -m pip wheel --quiet --no-deps --wheel-dir build/wheel .
	$(WHEEL_VENV)/bin/python -m pip install --quiet build/wheel/edgeray-*.whl
	mkdir -p build/installed-check
	cd build/installed-check && ../venv-wheel/bin/edgeray --help >/dev/null && \
	  ../venv-wheel/bin/edgeray simulate tomo -o tomo.h5 --size 64 --slices 2 --angles 90 && \
	  ../venv-wheel/bin/edgeray tomo recon tomo.h5 -o rec.h5 && \
	  ../venv-wheel/bin/edgeray tomo denoise rec.h5 -o denoised.h5 && \
	  ../venv-wheel/bin/python -c "import edgeray, sys; assert 'site-packages' in edgeray.__file__, edgeray.__file__"
	@echo "the installed wheel runs: build/installed-check/"

peers: $(PEERS_STAMP)

$(PEERS_STAMP):
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 ptychi==2.2.0
	touch $@

bench: $(STAMP) $(PEERS_STAMP)
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script --quick || exit 1; done

clean:
	rm -rf $(VENV) $(PEERS) out demo_run build dist src/*.egg-info .pytest_cache .ruff_cache docs/_build docs/_generated
