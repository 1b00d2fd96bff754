# make run    install (if needed), build the tiny world (if needed), run SuperHF on it
# make world-check  build the tiny world twice from scratch and compare every file (it must be identical)
# make test   install (if needed), check format, lint and import layers (make lint), build the tiny world (if needed),
#             run the test suite in two processes (TEST_WORKERS)
# make bench  time one superbatch's phases on the tiny world (one JSON line)
# make results  the README's results table: each row x seed on the tiny world (about 35 minutes on 2 cores)
# make tracking-server  an MLflow tracking server for parallel and cluster sweeps (port 5000)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# torch first: the CPU wheel of 2.13.0, which this lab's machines and CI hold on disk (their pip caps torch at
# 2.14.1); elsewhere `make install TORCH_SPEC=torch==2.15.0` (on PyPI for Linux the 3 GB CUDA build) works too.
TORCH_SPEC ?= torch==2.13.0
TRACKING_PORT ?= 5000

.PHONY: install tracking-server wordnet browser world world-check run lint test bench results presets frontier ui clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(MAKE) --no-print-directory wordnet
	touch $(INSTALLED)

# Jobs log over HTTP (MLFLOW_TRACKING_URI=http://127.0.0.1:$(TRACKING_PORT)); the server alone writes the
# database and stores uploaded artifacts, so concurrent jobs never share a sqlite file.
tracking-server: install
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///mlflow-server.db \
	  --artifacts-destination mlartifacts --host 127.0.0.1 --port $(TRACKING_PORT)

# METEOR needs WordNet: nltk data if present, else the system's WordNet (installed with apt-get when we
# are root on Debian/Ubuntu), else nltk.download; superhf_lab.metrics.wordnet explains what to do if all fail.
wordnet:
	@$(PY) -m superhf_lab.metrics.wordnet 2>/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1; }; \
	  fi; \
	  $(PY) -m superhf_lab.metrics.wordnet; }

world: install
	$(PY) -m superhf_lab.tiny_world

# Two builds of the tiny world from scratch, compared file by file (about 4 minutes on 2 cores).
world-check: install
	$(PY) -m superhf_lab.tiny_world --check-reproducible

run: install
	$(PY) run.py $(ARGS)

# Fails fast, before the suite: a file ruff would reformat, a lint finding (lines over 120 characters too), or an
# import that runs up the layers or closes a circle (tools/check_layers.py names the two modules).
lint: install
	$(VENV)/bin/ruff format --check . || { echo "ruff format would change the files above: run $(VENV)/bin/ruff format ."; exit 1; }
	$(VENV)/bin/ruff check --quiet .
	$(PY) tools/check_layers.py

# Two test processes (pytest-xdist), as most of a test's time is one Python process starting a run: with one core
# each they keep both cores busy (one took 1.1 of 2). A kill chain's configurations stay in one process, which runs
# their unbroken reference once. The tiny world is built first, at full speed.
TEST_WORKERS ?= 2
test: install browser lint world
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

# The UI test drives a real Chromium: Debian's chromium and chromium-driver, installed with apt-get when we are
# root on Debian/Ubuntu (as CI is); without them that one test is skipped and says why.
browser:
	@command -v chromedriver >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	    echo "chromium could not be installed: the MLflow UI test will be skipped"; \
	  fi; }

bench: install
	$(PY) -m superhf_lab.bench $(ARGS)

results: install
	$(PY) -m superhf_lab.results $(ARGS)

# The learning-rate search behind the tiny presets, with each algorithm's stable share (sweeps/presets/tiny_world.yaml).
presets: install
	$(PY) -m superhf_lab.presets $(ARGS)

# Every algorithm's gold reward against KL, fitted, on one frontier (sweeps/frontier/tiny_world.yaml; see README).
frontier: install
	$(PY) -m superhf_lab.frontier $(ARGS)

# Serves the runs `make run` wrote; a run prints the link to its own charts when it ends.
ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port $(TRACKING_PORT)

clean:
	rm -rf outputs multirun/2* mlflow.db mlflow-server.db optuna.db mlruns mlartifacts reports .cache
